//! Pretext samplers: targets recoverable by construction, O's rotation table, permutation sets,
//! CPC's context/target layout, and determinism.

mod common;
use common::volumes::{image, volume};
use pretext::pretext::patches::PatchGrid;
use pretext::pretext::rotation::{rotate_2d, rotate_3d};
use std::sync::Arc;

use pretext::data::{Dataset, Grid};
use pretext::pretext::{PermutationKind, PermutationSet, Sampler, Task, TaskConfig};

fn items(b: &candle_core::Tensor) -> Vec<Vec<f32>> {
    let n = b.dims()[0];
    (0..n)
        .map(|i| b.get(i).unwrap().flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

fn labels(b: &pretext::pretext::Batch) -> Vec<u32> {
    b.y.as_ref().unwrap().to_vec1().unwrap()
}

#[test]
fn rotation_table_equals_os_ten_numpy_transforms() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/pretext/rotation.json"
    );
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let floats = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let v = Grid::new(floats(&f["volume"]), 1, [4, 4, 4]).unwrap();
    for (r, expected) in f["rotations_3d"].as_array().unwrap().iter().enumerate() {
        assert_eq!(
            rotate_3d(&v, r).unwrap().data,
            floats(expected),
            "transform {r}"
        );
    }
    let img = Grid::new(floats(&f["image_chw"]), 3, [1, 5, 5]).unwrap();
    for (k, expected) in f["rotations_2d_chw"].as_array().unwrap().iter().enumerate() {
        assert_eq!(
            rotate_2d(&img, k).unwrap().data,
            floats(expected),
            "rot90 k={k}"
        );
    }
}

#[test]
fn rotation_batches_hold_the_labelled_rotation_of_each_volume() {
    let data: Vec<Grid> = (0..6).map(|s| volume(12, s)).collect();
    let s = Sampler::new(&TaskConfig::new(Task::Rotation), 1, [12; 3]).unwrap();
    let b = s.batch(&data, &[0, 1, 2, 3, 4, 5], 7, true).unwrap();
    assert_eq!(b.x.dims(), [6, 1, 12, 12, 12]);
    for ((x, &r), v) in items(&b.x).iter().zip(&labels(&b)).zip(&data) {
        assert_eq!(&rotate_3d(v, r as usize).unwrap().data, x);
    }
    assert_eq!(s.classes(), 10);
    // The labels are drawn uniformly from all ten classes, and a volume rotated by a class
    // other than 0 is not the volume itself.
    let ids: Vec<usize> = (0..300).map(|i| i % 6).collect();
    let b = s.batch(&data, &ids, 8, true).unwrap();
    let y = labels(&b);
    let mut counts = [0usize; 10];
    for &r in &y {
        counts[r as usize] += 1;
    }
    // 30 expected per class; 12 and 50 are beyond 3.4 standard deviations.
    assert!(counts.iter().all(|&c| (12..=50).contains(&c)), "{counts:?}");
    for ((x, &r), &i) in items(&b.x).iter().zip(&y).zip(&ids).take(60) {
        assert_eq!(r == 0, x == &data[i].data, "class {r} of item {i}");
    }
    // 2D: four classes, np.rot90 by k.
    let imgs: Vec<Grid> = (0..4).map(|s| image(3, 10, s)).collect();
    let s2 = Sampler::new(&TaskConfig::new(Task::Rotation), 3, [1, 10, 10]).unwrap();
    assert_eq!(s2.classes(), 4);
    let ids: Vec<usize> = (0..200).map(|i| i % 4).collect();
    // Validation batches: training ones apply O's 2D zoom augmentation first.
    let b = s2.batch(&imgs, &ids, 5, false).unwrap();
    let mut counts = [0usize; 4];
    for ((x, &k), &i) in items(&b.x).iter().zip(&labels(&b)).zip(&ids) {
        assert_eq!(&rotate_2d(&imgs[i], k as usize).unwrap().data, x);
        counts[k as usize] += 1;
    }
    assert!(counts.iter().all(|&c| (28..=72).contains(&c)), "{counts:?}");
}

