//! The library's one error type.
//!
//! Every variant names what was wrong and where: the file, the argument or the
//! operation, and what was expected. User input never panics; it ends here.

use std::path::{Path, PathBuf};

/// Errors of the pretext library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // === Files ===
    /// A file could not be read, written or parsed.
    #[error("{}: {msg}", path.display())]
    File {
        /// The file concerned.
        path: PathBuf,
        /// What went wrong, and what was expected.
        msg: String,
    },

    // === Arguments and shapes ===
    /// A function or command received an argument it cannot use.
    #[error("invalid argument `{name}`: {msg}")]
    Arg {
        /// The argument's name.
        name: String,
        /// What was wrong, and what was expected.
        msg: String,
    },
    /// Tensor shapes do not fit the operation.
    #[error("{op}: {msg}")]
    Shape {
        /// The operation that was given the shapes.
        op: &'static str,
        /// The shapes seen and the shapes expected.
        msg: String,
    },
    /// Training produced a non-finite value.
    #[error("non-finite {what} ({value}) at {at}")]
    NonFinite {
        /// The quantity that became NaN or infinite (loss, gradient norm, ...).
        what: String,
        /// The value seen.
        value: f64,
        /// Where: epoch/step or operation.
        at: String,
    },

    /// Work stopped because a stop was asked for (Ctrl-C, SIGINT, SIGTERM; see [`crate::stop`]).
    #[error("interrupted at {at}")]
    Interrupted {
        /// Where the work stopped, and what it left behind.
        at: String,
    },

    // === Backends ===
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Any other failure, described in words.
    #[error("{0}")]
    Msg(String),
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A file error for `path` with the message `msg`.
    pub fn file(path: impl AsRef<Path>, msg: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.as_ref().to_path_buf(),
            msg: msg.to_string(),
        }
    }

    /// An argument error for the argument `name`.
    pub fn arg(name: impl Into<String>, msg: impl std::fmt::Display) -> Self {
        Error::Arg {
            name: name.into(),
            msg: msg.to_string(),
        }
    }

    /// A shape error raised by the operation `op`.
    pub fn shape(op: &'static str, msg: impl std::fmt::Display) -> Self {
        Error::Shape {
            op,
            msg: msg.to_string(),
        }
    }

    /// A plain message.
    pub fn msg(msg: impl std::fmt::Display) -> Self {
        Error::Msg(msg.to_string())
    }
}

/// Attaches a file path to errors from I/O and parsing.
pub trait FileContext<T> {
    /// Maps the error to [`Error::File`] naming `path`.
    fn with_file(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T, E: std::fmt::Display> FileContext<T> for std::result::Result<T, E> {
    fn with_file(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::file(path, e))
    }
}
