//! Small file-system helpers shared by the library: atomic writes, temporary names that no
//! other process or thread uses, clean-up of temporaries left by killed processes, paths
//! confined under a root, and JSON numbers that may be NaN.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, FileContext, Result};

/// The marker in temporary names: `.NAME.tmp-HOST-PID-N`.
const TMP_MARK: &str = ".tmp-";

/// A temporary name for `name` that no other process (on this or another host sharing the
/// folder) or thread uses: `.NAME.tmp-HOST-PID-N`.
pub fn temp_name(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let host: String = crate::lock::hostname()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        ".{name}{TMP_MARK}{host}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The host and pid in a name made by [`temp_name`].
fn temp_owner(name: &str) -> Option<(String, u32)> {
    let at = name.rfind(TMP_MARK)?;
    let rest = &name[at + TMP_MARK.len()..];
    let mut parts = rest.rsplitn(3, '-');
    let _n: u64 = parts.next()?.parse().ok()?;
    let pid: u32 = parts.next()?.parse().ok()?;
    let host = parts.next()?;
    Some((host.to_string(), pid))
}

/// Removes the temporaries (files or folders named by [`temp_name`]) in `dir` that belong to
/// processes of this host that are no longer running, and returns how many. Temporaries of
/// other hosts are left alone: whether their process still runs cannot be told from here.
pub fn clean_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let host: String = crate::lock::hostname()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with('.') {
            continue;
        }
        let Some((h, pid)) = temp_owner(name) else {
            continue;
        };
        if h != host || crate::lock::pid_alive(pid) {
            continue;
        }
        let p = e.path();
        let done = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        if done.is_ok() {
            eprintln!(
                "{}: removed, left behind by process {pid}, which is no longer running",
                p.display()
            );
            removed += 1;
        }
    }
    removed
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename,
/// so a reader never sees a half-written file. Creates missing parent folders.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_file(dir)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::file(path, "not a file name"))?;
    let tmp = dir.join(temp_name(name));
    std::fs::write(&tmp, bytes)
        .with_file(&tmp)
        .and_then(|_| std::fs::rename(&tmp, path).with_file(path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// Creates `path` with `bytes` unless it exists (atomically: no reader sees a partial file and
/// of two concurrent creators exactly one wins). Returns whether this call created it.
pub fn create_atomic(path: &Path, bytes: &[u8]) -> Result<bool> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_file(dir)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::file(path, "not a file name"))?;
    let tmp = dir.join(temp_name(name));
    std::fs::write(&tmp, bytes).with_file(&tmp)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(_) if path.exists() => Ok(false),
        // No hard links on this file system: a rename that only happens if nothing is there.
        Err(_) => {
            std::fs::write(&tmp, bytes).with_file(&tmp)?;
            if path.exists() {
                let _ = std::fs::remove_file(&tmp);
                return Ok(false);
            }
            std::fs::rename(&tmp, path).with_file(path)?;
            Ok(true)
        }
    }
}

/// Checks that `name` (a case id, an `id_code`) is a plain name that can be part of a file
/// name: not empty, no path separators, no `..`, no leading dot, no control characters.
pub fn plain_name(name: &str, what: &str) -> std::result::Result<(), String> {
    let bad = if name.is_empty() {
        Some("is empty")
    } else if name.contains(['/', '\\']) {
        Some("contains a path separator")
    } else if name.contains("..") {
        Some("contains `..`")
    } else if name.starts_with('.') {
        Some("starts with a dot")
    } else if name.chars().any(|c| c.is_control()) || name.contains(':') {
        Some("contains a control character or `:`")
    } else {
        None
    };
    match bad {
        Some(why) => Err(format!(
            "{what} `{}` {why}; ids are names, not paths",
            name.escape_debug()
        )),
        None => Ok(()),
    }
}

/// `rel` under `root`, refusing absolute paths and `..` components: a path that a dataset
/// file names must stay inside the dataset.
pub fn confined(root: &Path, rel: &Path) -> std::result::Result<PathBuf, String> {
    use std::path::Component;
    let mut out = root.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!(
                    "`{}` leaves the dataset folder (`..`)",
                    rel.display()
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "`{}` is an absolute path; paths are relative to the dataset folder",
                    rel.display()
                ));
            }
        }
    }
    Ok(out)
}

/// Serde helpers for `f64` fields that may be NaN or infinite: written as JSON `null` (what
/// serde_json writes for them anyway) and read back from `null` as NaN, so that every row
/// written can be read again. Use with `#[serde(with = "crate::io::float")]`.
pub mod float {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes a finite value as a number, any other as `null`.
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    /// Reads a number, or `null` as NaN.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// [`float`] for the values of a map (`BTreeMap<String, f64>`).
pub mod float_map {
    use std::collections::BTreeMap;

    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes finite values as numbers, others as `null`.
    pub fn serialize<S: Serializer>(m: &BTreeMap<String, f64>, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(m.len()))?;
        for (k, v) in m {
            map.serialize_entry(k, &v.is_finite().then_some(*v))?;
        }
        map.end()
    }

    /// Reads numbers, and `null` as NaN.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
        let m = BTreeMap::<String, Option<f64>>::deserialize(d)?;
        Ok(m.into_iter()
            .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
            .collect())
    }
}
