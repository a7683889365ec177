//! The error type of herd-core: every failure a user can cause is a value with a one-line message
//! that names the file, tensor or field at fault.

use std::path::PathBuf;

/// Result alias used across herd-core.
pub type Result<T, E = HerdError> = std::result::Result<T, E>;

/// Every message is one line: a newline or carriage return that reaches one from outside (a tensor name, a
/// path, a parser's message quoting its input) is written escaped.
#[derive(Debug, thiserror::Error)]
pub enum HerdError {
    /// A file could not be opened or read.
    #[error("{}: {}", line(&.path.display().to_string()), line(&.err.to_string()))]
    Io { path: PathBuf, err: std::io::Error },
    /// A file was read but its contents are not what they must be (truncated, corrupt, bad JSON).
    #[error("{}: {}", line(&.path.display().to_string()), line(.msg))]
    BadFile { path: PathBuf, msg: String },
    /// A config field is missing, of the wrong type or out of range.
    #[error("config field `{}`: {}", line(.field), line(.msg))]
    Config { field: String, msg: String },
    /// A tensor is missing from the checkpoint or has the wrong shape or dtype.
    #[error("tensor `{name}`: {}", line(.msg))]
    Tensor { name: String, msg: String },
    /// A tokenizer or chat-template problem.
    #[error("tokenizer: {}", line(.0))]
    Tokenizer(String),
    /// The input (prompt, ids, request) is not acceptable, e.g. longer than the context.
    #[error("{}", line(.0))]
    Input(String),
    /// A backend could not be created or failed while running.
    #[error("backend {backend}: {}", line(.msg))]
    Backend { backend: String, msg: String },

    /// Too much work queued already (a server answers 429/503): try again later.
    #[error("busy: {}", line(.0))]
    Busy(String),

    /// Something herd itself guarantees did not hold (a bug, not a problem with the input): kept apart from
    /// [`HerdError::Input`] so that a user is not told to fix what they did not do, and a server answers 500.
    #[error("internal error (a bug in herd; please report it): {}", line(.0))]
    Internal(String),
}

/// `s` on one line: `\n` and `\r` escaped.
pub fn line(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\n', '\r']) {
        s.replace('\n', "\\n").replace('\r', "\\r").into()
    } else {
        s.into()
    }
}

impl HerdError {
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        HerdError::Config { field: field.into(), msg: msg.into() }
    }
    pub fn tensor(name: impl Into<String>, msg: impl Into<String>) -> Self {
        HerdError::Tensor { name: name.into().escape_debug().to_string(), msg: msg.into() }
    }
    pub fn bad_file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        HerdError::BadFile { path: path.into(), msg: msg.into() }
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        HerdError::Internal(msg.into())
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HerdError::Io { path: path.into(), err: source }
    }
}
