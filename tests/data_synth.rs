//! The synthetic generators: deterministic by seed, plausible values, the real layouts.

use pretext::Volume;
use pretext::data::synthetic::fundus::{self, APTOS_COUNTS, FundusConfig, aptos_counts};
use pretext::data::synthetic::pancreas::{self, PhantomConfig};
use pretext::data::{Aptos, Decathlon, verify};

fn small(seed: u64) -> PhantomConfig {
    PhantomConfig {
        labelled: 3,
        unlabelled: 1,
        shape: [64, 64, 32],
        seed,
        tumour_share: 1.0,
    }
}

#[test]
fn phantoms_are_deterministic_by_seed_and_differ_between_seeds_and_cases() {
    let a = pancreas::phantom(&small(5), 1).unwrap();
    let b = pancreas::phantom(&small(5), 1).unwrap();
    assert_eq!(a.hu, b.hu);
    assert_eq!(a.label, b.label);
    let c = pancreas::phantom(&small(6), 1).unwrap();
    let d = pancreas::phantom(&small(5), 2).unwrap();
    assert_ne!(a.hu, c.hu, "another seed, another phantom");
    assert_ne!(a.label, d.label, "another case, another anatomy");
}

#[test]
fn phantoms_have_ct_values_and_a_hypodense_tumour_inside_the_pancreas() {
    // At the default resolution (3.3 x 3.3 x 3.1 mm); coarser grids mix the small tumour
    // with its surroundings.
    let cfg = PhantomConfig {
        shape: [128, 128, 64],
        ..small(0)
    };
    for i in 0..3 {
        let p = pancreas::phantom(&cfg, i).unwrap();
        let (lo, hi) =
            p.hu.iter()
                .fold((f32::MAX, f32::MIN), |a, &v| (a.0.min(v), a.1.max(v)));
        assert!(
            lo >= -1024.0 && hi <= 3071.0 && hi > 300.0,
            "case {i}: HU {lo}..{hi}"
        );
        assert!(p.hu.iter().all(|v| v.fract() == 0.0), "integer HU");
        let air = p.hu.iter().filter(|&&v| v < -900.0).count() as f64 / p.hu.len() as f64;
        assert!((0.2..0.8).contains(&air), "case {i}: air fraction {air}");
        let mean = |l: u8| {
            let v: Vec<f32> =
                p.hu.iter()
                    .zip(&p.label)
                    .filter(|(_, x)| **x == l)
                    .map(|(h, _)| *h)
                    .collect();
            (v.iter().sum::<f32>() / v.len().max(1) as f32, v.len())
        };
        let (panc, n1) = mean(1);
        let (tum, n2) = mean(2);
        assert!(p.tumour);
        assert!(
            n1 > 100 && n2 > 0 && n2 < n1,
            "case {i}: {n1} pancreas, {n2} tumour voxels"
        );
        assert!(
            (60.0..150.0).contains(&panc),
            "case {i}: pancreas {panc} HU"
        );
        assert!(
            panc - tum > 8.0,
            "case {i}: tumour {tum} vs pancreas {panc} HU"
        );
        assert!(p.label.iter().all(|&l| l <= 2));
    }
}

#[test]
fn the_tumour_share_is_respected() {
    // n = 400 cases per share: Binomial(400, p) has sd at most 10, so ±4 sd is at most ±0.1
    // of the share; a share off by 0.2 (0.3 or 0.7 for 0.5) fails.
    let n = 400;
    for share in [0.0, 0.2, 0.5, 0.8, 1.0] {
        let cfg = PhantomConfig {
            labelled: n,
            unlabelled: 0,
            shape: [16, 16, 8],
            seed: 3,
            tumour_share: share,
        };
        let with = (0..n)
            .filter(|&i| pancreas::phantom(&cfg, i).unwrap().tumour)
            .count();
        let (mean, sd) = (n as f64 * share, (n as f64 * share * (1.0 - share)).sqrt());
        assert!(
            (with as f64 - mean).abs() <= 4.0 * sd,
            "share {share}: {with} of {n} cases have a tumour (expected {mean} ± {})",
            4.0 * sd
        );
    }
}

#[test]
fn bad_phantom_settings_are_refused_naming_the_setting() {
    for (cfg, name) in [
        (
            PhantomConfig {
                shape: [4, 64, 64],
                ..small(0)
            },
            "shape",
        ),
        (
            PhantomConfig {
                tumour_share: 1.5,
                ..small(0)
            },
            "tumour_share",
        ),
        (
            PhantomConfig {
                labelled: 0,
                unlabelled: 0,
                ..small(0)
            },
            "n",
        ),
    ] {
        let e = pancreas::phantom(&cfg, 0).err().unwrap().to_string();
        assert!(e.contains(name), "{e}");
    }
}

