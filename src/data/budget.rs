//! Parallel work on dataset cases under a memory budget: `pretext data verify` and the
//! preparation of cached sets run several cases at once, each taking the memory of its volumes,
//! so the number of cases in flight is bounded by their estimated footprints (from the file
//! headers), not only by the number of threads.
//!
//! The budget is `PRETEXT_DATA_MEMORY` (bytes, with an optional `K`, `M`, `G` or `T` suffix),
//! else half of the memory available when the work starts (`MemAvailable`), else the
//! allocation limit of [`crate::memory`]. A case larger than the whole budget runs alone.
//!
//! The cases run on plain threads, not as rayon tasks: a rayon worker that waited for budget
//! inside a parallel loop could be the one that has to finish the case holding it (rayon runs
//! stolen tasks on the waiting thread's stack), which would deadlock. The work of a case may
//! use rayon freely.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

/// The environment variable that sets the memory budget of parallel case processing.
pub const DATA_MEMORY_ENV: &str = "PRETEXT_DATA_MEMORY";

/// The memory available to new allocations (`MemAvailable`), where it can be read.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// The budget in bytes for cases processed at once (see the module documentation).
pub fn budget() -> u64 {
    if let Some(b) = std::env::var(DATA_MEMORY_ENV)
        .ok()
        .and_then(|v| crate::memory::parse_size(&v))
    {
        return b;
    }
    available_memory()
        .map(|m| m / 2)
        .or_else(crate::memory::limit)
        .unwrap_or(u64::MAX)
}

/// Bytes in use out of a budget; [`Budget::take`] waits until a request fits.
struct Budget {
    total: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

/// Returns its bytes to the budget when dropped (also when the work panics).
struct Held<'a> {
    budget: &'a Budget,
    bytes: u64,
}

impl Budget {
    fn take(&self, bytes: u64) -> Held<'_> {
        let bytes = bytes.min(self.total);
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        // Something always runs: a request waits only while other work holds bytes.
        while *used > 0 && *used + bytes > self.total {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += bytes;
        Held {
            budget: self,
            bytes,
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= self.bytes;
        self.budget.freed.notify_all();
    }
}

/// `work` on every item, in parallel on up to `threads` threads, while the `footprint`s
/// (bytes) of the items in progress stay within `budget` bytes (an item larger than the budget
/// runs alone). The results are in the order of `items`.
pub fn map_bounded<T, R>(
    items: &[T],
    threads: usize,
    budget: u64,
    footprint: impl Fn(&T) -> u64 + Sync,
    work: impl Fn(&T) -> R + Sync,
) -> Vec<R>
where
    T: Sync,
    R: Send,
{
    let budget = Budget {
        total: budget,
        used: Mutex::new(0),
        freed: Condvar::new(),
    };
    let next = AtomicUsize::new(0);
    let threads = threads.clamp(1, items.len().max(1));
    let mut done: Vec<(usize, R)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        let _held = budget.take(footprint(item));
                        out.push((i, work(item)));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// [`map_bounded`] with rayon's thread count and the budget of [`budget`].
pub fn map_cases<T, R>(
    items: &[T],
    footprint: impl Fn(&T) -> u64 + Sync,
    work: impl Fn(&T) -> R + Sync,
) -> Vec<R>
where
    T: Sync,
    R: Send,
{
    map_bounded(
        items,
        rayon::current_num_threads(),
        budget(),
        footprint,
        work,
    )
}

/// The bytes of one volume file as read (f32 voxels), from its header; 0 when the header
/// cannot be read (reading the file will then fail quickly and say why).
pub fn volume_bytes(path: &std::path::Path) -> u64 {
    super::Volume::probe(path)
        .map(|(dims, _)| dims.iter().map(|&d| d as u64).product::<u64>() * 4)
        .unwrap_or(0)
}

/// The bytes of one decoded photograph and its resampling buffers (8-bit RGBA and f32 RGBA a
/// pixel), from its header; 0 when it cannot be read.
pub fn image_bytes(path: &std::path::Path) -> u64 {
    image::ImageReader::open(path)
        .ok()
        .and_then(|r| r.with_guessed_format().ok())
        .and_then(|r| r.into_dimensions().ok())
        .map(|(w, h)| w as u64 * h as u64 * 20)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::map_bounded;
    use std::sync::Mutex;

    #[test]
    fn the_footprints_in_flight_stay_within_the_budget() {
        let items: Vec<u64> = vec![5, 3, 7, 2, 9, 1, 4, 6, 8, 20];
        let state = Mutex::new((0u64, 0u64)); // (in flight, most seen)
        let out = map_bounded(
            &items,
            4,
            10,
            |&b| b,
            |&b| {
                {
                    let mut s = state.lock().unwrap();
                    s.0 += b.min(10);
                    s.1 = s.1.max(s.0);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
                state.lock().unwrap().0 -= b.min(10);
                b * 2
            },
        );
        assert_eq!(out, items.iter().map(|b| b * 2).collect::<Vec<_>>());
        assert!(state.lock().unwrap().1 <= 10);
    }
}
