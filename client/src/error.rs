//! The client's typed errors.
//!
//! Every failure of a request is an [`Error`]. Two questions matter to a
//! caller and each has a method:
//!
//! * [`Error::is_retryable`]: may the same request (same `bid_id` /
//!   `order_id`) be sent again? The client's own [`RetryPolicy`](crate::RetryPolicy)
//!   already does so for these; a caller sees them only once the policy gave
//!   up (wrapped in [`Error::RetriesExhausted`]) or when retries are off.
//! * [`Error::outcome_unknown`]: may the request have executed even though no
//!   outcome came back (`IN_DOUBT`, a lost connection, a timeout)? Then resend
//!   it with the same key later to learn its outcome (PROTOCOL.md §6.3).

use std::io;
use std::time::Duration;

use gavel_protocol::{DecodeError, ErrorCode, ResultPayload};

/// Why a request, a connection or a subscription failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The TCP connection could not be opened.
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// Opening the connection (TCP, TLS and HELLO) took longer than the
    /// configured connect timeout.
    #[error("connecting took longer than {0:?}")]
    ConnectTimeout(Duration),
    /// The TLS handshake failed (bad certificate, wrong name, …).
    #[error("TLS: {0}")]
    Tls(String),
    /// An I/O error on an established connection.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The server answered `ERROR` with a code this client knows.
    #[error("server answered ERROR {}: {message}", code.name())]
    Server { code: ErrorCode, message: String },
    /// The server answered `ERROR` with a code this client does not know
    /// (PROTOCOL.md §6.4): the outcome is unknown, like `IN_DOUBT`.
    #[error("server answered an ERROR code this client does not know")]
    UnknownServerError,
    /// The connection closed after the request was handed to it and before
    /// its reply came: the request may or may not have executed.
    #[error("connection lost before the reply came (outcome unknown)")]
    ConnectionLost,
    /// No connection was available within the request timeout; the request
    /// was not sent.
    #[error("not connected{}", last_error.as_deref().map(|e| format!(" (last attempt: {e})")).unwrap_or_default())]
    NotConnected { last_error: Option<String> },
    /// The request was sent but no reply came within the request timeout.
    #[error("no reply within {0:?} (outcome unknown)")]
    Timeout(Duration),
    /// The retry policy gave up. `in_doubt` is true when some attempt may have
    /// executed (a lost connection, a timeout, `IN_DOUBT`): resend with the
    /// same key later to learn the outcome.
    #[error("gave up after {attempts} attempts (in doubt: {in_doubt}): {last}")]
    RetriesExhausted {
        attempts: u32,
        in_doubt: bool,
        last: Box<Error>,
    },
    /// A frame from the server could not be decoded (an unknown `RESULT`
    /// status, for instance: the request executed with an outcome this client
    /// does not understand).
    #[error("undecodable reply from server: {0}")]
    Decode(#[from] DecodeError),
    /// The server answered with a reply of the wrong type for the request.
    #[error("unexpected reply: {0}")]
    Unexpected(String),
    /// `SUBSCRIBE` was answered with something else than `OK` (`CLOSED`,
    /// `NOT_FOUND`): nothing is subscribed.
    #[error("subscription refused: {}", .0.status.name())]
    Refused(ResultPayload),
    /// The client was shut down (every [`Client`](crate::Client) handle dropped).
    #[error("client closed")]
    Closed,
    /// The configuration cannot work (an unparsable TLS server name, …).
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether resending the same request (same idempotency key) may succeed:
    /// `BUSY`, `RATE_LIMITED`, `UNAVAILABLE`, `IN_DOUBT`, `SHUTTING_DOWN`, an
    /// unknown `ERROR` code, a lost connection, a timeout, no connection.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Server { code, .. } => matches!(
                code,
                ErrorCode::Busy
                    | ErrorCode::RateLimited
                    | ErrorCode::Unavailable
                    | ErrorCode::InDoubt
                    | ErrorCode::ShuttingDown
            ),
            Error::UnknownServerError
            | Error::ConnectionLost
            | Error::NotConnected { .. }
            | Error::Timeout(_)
            | Error::Connect { .. }
            | Error::ConnectTimeout(_)
            | Error::Io(_) => true,
            _ => false,
        }
    }

    /// Whether the request may have executed although no outcome came back.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            Error::Server { code, .. } => *code == ErrorCode::InDoubt,
            Error::UnknownServerError | Error::ConnectionLost | Error::Timeout(_) => true,
            Error::RetriesExhausted { in_doubt, .. } => *in_doubt,
            _ => false,
        }
    }

    /// The server's `ERROR` code, if this is (or wraps) one.
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            Error::RetriesExhausted { last, .. } => last.server_code(),
            _ => None,
        }
    }
}