#[test]
fn the_pancreas_generator_writes_a_valid_decathlon_folder() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PhantomConfig {
        shape: [32, 32, 16],
        ..small(1)
    };
    pancreas::write(&cfg, dir.path(), None).unwrap();
    let ds = Decathlon::open(dir.path()).unwrap();
    assert_eq!(ds.labelled().len(), 3);
    assert_eq!(ds.unlabelled().len(), 1);
    assert_eq!(ds.unlabelled()[0].id, "case_003");
    assert_eq!(ds.labels().unwrap()[&2], "cancer");
    assert_eq!(ds.modality()["0"], "CT");
    let report = verify(dir.path()).unwrap();
    assert!(report.is_ok(), "{report}");
    let img = Volume::load(&ds.labelled()[0].image).unwrap();
    assert_eq!(img.dtype().name(), "i16");
    assert_eq!(img.shape(), &[32, 32, 16]);
    let a = img.affine();
    assert!(a[0][0] < 0.0 && a[1][1] < 0.0 && a[2][2] > 0.0, "{a:?}");
    let lab = Volume::load(ds.labelled()[0].label.as_ref().unwrap()).unwrap();
    assert_eq!(lab.dtype().name(), "u8");
    // The same seed writes the same voxels again.
    let again = tempfile::tempdir().unwrap();
    pancreas::write(&cfg, again.path(), None).unwrap();
    let other = Volume::load(again.path().join("imagesTr/case_000.nii.gz")).unwrap();
    assert_eq!(other.to_vec().unwrap(), img.to_vec().unwrap());
}

#[test]
fn aptos_class_balance_is_kept_at_any_size() {
    assert_eq!(aptos_counts(3662), APTOS_COUNTS);
    for n in [5, 7, 40, 100, 999] {
        let c = aptos_counts(n);
        assert_eq!(c.iter().sum::<usize>(), n, "{n}: {c:?}");
        assert!(c.iter().all(|&k| k >= 1), "{n}: {c:?}");
        assert!(c[0] >= c[2] && c[2] >= c[1], "{n}: {c:?}");
    }
}

#[test]
fn photographs_are_deterministic_by_seed() {
    let cfg = FundusConfig::aptos(10, 96, 4);
    let (a, la) = fundus::photo(&cfg, 3, 2).unwrap();
    let (b, lb) = fundus::photo(&cfg, 3, 2).unwrap();
    assert_eq!(a.as_raw(), b.as_raw());
    assert_eq!(la, lb);
    let (c, _) = fundus::photo(&FundusConfig::aptos(10, 96, 5), 3, 2).unwrap();
    assert_ne!(a.as_raw(), c.as_raw());
    // Black outside the retina, a bright red-orange disc inside.
    let px = |x: u32, y: u32| a.get_pixel(x, y).0;
    assert!(px(0, 0).iter().all(|&v| v < 20), "{:?}", px(0, 0));
    let centre = px(48, 48);
    assert!(centre[0] > centre[1] && centre[1] > centre[2], "{centre:?}");
}

#[test]
fn lesion_kinds_and_numbers_follow_the_grade() {
    let cfg = FundusConfig::aptos(10, 64, 0);
    let mut sum = [[0usize; 5]; 5];
    for g in 0..5u8 {
        for i in 0..30 {
            let (_, l) = fundus::photo(&cfg, i, g).unwrap();
            let row = &mut sum[g as usize];
            row[0] += l.microaneurysms;
            row[1] += l.haemorrhages;
            row[2] += l.exudates;
            row[3] += l.cotton_wool;
            row[4] += l.new_vessels;
        }
    }
    assert_eq!(sum[0], [0; 5], "grade 0 has no lesions");
    assert!(
        sum[1][0] > 60 && sum[1][3] == 0 && sum[1][4] == 0,
        "mild: {:?}",
        sum[1]
    );
    assert!(
        sum[2][1] > 3 * sum[1][1].max(1) && sum[2][2] > 30,
        "moderate: {:?}",
        sum[2]
    );
    assert!(
        sum[3][1] > 2 * sum[2][1],
        "severe: more haemorrhages {:?}",
        sum[3]
    );
    assert!(
        sum[4][4] >= 30 && (0..4).all(|g| sum[g][4] == 0),
        "new vessels: {sum:?}"
    );
    assert!(fundus::photo(&cfg, 0, 5).is_err());
}

#[test]
fn the_fundus_generator_writes_an_aptos_folder_with_the_requested_grades() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = FundusConfig {
        counts: [3, 1, 2, 1, 1],
        size: 64,
        seed: 2,
    };
    fundus::write(&cfg, dir.path(), None).unwrap();
    let ds = Aptos::open(dir.path()).unwrap();
    assert_eq!(ds.grade_counts(), [3, 1, 2, 1, 1]);
    let csv = std::fs::read_to_string(dir.path().join("train.csv")).unwrap();
    assert!(csv.starts_with("id_code,diagnosis\n"), "{csv}");
    let e = &ds.entries()[0];
    assert_eq!(e.id.len(), 12);
    assert!(e.image.ends_with(format!("train_images/{}.png", e.id)));
    let report = verify(dir.path()).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.cases[0].shape, vec![64, 64, 3]);
}
