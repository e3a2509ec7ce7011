//! Stopping long native work at the next step. The REPL's Ctrl-C and, in batch mode, the first
//! SIGINT or SIGTERM (what a Slurm time limit sends) set one process-wide flag; pretraining,
//! finetuning, prediction and sweeps check it at every step and stop with
//! [`Error::Interrupted`], leaving their files as the last finished epoch wrote them (a rerun
//! resumes there).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks running work to stop at its next step.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether a stop has been asked for (and not yet cleared).
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Forgets an earlier request (the REPL, before it runs the next input).
pub fn clear() {
    REQUESTED.store(false, Ordering::SeqCst);
}

/// `Err(Error::Interrupted)` naming `at` (e.g. "pretraining epoch 3, step 2") once a stop has
/// been asked for.
pub fn check(at: impl FnOnce() -> String) -> Result<()> {
    if requested() {
        Err(Error::Interrupted { at: at() })
    } else {
        Ok(())
    }
}
