//! Sans-IO implementation of the Gavel wire protocol, version 1.
//!
//! `PROTOCOL.md` at the repository root is the complete, normative description
//! of wire v1 (byte layouts, codes, rules, worked examples). This crate owns
//! three things:
//!
//! * [`frame`]: the 8-byte header and the numeric constants of the contract;
//! * [`message`]: typed requests, responses and pushes, and their encoders;
//! * [`codec`]: the incremental [`Decoder`] that turns a byte buffer into typed
//!   frames without copying fixed-layout payloads.
//!
//! Nothing here touches a socket, except the small blocking [`Client`] in
//! [`client`], which is a convenience for tests, `gavel-cli` and scripts.

pub mod client;
pub mod codec;
pub mod error;
pub mod frame;
pub mod message;
#[cfg(feature = "tls")]
pub mod tls;

pub use client::{Client, ClientError};
pub use codec::Decoder;
pub use error::DecodeError;
pub use frame::{Frame, Header, FLAG_REPLAYED, HEADER_LEN, PROTOCOL_VERSION};
pub use message::{
    AuctionInfo, AuctionState, BidRequest, BuyRequest, ErrorCode, OpenAuctionRequest,
    OpenSaleRequest, Push, Request, Response, ResultPayload, SaleInfo, ServerMessage, Status,
};
