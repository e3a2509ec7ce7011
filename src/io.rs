//! Small file-system helpers shared by the library.

use std::path::Path;

use crate::error::{Error, FileContext, Result};

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
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)
        .with_file(&tmp)
        .and_then(|_| std::fs::rename(&tmp, path).with_file(path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}
