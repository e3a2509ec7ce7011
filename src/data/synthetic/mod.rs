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
    // Temporary folders of generations that were killed.
    crate::io::clean_stale_temps(parent);
    let tmp = parent.join(crate::io::temp_name(&format!("{name}-{key}")));
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

/// Writes a new dataset to `out` with `write`: into a temporary folder beside `out` that is
/// renamed into place when complete, so `out` never holds a partial dataset. An `out` that
/// exists and is not empty is refused unless `force` (then it is replaced as a whole, once
/// the new dataset is complete).
pub fn write_new(out: &Path, force: bool, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let non_empty = out.is_dir() && std::fs::read_dir(out).with_file(out)?.next().is_some();
    if out.exists() && !out.is_dir() {
        return Err(Error::file(out, "exists and is not a folder"));
    }
    if non_empty && !force {
        return Err(Error::file(
            out,
            "the folder exists and is not empty; choose a new folder, or pass --force to \
             replace its contents",
        ));
    }
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::file(out, "not a folder name"))?
        .to_string();
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_file(parent)?;
    crate::io::clean_stale_temps(parent);
    let tmp = parent.join(crate::io::temp_name(&name));
    std::fs::create_dir_all(&tmp).with_file(&tmp)?;
    let done = write(&tmp).and_then(|_| {
        if out.is_dir() {
            // Move the old folder aside (a temporary name, removed below or on a later run).
            let old = parent.join(crate::io::temp_name(&format!("{name}.old")));
            std::fs::rename(out, &old).with_file(out)?;
            std::fs::rename(&tmp, out).with_file(out)?;
            let _ = std::fs::remove_dir_all(&old);
            Ok(())
        } else {
            std::fs::rename(&tmp, out).with_file(out)
        }
    });
    if done.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    done
}

/// The marker file of a completely generated dataset.
const COMPLETE: &str = ".complete";
