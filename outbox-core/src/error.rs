//! The error type shared by every store and by the relay.

use std::fmt;

/// A boxed error usable as a `source`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a store, the relay or configuration.
///
/// Every variant says whether retrying the same call can help: see [`Error::is_transient`].
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
    #[error("broker error during {operation}: {source}")]
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
    #[error("store error during {operation}: {source}")]
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
