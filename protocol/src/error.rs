//! Decoding errors as values.
//!
//! Each error knows which `ERROR` code the server must answer and whether the
//! framing survived (the connection stays open) or not (the connection closes
//! after the reply), so the server's error handling is a lookup.

use crate::message::ErrorCode;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header announces a payload larger than the configured maximum.
    /// The payload was not consumed: framing is lost, close after replying.
    #[error("payload of {length} bytes exceeds the maximum of {max}")]
    TooLarge {
        request_id: u32,
        length: usize,
        max: usize,
    },
    /// The type code is not one this side understands. The frame was consumed.
    #[error("unknown message type 0x{msg_type:02x}")]
    UnknownType { request_id: u32, msg_type: u8 },
    /// The payload does not match the type's layout or carries an invalid value.
    /// The frame was consumed; framing is intact.
    #[error("malformed {name}: {reason}")]
    Malformed {
        request_id: u32,
        name: &'static str,
        reason: &'static str,
    },
}

impl DecodeError {
    /// The `ERROR` code the server answers with.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::UnknownType { .. } => ErrorCode::UnknownType,
            DecodeError::Malformed { .. } => ErrorCode::Malformed,
        }
    }

    /// True when the stream can no longer be framed and must be closed.
    pub fn is_fatal(&self) -> bool {
        self.error_code().closes_connection()
    }

    /// The `request_id` from the offending header, to echo in the reply.
    pub fn request_id(&self) -> u32 {
        match *self {
            DecodeError::TooLarge { request_id, .. }
            | DecodeError::UnknownType { request_id, .. }
            | DecodeError::Malformed { request_id, .. } => request_id,
        }
    }
}