#[test]
fn undoing_the_jigsaw_permutation_gives_back_the_centred_patches() {
    let data: Vec<Grid> = (0..3).map(|s| volume(30, s)).collect();
    let cfg = TaskConfig::new(Task::Jigsaw);
    let s = Sampler::new(&cfg, 1, [30; 3]).unwrap();
    assert_eq!(s.input_dims(), [7, 7, 7], "cell 10, jitter 3");
    let b = s.batch(&data, &[0, 1, 2], 3, false).unwrap();
    assert_eq!(b.x.dims(), [81, 1, 7, 7, 7]);
    let grid = PatchGrid::new([30; 3], 3, 3).unwrap();
    let slots = items(&b.x);
    for (i, &label) in labels(&b).iter().enumerate() {
        let perm = &s.permutations().unwrap().perms()[label as usize];
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
        let centred = grid.patches(&data[i], false, &mut rng);
        for (t, &p) in perm.iter().enumerate() {
            assert_eq!(slots[i * 27 + t], centred[p].data, "item {i} slot {t}");
        }
    }
}

#[test]
fn the_rpl_query_is_the_crop_at_the_labelled_position() {
    let data: Vec<Grid> = (0..8).map(|s| volume(24, s)).collect();
    let mut cfg = TaskConfig::new(Task::Rpl);
    cfg.options.jitter = Some(0);
    let s = Sampler::new(&cfg, 1, [24; 3]).unwrap();
    assert_eq!(s.classes(), 26);
    let b = s
        .batch(&data, &(0..8).collect::<Vec<_>>(), 11, true)
        .unwrap();
    let x = items(&b.x);
    for (i, &c) in labels(&b).iter().enumerate() {
        let q = if c < 13 { c as usize } else { c as usize + 1 };
        let cell = [q / 9, (q / 3) % 3, q % 3];
        let at = |k: [usize; 3]| data[i].crop(k.map(|v| (v * 8) as isize), [8; 3]).data;
        assert_eq!(x[2 * i], at([1, 1, 1]), "centre of item {i}");
        assert_eq!(x[2 * i + 1], at(cell), "query of item {i} (class {c})");
    }
}

#[test]
fn rpl_and_jigsaw_work_on_2d_images() {
    let data: Vec<Grid> = (0..4).map(|s| image(3, 45, s)).collect();
    let rpl = Sampler::new(&TaskConfig::new(Task::Rpl), 3, [1, 45, 45]).unwrap();
    assert_eq!(rpl.classes(), 8);
    let b = rpl.batch(&data, &[0, 1, 2, 3], 1, true).unwrap();
    assert_eq!(b.x.dims(), [8, 3, 7, 7], "cell 15, jitter 8");
    let mut jig_cfg = TaskConfig::new(Task::Jigsaw);
    jig_cfg.options.jitter = Some(3);
    let jig = Sampler::new(&jig_cfg, 3, [1, 45, 45]).unwrap();
    assert_eq!(
        jig.batch(&data, &[0, 1], 1, true).unwrap().x.dims(),
        [18, 3, 12, 12]
    );
}

#[test]
fn permutation_sets_have_their_size_no_duplicates_and_the_reported_distances() {
    for kind in [PermutationKind::Random, PermutationKind::MaxHamming] {
        let s = PermutationSet::generate(100, 27, kind, 5).unwrap();
        assert_eq!(s.len(), 100);
        let perms = s.perms();
        for (i, p) in perms.iter().enumerate() {
            let mut sorted = p.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..27).collect::<Vec<_>>());
            assert!(!perms[..i].contains(p), "duplicate {i}");
        }
        let mut d = Vec::new();
        for i in 0..100 {
            for j in i + 1..100 {
                d.push(
                    perms[i]
                        .iter()
                        .zip(&perms[j])
                        .filter(|(a, b)| a != b)
                        .count(),
                );
            }
        }
        let st = s.stats();
        assert_eq!(st.min, *d.iter().min().unwrap());
        assert!((st.mean - d.iter().sum::<usize>() as f64 / d.len() as f64).abs() < 1e-12);
        assert_eq!(
            PermutationSet::generate(100, 27, kind, 5).unwrap(),
            s,
            "deterministic by seed"
        );
    }
    // On 9 tiles the greedy set spreads out clearly more than a random one.
    let random = PermutationSet::generate(100, 9, PermutationKind::Random, 1)
        .unwrap()
        .stats();
    let spread = PermutationSet::generate(100, 9, PermutationKind::MaxHamming, 1)
        .unwrap()
        .stats();
    assert!(
        spread.min > random.min && spread.mean > random.mean,
        "{spread:?} vs {random:?}"
    );
    assert!(
        PermutationSet::generate(7, 3, PermutationKind::Random, 0).is_err(),
        "only 6 exist"
    );
}

