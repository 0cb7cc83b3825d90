//! The disk library's one error type: a stable kind plus context.

use std::fmt;
use std::path::PathBuf;

/// The stable category of a disk error, for callers that branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The host failed an I/O operation.
    Io,
    /// The file is not a valid image of the stated format.
    InvalidFormat,
    /// A valid image uses a feature this library does not support.
    Unsupported,
    /// The image's metadata is inconsistent (overlaps, out-of-range offsets, bad refcounts).
    Corrupt,
    /// A request lies outside the virtual disk.
    OutOfBounds,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Io => "I/O error",
            ErrorKind::InvalidFormat => "invalid format",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Corrupt => "corrupt image",
            ErrorKind::OutOfBounds => "out of bounds",
        })
    }
}

/// A disk error: kind, message and where it happened.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    path: Option<PathBuf>,
    offset: Option<u64>,
    operation: Option<&'static str>,
    #[source]
    source: Option<std::io::Error>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.path {
            write!(f, "{}: ", p.display())?;
        }
        if let Some(op) = self.operation {
            write!(f, "{op}: ")?;
        }
        write!(f, "{}: {}", self.kind, self.message)?;
        if let Some(o) = self.offset {
            write!(f, " (at offset {o:#x})")?;
        }
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl Error {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            path: None,
            offset: None,
            operation: None,
            source: None,
        }
    }

    /// An I/O error from the host.
    pub fn io(source: std::io::Error, message: impl Into<String>) -> Error {
        Error {
            source: Some(source),
            ..Error::new(ErrorKind::Io, message)
        }
    }

    /// Adds the image path.
    pub fn with_path(mut self, path: impl Into<PathBuf>) -> Error {
        self.path.get_or_insert(path.into());
        self
    }

    /// Adds the file or virtual-disk offset involved.
    pub fn with_offset(mut self, offset: u64) -> Error {
        self.offset.get_or_insert(offset);
        self
    }

    /// Adds the operation that failed ("read", "write", "open", ...).
    pub fn with_operation(mut self, op: &'static str) -> Error {
        self.operation.get_or_insert(op);
        self
    }

    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The image path, if known.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// The offset, if known.
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
