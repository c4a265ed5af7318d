//! The one error type of the crate. Every variant names what failed (key, node, config
//! key) so a log line is enough to act on.

use std::time::Duration;

/// Result alias used throughout slotline.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in slotline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration key has a value slotline cannot use.
    #[error("invalid configuration: {key} = {value:?}: {reason}")]
    Config {
        key: String,
        value: String,
        reason: String,
    },
    /// A server URL could not be parsed.
    #[error("invalid URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    /// The connection to a server failed.
    #[error("I/O error talking to {node}: {source}")]
    Io {
        node: String,
        #[source]
        source: std::io::Error,
    },
    /// A TLS handshake or session failed: `reason` is rustls's (for instance
    /// `invalid peer certificate: UnknownIssuer`). Not retried: a certificate problem
    /// does not go away by itself.
    #[error("tls {stage} with {node} failed: {reason}")]
    Tls {
        node: String,
        /// `handshake` (TLS or the connection's own handshake) or `session`.
        stage: &'static str,
        reason: String,
    },
    /// The server refused our credentials.
    #[error("authentication failed at {node}: {message}")]
    Auth { node: String, message: String },
    /// The server answered a command with an error reply.
    #[error("server {node} replied with an error: {message}")]
    Server { node: String, message: String },
    /// The server sent bytes that are not valid RESP, or not the reply we expected.
    #[error("protocol error from {node}: {reason}")]
    Protocol { node: String, reason: String },
    /// A write or raw command was sent whole and no valid reply came back (the
    /// connection failed first, or the reply was not one the command can give): the
    /// server may or may not have applied it. slotline does not resend it
    /// (that could apply it twice); the caller decides.
    #[error("outcome unknown at {node}: the request was sent but no valid reply came back ({reason}); it may or may not have been applied")]
    OutcomeUnknown { node: String, reason: String },
    /// The request did not complete in time.
    #[error("request timed out after {after:?}: {what}")]
    Timeout { after: Duration, what: String },
    /// A submission lane is full (returned by `try_*` calls only).
    #[error("submission lane {class} is full; retry later")]
    Busy { class: &'static str },
    /// The engine was shut down before the request completed.
    #[error("engine is shut down")]
    Closed,
    /// A value is larger than the configured or server limit.
    #[error("value for key {key} is {len} bytes; the limit is {limit}")]
    TooLarge {
        key: String,
        len: usize,
        limit: usize,
    },
    /// Invalid input given by the caller (keys, buffers, metadata).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Some writes of a batch failed; each failed key was logged.
    #[error("{failed} of {total} writes failed; first: key {first_key}: {first_error}")]
    PutFailed {
        failed: usize,
        /// How many of the failed chunks had a write sent and left unanswered
        /// ([`Error::OutcomeUnknown`]): they may or may not have been written.
        outcome_unknown: usize,
        total: usize,
        first_key: String,
        first_error: String,
    },
    /// Cluster topology or routing failed after retries.
    #[error("cluster: {0}")]
    Cluster(String),
}

impl Error {
    /// Short stable name of the error kind, used as the metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config { .. } => "config",
            Error::Url { .. } => "url",
            Error::Io { .. } => "io",
            Error::OutcomeUnknown { .. } => "outcome_unknown",
            Error::Auth { .. } => "auth",
            Error::Server { .. } => "server",
            Error::Protocol { .. } => "protocol",
            Error::Timeout { .. } => "timeout",
            Error::Busy { .. } => "busy",
            Error::Closed => "closed",
            Error::TooLarge { .. } => "too_large",
            Error::Invalid(_) => "invalid",
            Error::PutFailed { .. } => "put_failed",
            Error::Cluster(_) => "cluster",
            Error::Tls { .. } => "tls",
        }
    }

    pub(crate) fn config(
        key: &str,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Error::Config {
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Renders a binary key for logs and error messages: printable ASCII as is, anything
/// else escaped, long keys shortened.
pub fn show_key(key: &[u8]) -> String {
    const MAX: usize = 200;
    let shown = &key[..key.len().min(MAX)];
    let mut s = shown.escape_ascii().to_string();
    if key.len() > MAX {
        s.push_str(&format!("...({} bytes)", key.len()));
    }
    s
}