#[test]
fn cpc_examples_pair_each_context_with_its_own_or_another_columns_targets() {
    let data: Vec<Grid> = (0..2).map(|s| volume(32, s)).collect();
    let s = Sampler::new(&TaskConfig::new(Task::Cpc), 1, [32; 3]).unwrap();
    assert_eq!(s.input_dims(), [8, 8, 8]);
    let b = s.batch(&data, &[0, 1], 4, true).unwrap();
    assert_eq!(
        b.x.dims(),
        [129, 1, 8, 8, 8],
        "64 patches per volume and a zero patch"
    );
    let ctx: Vec<Vec<u32>> = b.context.as_ref().unwrap().to_vec2().unwrap();
    let tgt: Vec<Vec<u32>> = b.targets.as_ref().unwrap().to_vec2().unwrap();
    let y = labels(&b);
    assert_eq!(y.len(), 64, "32 examples per volume");
    for (e, label) in y.iter().enumerate() {
        let c = &ctx[e];
        assert_eq!(c.len(), 10);
        let (vol, bridge) = (c[9] / 64, c[9] % 64);
        assert_eq!(bridge / 16, 1, "the last context patch is in row 1");
        assert!(
            c[..9].iter().all(|&p| p / 64 == vol && (p % 64) / 16 == 0),
            "row-0 context"
        );
        let own = [64 * vol + 32 + bridge % 16, 64 * vol + 48 + bridge % 16];
        if *label == 1 {
            assert_eq!(tgt[e], own);
        } else {
            assert_ne!(tgt[e], own);
            assert!(tgt[e].iter().all(|&t| (t % 64) / 16 >= 2));
        }
    }
}

#[test]
fn batches_are_deterministic_by_seed_and_thread_count() {
    let data: Vec<Grid> = (0..4).map(|s| volume(24, s)).collect();
    for task in [
        Task::Rotation,
        Task::Jigsaw,
        Task::Rpl,
        Task::Exemplar,
        Task::Cpc,
    ] {
        let s = Sampler::new(&TaskConfig::new(task), 1, [24; 3]).unwrap();
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let a = one.install(|| s.batch(&data, &[0, 1, 2, 3], 9, true).unwrap());
        let b = s.batch(&data, &[0, 1, 2, 3], 9, true).unwrap();
        let c = s.batch(&data, &[0, 1, 2, 3], 10, true).unwrap();
        // Everything a batch holds: inputs, labels, CPC's context and target indices.
        let ints = |t: &Option<candle_core::Tensor>| {
            t.as_ref()
                .map(|t| t.flatten_all().unwrap().to_vec1::<u32>().unwrap())
        };
        let whole = |x: &pretext::pretext::Batch| {
            (
                items(&x.x),
                ints(&x.y),
                ints(&x.context),
                ints(&x.targets),
                x.items,
            )
        };
        let (wa, wb) = (whole(&a), whole(&b));
        assert!(
            wa == wb,
            "{task:?}: batches differ (inputs {}, labels {}, context {}, targets {})",
            wa.0 == wb.0,
            wa.1 == wb.1,
            wa.2 == wb.2,
            wa.3 == wb.3
        );
        assert_ne!(items(&a.x), items(&c.x), "{task:?} seed matters");
        if task != Task::Exemplar {
            assert!(a.y.is_some(), "{task:?} has labels");
        }
    }
}

#[test]
fn samplers_name_the_item_whose_shape_is_wrong() {
    let mut data: Vec<Grid> = (0..3).map(|s| volume(12, s)).collect();
    data[2] = volume(10, 2);
    let s = Sampler::new(&TaskConfig::new(Task::Rotation), 1, [12; 3]).unwrap();
    let e = s.batch(&data, &[0, 2], 1, true).unwrap_err().to_string();
    assert!(e.contains("item 2") && e.contains("[10, 10, 10]"), "{e}");
    assert!(Sampler::new(&TaskConfig::new(Task::Rotation), 1, [12, 12, 10]).is_err());
    assert_eq!(data.len(), Dataset::<Arc<Grid>>::len(&data));
}
