//! The error type shared by every store and by the relay.

use std::fmt;

/// A boxed error usable as a `source`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a store, the relay or configuration.
///
/// Every variant says whether retrying the same call can help: see [`Error::is_transient`]. `Display`
/// names what failed; the cause is the error's `source` (print the whole chain with
/// [`Error::report`], or with an error reporter such as `anyhow`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message was rejected before anything was written (empty topic, oversized payload, ...).
    #[error("invalid message: {reason}")]
    InvalidMessage {
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration value is invalid (bad identifier, zero batch size, malformed URL, ...).
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong with it; never contains a secret.
        reason: String,
    },
    /// A statement the caller handed to the SDK is malformed (for example, it refers to a
    /// placeholder it does not bind); nothing was run.
    #[error("invalid statement: {reason}")]
    InvalidStatement {
        /// What is wrong with it.
        reason: String,
    },
    /// The broker failed outside a publish (a flush, a connection set up by hand).
    #[error("broker error during {operation}")]
    Broker {
        /// The operation that failed (`flush`, ...).
        operation: &'static str,
        /// Whether a retry may succeed.
        transient: bool,
        /// The underlying error, with secrets removed.
        #[source]
        source: BoxError,
    },
    /// The database (or other backing system) failed.
    #[error("store error during {operation}")]
    Store {
        /// The operation that failed (`claim`, `enqueue`, ...).
        operation: &'static str,
        /// Whether a retry may succeed (connection lost, deadlock, timeout).
        transient: bool,
        /// The underlying error, with secrets removed.
        #[source]
        source: BoxError,
    },
    /// The backend does not support this operation; the name says which.
    #[error("operation not supported by this backend: {0}")]
    Unsupported(&'static str),
}

impl Error {
    /// The error and its whole `source` chain as one line.
    pub fn report(&self) -> String {
        report(self)
    }

    /// An [`Error::InvalidMessage`].
    pub fn invalid_message(reason: impl fmt::Display) -> Self {
        Self::InvalidMessage { reason: reason.to_string() }
    }

    /// An [`Error::InvalidConfig`].
    pub fn invalid_config(reason: impl fmt::Display) -> Self {
        Self::InvalidConfig { reason: reason.to_string() }
    }

    /// An [`Error::InvalidStatement`].
    pub fn invalid_statement(reason: impl fmt::Display) -> Self {
        Self::InvalidStatement { reason: reason.to_string() }
    }

    /// An [`Error::Broker`].
    pub fn broker(operation: &'static str, transient: bool, source: impl Into<BoxError>) -> Self {
        Self::Broker { operation, transient, source: source.into() }
    }

    /// An [`Error::Store`].
    pub fn store(operation: &'static str, transient: bool, source: impl Into<BoxError>) -> Self {
        Self::Store { operation, transient, source: source.into() }
    }

    /// Whether retrying the failed call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Store { transient: true, .. } | Self::Broker { transient: true, .. })
    }
}

/// `error` and its whole `source` chain as one line, `: `-separated.
pub(crate) fn report(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PublishError;

    #[test]
    fn display_names_what_failed_and_the_report_adds_each_cause_once() {
        let error = Error::store("claim", true, "connection reset");
        assert_eq!(error.to_string(), "store error during claim");
        assert_eq!(error.report(), "store error during claim: connection reset");
        let publish = PublishError::transient(Error::broker("flush", true, "timed out"));
        assert_eq!(publish.report(), "transient publish error: broker error during flush: timed out");
    }
}
