//! Regression pin for the samplers' speed work: every task's batches, in 3D and 2D, at odd sizes,
//! hash to the values the samplers gave before they were optimised (the registered experiment
//! results depend on these exact bytes), on one thread and on three.

use pretext::data::Grid;
use pretext::pretext::{Batch, Sampler, Task, TaskConfig};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// `(task, channels, dims)` cases, then their expected hashes in the same order.
const CASES: [(Task, usize, [usize; 3]); 20] = [
    (Task::Rotation, 1, [19, 19, 19]),
    (Task::Rotation, 2, [13, 13, 13]),
    (Task::Rotation, 3, [1, 45, 45]),
    (Task::Rotation, 1, [37, 37, 37]),
    (Task::Jigsaw, 1, [25, 31, 28]),
    (Task::Jigsaw, 2, [19, 19, 19]),
    (Task::Jigsaw, 3, [1, 37, 43]),
    (Task::Rpl, 1, [25, 31, 28]),
    (Task::Rpl, 2, [19, 19, 19]),
    (Task::Rpl, 3, [1, 37, 43]),
    (Task::Exemplar, 1, [17, 21, 19]),
    (Task::Exemplar, 1, [19, 19, 19]),
    (Task::Exemplar, 2, [13, 13, 13]),
    (Task::Exemplar, 3, [1, 45, 45]),
    (Task::Exemplar, 1, [1, 37, 43]),
    (Task::Exemplar, 1, [33, 33, 33]),
    (Task::Cpc, 1, [25, 31, 28]),
    (Task::Cpc, 2, [19, 19, 19]),
    (Task::Cpc, 3, [1, 45, 45]),
    (Task::Cpc, 1, [1, 37, 43]),
];

const EXPECTED: [u64; 20] = [
    0x43ad_7fae_18a6_91b1,
    0x266e_1093_0cf2_bfbd,
    0x8575_8370_6ca3_31ab,
    0x9459_6861_7d83_6e51,
    0xb951_38c4_33e9_bcea,
    0xae1c_9bfd_7a28_23ef,
    0xfb22_9b05_1677_9850,
    0xa8c6_510d_97e9_57fd,
    0xc48a_fe3e_89b8_e90d,
    0xea93_ffed_d0ac_31bd,
    0x0e75_4d74_c946_844d,
    0x2fbd_13bd_1fbc_038d,
    0xbc5b_43de_406f_b911,
    0x6d54_c47f_1b9c_fa83,
    0x1c47_8f41_d671_ddfa,
    0x00d8_5815_245a_95f5,
    0x0945_83ce_64a6_e0d1,
    0xac7e_b0f7_38e8_e535,
    0x75ed_ff1e_d6c5_5551,
    0x9ceb_9e91_283e_67ff,
];

/// Seeds per case: enough that every rotation class and every exemplar branch occurs.
const SEEDS: u64 = 24;

fn grids(c: usize, dims: [usize; 3]) -> Vec<Grid> {
    let mut rng = StdRng::seed_from_u64(dims.iter().product::<usize>() as u64 + c as u64);
    (0..5)
        .map(|_| {
            let n = c * dims.iter().product::<usize>();
            Grid::new((0..n).map(|_| rng.random::<f32>()).collect(), c, dims).unwrap()
        })
        .collect()
}

/// FNV-1a over `words`, continuing from `h`.
fn fnv(mut h: u64, words: impl IntoIterator<Item = u32>) -> u64 {
    for w in words {
        for b in w.to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

fn hash_batch(h: u64, b: &Batch) -> u64 {
    let x: Vec<f32> = b.x.flatten_all().unwrap().to_vec1().unwrap();
    let shape = b.x.dims().iter().map(|&d| d as u32);
    let mut h = fnv(fnv(h, shape), x.iter().map(|v| v.to_bits()));
    for t in [&b.y, &b.context, &b.targets].into_iter().flatten() {
        h = fnv(h, t.flatten_all().unwrap().to_vec1::<u32>().unwrap());
    }
    fnv(h, [b.items as u32])
}

/// One hash over the batches of every seed, training and validation, of one case.
fn case_hash(task: Task, c: usize, dims: [usize; 3]) -> u64 {
    let data = grids(c, dims);
    let s = Sampler::new(&TaskConfig::new(task), c, dims).unwrap();
    let ids = [0, 3, 1, 4, 2, 2];
    let mut h = 0xcbf2_9ce4_8422_2325;
    for seed in 0..SEEDS {
        for train in [true, false] {
            h = hash_batch(h, &s.batch(&data, &ids, seed, train).unwrap());
        }
    }
    h
}

fn all_hashes() -> Vec<u64> {
    CASES
        .iter()
        .map(|&(task, c, dims)| case_hash(task, c, dims))
        .collect()
}

#[test]
fn batches_hash_as_before_the_speed_work_at_any_thread_count() {
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let got = pool.install(all_hashes);
        let report: Vec<String> = CASES
            .iter()
            .zip(&got)
            .map(|((t, c, d), h)| format!("{t:?} {c}x{d:?}: {h:#018x}"))
            .collect();
        assert!(
            got == EXPECTED,
            "{threads} threads, hashes differ:\n{}",
            report.join("\n")
        );
    }
}
