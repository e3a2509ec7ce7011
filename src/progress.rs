//! A progress display for long work: a bar with rate and ETA on a terminal, plain lines
//! otherwise. Used by library code (dataset preparation) and by scripts (`progress(...)`).

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The terminal display that every bar is drawn in.
fn terminal() -> &'static indicatif::MultiProgress {
    static DISPLAY: std::sync::OnceLock<indicatif::MultiProgress> = std::sync::OnceLock::new();
    DISPLAY.get_or_init(indicatif::MultiProgress::new)
}

/// A progress display: a bar on a terminal, plain lines (at most every 2 s) otherwise.
#[derive(Clone)]
pub struct Progress(Arc<Mutex<ProgressInner>>);

struct ProgressInner {
    bar: Option<indicatif::ProgressBar>,
    label: String,
    total: u64,
    done: u64,
    msg: String,
    last_line: Instant,
    started: Instant,
}

impl Progress {
    /// A progress display counting to `total`.
    pub fn new(total: u64, label: &str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(label.to_string());
            // One display for every bar, so that bars of work running side by side (a sweep's
            // concurrent cells) each keep their own line.
            terminal().add(b)
        });
        Progress(Arc::new(Mutex::new(ProgressInner {
            bar,
            label: label.to_string(),
            total,
            done: 0,
            msg: String::new(),
            last_line: Instant::now(),
            started: Instant::now(),
        })))
    }

    /// Advances by `n` steps.
    pub fn inc(&self, n: u64) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        p.done = (p.done + n).min(p.total.max(p.done + n));
        if let Some(b) = &p.bar {
            b.inc(n);
        } else if p.last_line.elapsed() >= Duration::from_secs(2) || p.done >= p.total {
            let sep = if p.msg.is_empty() { "" } else { " " };
            eprintln!(
                "{}: {}/{} ({:.1}s){sep}{}",
                p.label,
                p.done,
                p.total,
                p.started.elapsed().as_secs_f64(),
                p.msg
            );
            p.last_line = Instant::now();
        }
    }

    /// Shows a message beside the bar (without a terminal: on the next progress line).
    pub fn message(&self, msg: &str) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &p.bar {
            Some(b) => b.set_message(msg.to_string()),
            None => p.msg = msg.to_string(),
        }
    }

    /// Ends the display.
    pub fn finish(&self) {
        let p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = &p.bar {
            b.finish();
        }
    }
}
