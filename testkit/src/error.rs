//! The test kit's error type: what failed talking to a server, or managing one.

use std::time::Duration;

/// Result alias of the test kit.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong starting, stopping or talking to a local server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection to a server failed.
    #[error("I/O error talking to {node}: {source}")]
    Io {
        /// `host:port`.
        node: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The server refused our credentials.
    #[error("authentication failed at {node}: {message}")]
    Auth {
        /// `host:port`.
        node: String,
        /// The server's error reply.
        message: String,
    },
    /// The server answered a command with an error reply.
    #[error("server {node} replied with an error: {message}")]
    Server {
        /// `host:port`.
        node: String,
        /// The error reply, with its prefix (`ERR`, `MOVED`, ...).
        message: String,
    },
    /// The server sent bytes that are not valid RESP.
    #[error("protocol error from {node}: {reason}")]
    Protocol {
        /// `host:port`.
        node: String,
        /// What was wrong.
        reason: String,
    },
    /// A reply did not arrive in time.
    #[error("request timed out after {after:?}: {what}")]
    Timeout {
        /// The time-out.
        after: Duration,
        /// The request and the server.
        what: String,
    },
    /// A local server process could not be started, stopped or found.
    #[error("local server: {0}")]
    Local(String),
}
