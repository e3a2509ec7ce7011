//! Long runs stop and resume: a pretraining or finetuning killed midway (SIGKILL) or stopped
//! by SIGTERM continues at its last saved epoch on a rerun and ends bit-identical to an
//! uninterrupted run; Ctrl-C in the REPL stops native work and returns to the prompt.

mod common;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn pretext(what: &str, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pretext"));
    c.args(["run", "tests/fixtures/resume.rhai", "--set"])
        .arg(format!("what={what}"))
        .arg("--set")
        .arg(format!("out={}", out.display()))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PRETEXT_DATA", out.parent().unwrap().join("data"))
        .env("RAYON_NUM_THREADS", "2");
    c
}

/// Runs to the end and returns stderr.
fn finish(what: &str, out: &Path) -> String {
    let o = pretext(what, out).output().unwrap();
    let err = common::stderr(&o);
    assert!(o.status.success(), "{err}");
    err
}

/// The lines of a JSONL log without their timings.
fn log_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

/// Starts a run and waits until its log has `lines` lines (the test fails if it ends first).
fn start_until(what: &str, out: &Path, log: &Path, lines: usize) -> Child {
    let mut child = pretext(what, out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while log_lines(log).len() < lines {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before its log had {lines} lines");
        }
        assert!(Instant::now() < deadline, "no progress in 300 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill only sends a signal to the child this test started.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0);
}

fn same_files(a: &Path, b: &Path, names: &[&str]) {
    for name in names {
        let (x, y) = (
            std::fs::read(a.join(name)).unwrap(),
            std::fs::read(b.join(name)).unwrap(),
        );
        assert!(
            x == y,
            "{name} differs between the uninterrupted and the resumed run"
        );
    }
}

fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    (dir, a, b)
}

#[test]
fn a_pretraining_killed_midway_resumes_and_ends_bit_identical() {
    let (_dir, whole, killed) = dirs();
    finish("pretrain", &whole);
    let mut child = start_until("pretrain", &killed, &killed.join("log.jsonl"), 3);
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    let at_kill = log_lines(&killed.join("log.jsonl")).len();
    assert!(at_kill < 40, "killed after the last epoch ({at_kill})");
    assert!(killed.join("state.safetensors").is_file());
    let err = finish("pretrain", &killed);
    assert!(err.contains("resuming"), "{err}");
    same_files(&whole, &killed, &["best.safetensors", "last.safetensors"]);
    assert_eq!(
        log_lines(&whole.join("log.jsonl")),
        log_lines(&killed.join("log.jsonl"))
    );
    assert!(
        !killed.join("state.safetensors").exists(),
        "a finished run keeps no state"
    );
}

#[test]
fn sigterm_stops_a_pretraining_at_a_step_and_the_rerun_completes_it_identically() {
    let (_dir, whole, stopped) = dirs();
    finish("pretrain", &whole);
    let child = start_until("pretrain", &stopped, &stopped.join("log.jsonl"), 2);
    signal(&child, libc::SIGTERM);
    let o = child.wait_with_output().unwrap();
    let err = common::stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted at pretraining epoch"), "{err}");
    let err = finish("pretrain", &stopped);
    assert!(err.contains("resuming"), "{err}");
    same_files(&whole, &stopped, &["best.safetensors", "last.safetensors"]);
}

#[test]
fn a_finetuning_killed_midway_resumes_and_ends_bit_identical() {
    let (_dir, whole, killed) = dirs();
    finish("finetune", &whole);
    let whole_log = log_lines(&whole.join("seg.log.jsonl"));
    assert_eq!(whole_log.len(), 40);
    assert!(!whole.join("seg.state.safetensors").exists());
    let mut child = start_until("finetune", &killed, &killed.join("seg.log.jsonl"), 3);
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    assert!(log_lines(&killed.join("seg.log.jsonl")).len() < 40);
    let err = finish("finetune", &killed);
    assert!(err.contains("finetune: resuming"), "{err}");
    same_files(&whole, &killed, &["seg.safetensors", "metrics.json"]);
    assert_eq!(whole_log, log_lines(&killed.join("seg.log.jsonl")));
}

/// A pseudo-terminal: the master side (this test) and the path of the slave (the REPL's).
struct Pty {
    master: std::fs::File,
    slave: PathBuf,
}

fn open_pty() -> Pty {
    use std::os::fd::FromRawFd;
    // SAFETY: plain POSIX pseudo-terminal calls on a descriptor this function owns; the
    // buffer given to ptsname_r is large enough and NUL-terminated by it on success.
    unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(fd >= 0, "posix_openpt failed");
        assert_eq!(libc::grantpt(fd), 0);
        assert_eq!(libc::unlockpt(fd), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(fd, name.as_mut_ptr(), name.len()), 0);
        let slave = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned();
        Pty {
            master: std::fs::File::from_raw_fd(fd),
            slave: PathBuf::from(slave),
        }
    }
}

#[test]
fn ctrl_c_in_the_repl_stops_a_pretraining_at_its_next_step_and_the_session_continues() {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p");
    let pty = open_pty();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pty.slave)
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pretext"));
    cmd.arg("repl")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PRETEXT_HISTORY", dir.path().join("history.txt"))
        .env("PRETEXT_DATA", dir.path().join("data"))
        .env("RAYON_NUM_THREADS", "2")
        // A plain line terminal: no escape sequences for this test to answer.
        .env("TERM", "dumb")
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave);
    // SAFETY: setsid and TIOCSCTTY only make the pty the child's controlling terminal, so that
    // Ctrl-C typed on it reaches the child as SIGINT, as in a real terminal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let screen = Arc::new(Mutex::new(String::new()));
    let mut reader = pty.master.try_clone().unwrap();
    let seen = screen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let wait_for = |what: &str, from: usize| -> usize {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let s = screen.lock().unwrap().clone();
            if let Some(i) = s[from.min(s.len())..].find(what) {
                return from + i + what.len();
            }
            assert!(Instant::now() < deadline, "no `{what}` on the screen:\n{s}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let mut master = pty.master;
    wait_for(">> ", 0);
    writeln!(
        master,
        "let ct = pancreas(#{{ shape: [16, 16, 16], synthetic: #{{ labelled: 6, unlabelled: 2, shape: [24, 24, 16], seed: 0 }} }}); let ids = []; for i in 0..8 {{ ids.push(i); }} pretrain(\"rotation\", ct, ids, #{{ epochs: 100000, steps_per_epoch: 2, lr: 1e-3, val_fraction: 0.25, head: [16], batch: 2, unet: #{{ filters: 2, depth: 2 }}, out: \"{}\" }});",
        out.display()
    )
    .unwrap();
    let log = out.join("log.jsonl");
    let deadline = Instant::now() + Duration::from_secs(300);
    while log_lines(&log).len() < 2 {
        assert!(Instant::now() < deadline, "pretraining did not start");
        assert!(child.try_wait().unwrap().is_none(), "the REPL ended");
        std::thread::sleep(Duration::from_millis(10));
    }
    let typed_at = screen.lock().unwrap().len();
    master.write_all(&[3]).unwrap(); // Ctrl-C
    let after = wait_for("interrupted at pretraining epoch", typed_at);
    let prompt = wait_for(">> ", after);
    let lines = log_lines(&log).len();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        log_lines(&log).len(),
        lines,
        "pretraining went on after Ctrl-C"
    );
    assert!(out.join("state.safetensors").is_file());
    writeln!(master, "40 + 2").unwrap();
    wait_for("42", prompt);
    writeln!(master, ":quit").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the REPL did not quit");
        std::thread::sleep(Duration::from_millis(10));
    }
}
