//! The cells of a data-efficiency sweep (task × label fraction × seed) and their deterministic
//! split into shards for a job array. A shard gets whole (task, seed) groups, so the one
//! pretraining of a task and seed serves every fraction in the same job.

use crate::{Error, Result};

/// One cell.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Cell {
    /// `baseline` or a pretext task.
    pub task: String,
    /// The label fraction.
    pub fraction: f64,
    /// The repetition's seed.
    pub seed: u64,
}

/// Job `index` of `count` (`--shard i/n`, from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This job, `0..count`.
    pub index: usize,
    /// Jobs in all.
    pub count: usize,
}

impl Shard {
    /// Everything in one job.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parses `i/n`.
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = || {
            Error::arg(
                "shard",
                format!("expected i/n with 0 <= i < n (e.g. 0/4), got `{s}`"),
            )
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse::<usize>().map_err(|_| bad())?,
            n.trim().parse::<usize>().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// The cells of `tasks × fractions × seeds` that belong to `shard`, grouped by (seed, task)
/// in that order, fractions ascending within a group. A task, fraction or seed given twice
/// counts once (the first time), so no cell is computed twice.
pub fn cells(tasks: &[String], fractions: &[f64], seeds: &[u64], shard: Shard) -> Vec<Cell> {
    let mut fr = fractions.to_vec();
    fr.sort_by(f64::total_cmp);
    fr.dedup();
    let mut tasks_once: Vec<&String> = Vec::new();
    for t in tasks {
        if !tasks_once.contains(&t) {
            tasks_once.push(t);
        }
    }
    let mut seeds_once: Vec<u64> = Vec::new();
    for &s in seeds {
        if !seeds_once.contains(&s) {
            seeds_once.push(s);
        }
    }
    let mut out = Vec::new();
    let mut group = 0;
    for &seed in &seeds_once {
        for &task in &tasks_once {
            if group % shard.count == shard.index {
                out.extend(fr.iter().map(|&fraction| Cell {
                    task: task.clone(),
                    fraction,
                    seed,
                }));
            }
            group += 1;
        }
    }
    out
}
