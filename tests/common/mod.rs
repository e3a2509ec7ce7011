//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod torch;
pub mod volumes;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use pretext::script::{Host, HostConfig};

/// Runs the `pretext` binary with `args` in `cwd` (the repository root when `None`).
pub fn pretext(args: &[&str], cwd: Option<&Path>) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(args)
        .current_dir(cwd.unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR"))))
        .output()
        .expect("pretext binary runs")
}

/// Runs the `pretext` binary with `input` piped to its standard input.
pub fn pretext_with_stdin(args: &[&str], input: &str, history: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PRETEXT_HISTORY", history)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pretext binary starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Evaluates `code` in a fresh host and returns the value as f64 (the test fails on error).
pub fn eval_f64(code: &str) -> f64 {
    let host = Host::new(HostConfig::default());
    let v = host
        .eval(code, "<test>")
        .unwrap_or_else(|e| panic!("{code}\n{e}"));
    v.as_float()
        .or_else(|_| v.as_int().map(|i| i as f64))
        .unwrap_or_else(|t| panic!("{code}: got {t}"))
}

/// Evaluates `code` and returns the rendered error (the test fails if it succeeds).
pub fn eval_err(code: &str) -> String {
    let host = Host::new(HostConfig::default());
    match host.eval(code, "<test>") {
        Ok(v) => panic!("{code}: expected an error, got {v}"),
        Err(e) => e.to_string(),
    }
}

/// Evaluates `code` and returns the value rendered as the REPL shows it.
pub fn eval_show(code: &str) -> String {
    let host = Host::new(HostConfig::default());
    let v = host
        .eval(code, "<test>")
        .unwrap_or_else(|e| panic!("{code}\n{e}"));
    host.display(&v)
}
