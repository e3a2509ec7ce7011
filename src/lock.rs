//! Exclusive locks on files and folders that one process at a time may write: a results file
//! (`results.jsonl` → `results.jsonl.lock`) or a pretraining folder (`pretrain/rotation-seed0`
//! → `pretrain/rotation-seed0.lock`).
//!
//! The lock is an operating-system file lock (`flock` on Unix, `LockFileEx` on Windows) on the
//! `.lock` file, which also holds a small JSON record of the holder (pid, host, start time,
//! command) so that a second writer can say who holds it. The operating system releases the
//! lock when its process ends, however it ends, so a lock left behind by a killed run is free:
//! the next run takes it over (and says so). On a network file system the lock is as good as
//! the file system's locking (NFSv4 and Lustre support it; a crashed client's lock is released
//! when its lease expires).
//!
//! Where the file system has no locks at all, the record alone is the lock (created
//! exclusively): a record of this host whose process is no longer running is stale and taken
//! over; a record of another host cannot be checked from here and is never taken over
//! automatically (the error says which file to delete once that run is known to be gone).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::error::{Error, FileContext, Result};

/// Who holds a lock.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// When the lock was taken (UTC, ISO 8601).
    pub since: String,
    /// The command line of the holding process.
    #[serde(default)]
    pub command: String,
}

impl Holder {
    /// This process, now.
    pub fn me() -> Holder {
        let mut command = std::env::args().collect::<Vec<_>>().join(" ");
        if command.len() > 300 {
            let mut cut = 300;
            while !command.is_char_boundary(cut) {
                cut -= 1;
            }
            command.truncate(cut);
            command.push_str(" ...");
        }
        Holder {
            pid: std::process::id(),
            host: hostname(),
            since: utc_now(),
            command,
        }
    }

    /// Whether the holder is a process of this host that is no longer running.
    pub fn is_stale(&self) -> bool {
        self.host == hostname() && !pid_alive(self.pid)
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on host {} since {}",
            self.pid, self.host, self.since
        )?;
        if !self.command.is_empty() {
            write!(f, " (`{}`)", self.command)?;
        }
        Ok(())
    }
}

/// An exclusive lock, released (and its file removed) when the last handle is dropped. Within
/// one process, taking a lock this process already holds shares it (so a REPL that opens the
/// same results file twice is not locked out by itself).
#[derive(Clone, Debug)]
pub struct Lock(Arc<Held>);

#[derive(Debug)]
struct Held {
    file: Option<File>,
    path: PathBuf,
    key: PathBuf,
}

/// The locks this process holds, by lock file.
fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Held>>> {
    static HELD: OnceLock<Mutex<HashMap<PathBuf, Weak<Held>>>> = OnceLock::new();
    HELD.get_or_init(Default::default)
}

fn registry_lock() -> MutexGuard<'static, HashMap<PathBuf, Weak<Held>>> {
    registry().lock().unwrap_or_else(|e| e.into_inner())
}

/// The registry key of a lock file: its folder made absolute, plus its name.
fn key_of(path: &Path) -> PathBuf {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    dir.join(path.file_name().unwrap_or_default())
}

/// The lock file of `target` (a file or a folder): `target` with `.lock` appended.
pub fn lock_path(target: &Path) -> PathBuf {
    let mut s = target.as_os_str().to_os_string();
    s.push(".lock");
    PathBuf::from(s)
}

enum Attempt {
    Taken(Lock),
    Held(Option<Holder>),
}

/// One try, sharing a lock this process already holds.
fn attempt_shared(path: &Path) -> Result<Attempt> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_file(dir)?;
    }
    let key = key_of(path);
    let mut held = registry_lock();
    if let Some(h) = held.get(&key).and_then(Weak::upgrade) {
        return Ok(Attempt::Taken(Lock(h)));
    }
    let a = attempt(path, &key)?;
    if let Attempt::Taken(l) = &a {
        held.insert(key, Arc::downgrade(&l.0));
    }
    Ok(a)
}

impl Lock {
    /// Takes the lock of `target` (see [`lock_path`]) or fails with an error naming the
    /// holder. `what` says what is locked, for messages ("results file", ...).
    pub fn acquire(target: &Path, what: &str) -> Result<Lock> {
        let path = lock_path(target);
        match attempt_shared(&path)? {
            Attempt::Taken(l) => Ok(l),
            Attempt::Held(h) => Err(held_error(target, &path, what, h.as_ref())),
        }
    }

