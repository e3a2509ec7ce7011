//! Independent trainings at once. A finetuning step of the quick models leaves a core idle
//! for much of its time (data preparation, the optimiser and the glue between kernels are
//! serial), so a sweep runs several cells side by side, each on its own rayon pool with its
//! share of the threads. A cell's result does not depend on this: every kernel sums in a fixed
//! order whatever its thread count, and each cell draws from its own named random streams.

use candle_core::Device;

use crate::{Error, Result};

/// How many independent trainings to run at once on `dev`: one per rayon thread on the CPU
/// (`RAYON_NUM_THREADS`, else the cores), one on an accelerator, whose memory they would share.
pub fn at_once(dev: &Device) -> usize {
    if dev.is_cpu() {
        rayon::current_num_threads().max(1)
    } else {
        1
    }
}

/// Runs `f` on every item, at most `at_once` at a time, and returns the results in the items'
/// order. With more than one at a time, each runs on its own rayon pool with an equal share of
/// the current pool's threads; otherwise they run one after another on the current pool.
pub fn run_each<T, R, F>(items: Vec<T>, at_once: usize, f: F) -> Result<Vec<R>>
where
    T: Send,
    R: Send,
    F: Fn(T) -> R + Sync,
{
    let workers = at_once.min(items.len());
    if workers <= 1 {
        return Ok(items.into_iter().map(f).collect());
    }
    let threads = (rayon::current_num_threads() / workers).max(1);
    let pools = (0..workers)
        .map(|_| rayon::ThreadPoolBuilder::new().num_threads(threads).build())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::msg(format!("cannot start a training thread: {e}")))?;
    let n = items.len();
    let queue = std::sync::Mutex::new(items.into_iter().enumerate());
    let mut results: Vec<Option<R>> = (0..n).map(|_| None).collect();
    let done = std::sync::Mutex::new(&mut results);
    std::thread::scope(|scope| {
        for pool in &pools {
            let (queue, done, f) = (&queue, &done, &f);
            scope.spawn(move || {
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                    let Some((i, item)) = next else { break };
                    let r = pool.install(|| f(item));
                    done.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    Ok(results
        .into_iter()
        .map(|r| r.expect("every item was run by a worker"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_the_items_order_whatever_finishes_first() {
        let items: Vec<u64> = (0..7).collect();
        let out = run_each(items, 3, |i| {
            std::thread::sleep(std::time::Duration::from_millis(5 * (7 - i)));
            i * 10
        })
        .unwrap();
        assert_eq!(out, vec![0, 10, 20, 30, 40, 50, 60]);
    }

    #[test]
    fn each_worker_runs_on_its_own_pool_with_a_share_of_the_threads() {
        let total = rayon::current_num_threads();
        let out = run_each(vec![(); 2], 2, |()| rayon::current_num_threads()).unwrap();
        assert_eq!(out, vec![(total / 2).max(1); 2]);
    }
}
