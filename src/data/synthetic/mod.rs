//! Synthetic datasets written in the real on-disk layouts (design.md "The embedded default").
//!
//! [`pancreas`] writes a Decathlon folder of CT-like abdomen phantoms, [`fundus`] an APTOS
//! folder of fundus-like photographs. Both are deterministic by seed (each case draws from its
//! own stream, so the result does not depend on the thread count) and are generated in
//! parallel. [`ensure`] generates a dataset once under the data folder and reuses it.

pub mod fundus;
mod noise;
pub mod pancreas;

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;

use crate::error::{Error, FileContext, Result};
use crate::streams::{self, Stream};

pub use fundus::FundusConfig;
pub use pancreas::PhantomConfig;

/// The random stream of item `index` of a dataset generated with `seed`.
pub(crate) fn item_rng(seed: u64, index: u64) -> StdRng {
    streams::rng(seed, Stream::SyntheticCase, index)
}

/// Generates a dataset into `home/synthetic/<name>-<key>/` unless it is already there, and
/// returns that folder. `write` fills a temporary folder that is renamed into place when
/// complete, so an interrupted run never leaves a half-written dataset behind.
pub fn ensure(
    home: &Path,
    name: &str,
    key: &str,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let dir = home.join("synthetic").join(format!("{name}-{key}"));
    if dir.join(COMPLETE).is_file() {
        return Ok(dir);
    }
    let parent = dir.parent().unwrap_or(home);
    std::fs::create_dir_all(parent).with_file(parent)?;
    let tmp = parent.join(format!(".{name}-{key}.{}.tmp", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_file(&tmp)?;
    }
    let done = write(&tmp).and_then(|_| {
        std::fs::write(tmp.join(COMPLETE), key).with_file(tmp.join(COMPLETE))?;
        match std::fs::rename(&tmp, &dir) {
            Ok(()) => Ok(()),
            // Another process finished the same dataset first: use theirs.
            Err(_) if dir.join(COMPLETE).is_file() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => Err(Error::file(
                &dir,
                format!("cannot move the dataset into place: {e}"),
            )),
        }
    });
    if done.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    done.map(|_| dir)
}

/// The marker file of a completely generated dataset.
const COMPLETE: &str = ".complete";