    /// Takes the lock of `target`, waiting while another process holds it: `on_wait` is
    /// called once with the holder when waiting starts; `stop` is polled and ends the wait
    /// with an error when it returns true.
    pub fn wait(
        target: &Path,
        what: &str,
        mut on_wait: impl FnMut(Option<&Holder>),
        stop: impl Fn() -> bool,
    ) -> Result<Lock> {
        let path = lock_path(target);
        let mut told = false;
        loop {
            match attempt_shared(&path)? {
                Attempt::Taken(l) => return Ok(l),
                Attempt::Held(h) => {
                    if !told {
                        on_wait(h.as_ref());
                        told = true;
                    }
                    if stop() {
                        return Err(Error::file(
                            target,
                            format!("stopped while waiting for the {what} lock"),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.0.path
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = registry_lock();
        // Remove the file while still holding the lock; a process waiting on the old file
        // notices that it is gone and starts over (see `attempt`).
        let _ = std::fs::remove_file(&self.path);
        if let Some(f) = self.file.take() {
            let _ = f.unlock();
        }
        if held.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
            held.remove(&self.key);
        }
    }
}

fn held_error(target: &Path, path: &Path, what: &str, h: Option<&Holder>) -> Error {
    let who = match h {
        Some(h) => h.to_string(),
        None => "another process".to_string(),
    };
    let other_host = h.is_some_and(|h| h.host != hostname());
    let hint = if other_host {
        format!(
            "; wait for it to finish or write elsewhere (if that run is known to be gone and \
             the file system has no locks, delete {})",
            path.display()
        )
    } else {
        "; wait for it to finish or write elsewhere".to_string()
    };
    Error::file(
        target,
        format!("the {what} is being written by {who}{hint}"),
    )
}

/// One try at taking the lock file `path`.
fn attempt(path: &Path, key: &Path) -> Result<Attempt> {
    // A few rounds: the file may be removed by its previous holder between our open and lock.
    for _ in 0..100 {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_file(path)?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(Attempt::Held(holder_of(path))),
            Err(std::fs::TryLockError::Error(e)) => {
                if e.kind() == std::io::ErrorKind::Unsupported
                    || (cfg!(target_os = "linux") && matches!(e.raw_os_error(), Some(22 | 37)))
                {
                    // No locking support (EOPNOTSUPP, EINVAL, ENOLCK): the record is the lock.
                    drop(f);
                    return record_only(path, key);
                }
                return Err(Error::file(path, format!("cannot lock: {e}")));
            }
        }
        if !same_file(&f, path) {
            continue;
        }
        let mut old = String::new();
        let _ = f.read_to_string(&mut old);
        if let Ok(prev) = serde_json::from_str::<Holder>(&old)
            && prev.pid != std::process::id()
        {
            eprintln!(
                "{}: taking over a stale lock left by {prev}",
                path.display()
            );
        }
        write_record(&mut f, path)?;
        return Ok(Attempt::Taken(Lock(Arc::new(Held {
            file: Some(f),
            path: path.to_path_buf(),
            key: key.to_path_buf(),
        }))));
    }
    Err(Error::file(path, "the lock file keeps changing; giving up"))
}

/// Whether the open file `f` is still the file at `path` (not removed or replaced).
fn same_file(f: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (f.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = f;
        path.exists()
    }
}

fn write_record(f: &mut File, path: &Path) -> Result<()> {
    let text = serde_json::to_string(&Holder::me()).map_err(Error::msg)? + "\n";
    f.set_len(0).with_file(path)?;
    f.rewind().with_file(path)?;
    f.write_all(text.as_bytes()).with_file(path)?;
    f.sync_data().with_file(path)
}

/// The holder recorded in a lock file; retries briefly, as a new holder may be writing it.
fn holder_of(path: &Path) -> Option<Holder> {
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut last = None;
    loop {
        if let Some(h) = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str::<Holder>(&t).ok())
        {
            // A record of a finished process on this host may be the previous holder's,
            // not yet overwritten by the current one.
            if !h.is_stale() {
                return Some(h);
            }
            last = Some(h);
        }
        if Instant::now() >= deadline {
            return last;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Locking without operating-system locks: the record, created exclusively, is the lock.
fn record_only(path: &Path, key: &Path) -> Result<Attempt> {
    for _ in 0..10 {
        match OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(mut f) => {
                write_record(&mut f, path)?;
                return Ok(Attempt::Taken(Lock(Arc::new(Held {
                    file: None,
                    path: path.to_path_buf(),
                    key: key.to_path_buf(),
                }))));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let h = std::fs::read_to_string(path)
                    .ok()
                    .and_then(|t| serde_json::from_str::<Holder>(&t).ok());
                match h {
                    Some(h) if h.is_stale() => {
                        eprintln!(
                            "{}: taking over the lock of {h}, which is no longer running",
                            path.display()
                        );
                        let _ = std::fs::remove_file(path);
                    }
                    other => return Ok(Attempt::Held(other)),
                }
            }
            Err(e) => return Err(Error::file(path, e)),
        }
    }
    Err(Error::file(path, "the lock file keeps changing; giving up"))
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| std::env::var("COMPUTERNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown-host".to_string())
}

/// Whether a process of this host with id `pid` is running (assumed so where that cannot be
/// checked).
pub fn pid_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// The current time, UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    utc_string(secs)
}

/// Seconds since 1970 as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn utc_string(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
