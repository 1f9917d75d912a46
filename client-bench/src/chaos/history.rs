//! What the fault harness records: every request it sent (one [`Op`] per
//! idempotency key) and every answer each attempt of it got, in order.

use std::fmt;

use gavel_protocol::{BidRequest, BuyRequest, ErrorCode, Request, Status};

/// One keyed request. Retries reuse it unchanged (same key, same fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Bid {
        auction: u64,
        bidder: u64,
        amount: u64,
        bid_id: u64,
    },
    Buy {
        sku: u64,
        buyer: u64,
        qty: u32,
        order_id: u64,
    },
    /// CLOSE_AUCTION (no key: a retry of one that closed the auction
    /// answers CLOSED with the winner).
    Close { auction: u64 },
    /// GET_AUCTION, recorded to check what it shows.
    Get { auction: u64 },
}

impl OpKind {
    /// The request to send (every attempt sends the same one).
    pub fn request(&self) -> Request {
        match *self {
            OpKind::Bid {
                auction,
                bidder,
                amount,
                bid_id,
            } => Request::Bid(BidRequest {
                auction_id: auction,
                bidder_id: bidder,
                amount,
                bid_id,
            }),
            OpKind::Buy {
                sku,
                buyer,
                qty,
                order_id,
            } => Request::Buy(BuyRequest {
                sku_id: sku,
                buyer_id: buyer,
                quantity: qty,
                order_id,
            }),
            OpKind::Close { auction } => Request::CloseAuction {
                auction_id: auction,
            },
            OpKind::Get { auction } => Request::GetAuction {
                auction_id: auction,
            },
        }
    }

    /// The auction a BID, CLOSE_AUCTION or GET_AUCTION names.
    pub fn auction(&self) -> Option<u64> {
        match *self {
            OpKind::Bid { auction, .. } | OpKind::Close { auction } | OpKind::Get { auction } => {
                Some(auction)
            }
            OpKind::Buy { .. } => None,
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            OpKind::Bid {
                auction,
                bidder,
                amount,
                bid_id,
            } => write!(
                f,
                "BID auction={auction} bidder={bidder} amount={amount} bid_id={bid_id}"
            ),
            OpKind::Buy {
                sku,
                buyer,
                qty,
                order_id,
            } => write!(
                f,
                "BUY sku={sku} buyer={buyer} quantity={qty} order_id={order_id}"
            ),
            OpKind::Close { auction } => write!(f, "CLOSE_AUCTION auction={auction}"),
            OpKind::Get { auction } => write!(f, "GET_AUCTION auction={auction}"),
        }
    }
}

/// A RESULT as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub status: Status,
    pub value: u64,
    pub aux: u64,
    pub replayed: bool,
}

impl Reply {
    pub fn new(status: Status, value: u64, aux: u64, replayed: bool) -> Reply {
        Reply {
            status,
            value,
            aux,
            replayed,
        }
    }

    /// Same outcome (status, value, aux), whatever the REPLAYED flag.
    pub fn same_outcome(&self, other: &Reply) -> bool {
        self.status == other.status && self.value == other.value && self.aux == other.aux
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RESULT {} value={} aux={}{}",
            self.status.name(),
            self.value,
            self.aux,
            if self.replayed { " REPLAYED" } else { "" }
        )
    }
}

/// An AUCTION reply (to GET_AUCTION), the fields the checker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuctionView {
    pub closed: bool,
    pub high_bid: u64,
    pub high_bidder: u64,
}

impl fmt::Display for AuctionView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AUCTION {} high_bid={} high_bidder={}",
            if self.closed { "CLOSED" } else { "OPEN" },
            self.high_bid,
            self.high_bidder
        )
    }
}

/// What one attempt of a request ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A RESULT: the request's outcome.
    Result(Reply),
    /// An AUCTION (GET_AUCTION's answer).
    Auction(AuctionView),
    /// An ERROR with this code (a raw `u16`: codes this build does not know
    /// arrive as [`Answer::Garbled`]).
    Error(u16),
    /// No reply within the client's read timeout (the connection is then
    /// dropped): the request may or may not have executed.
    Timeout,
    /// The connection broke (EOF, reset, failed write) with the request out.
    Lost,
    /// The harness itself closed the connection right after sending
    /// (a client dropping mid-request).
    Dropped,
    /// A reply this client could not decode (e.g. an unknown error code).
    Garbled,
}

impl Answer {
    /// True when the request may have executed without this attempt telling
    /// its outcome: a retry must find out.
    pub fn ambiguous(&self) -> bool {
        match *self {
            Answer::Result(_) | Answer::Auction(_) => false,
            Answer::Error(code) => !not_executed(code) && !misuse(code),
            Answer::Timeout | Answer::Lost | Answer::Dropped | Answer::Garbled => true,
        }
    }

    pub fn is_in_doubt(&self) -> bool {
        *self == Answer::Error(ErrorCode::InDoubt as u16)
    }

    pub fn result(&self) -> Option<&Reply> {
        match self {
            Answer::Result(r) => Some(r),
            _ => None,
        }
    }

    /// A RESULT or an AUCTION: the request is done.
    pub fn is_final(&self) -> bool {
        matches!(self, Answer::Result(_) | Answer::Auction(_))
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Result(r) => r.fmt(f),
            Answer::Auction(v) => v.fmt(f),
            Answer::Error(code) => match ErrorCode::from_u16(*code) {
                Some(c) => write!(f, "ERROR {}", c.name()),
                None => write!(f, "ERROR code {code}"),
            },
            Answer::Timeout => f.write_str("timeout"),
            Answer::Lost => f.write_str("connection lost"),
            Answer::Dropped => f.write_str("dropped by client"),
            Answer::Garbled => f.write_str("undecodable reply"),
        }
    }
}

/// ERROR codes that say "not executed, retry later" (PROTOCOL.md §6).
pub fn not_executed(code: u16) -> bool {
    [
        ErrorCode::Busy,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::ShuttingDown,
    ]
    .iter()
    .any(|c| *c as u16 == code)
}

/// ERROR codes a correct client sending well-formed requests, each key with
/// the same fields every time, must never see.
pub fn misuse(code: u16) -> bool {
    [
        ErrorCode::Malformed,
        ErrorCode::UnknownType,
        ErrorCode::FrameTooLarge,
        ErrorCode::Unauthorized,
        ErrorCode::IdempotencyConflict,
        ErrorCode::UnsupportedVersion,
    ]
    .iter()
    .any(|c| *c as u16 == code)
}

/// One answer, when it came, and whether it was the final replay check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Milliseconds since the run started.
    pub at_ms: u64,
    pub answer: Answer,
    /// Sent by the final check (after the clean restart), not by the load.
    pub final_replay: bool,
    /// The harness's generation counter (bumped before every stop and
    /// after every start of gavel-server, and of Redis) when the attempt
    /// was sent and when its answer came: equal values mean one and the
    /// same server process handled it throughout.
    pub gen_sent: u64,
    pub gen_answered: u64,
}

/// A request and all its attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub kind: OpKind,
    /// The client thread that owned it.
    pub client: u32,
    /// When it was created, before its first send (ms since the run
    /// started; 0 = unknown, no real-time check).
    pub sent_ms: u64,
    pub attempts: Vec<Attempt>,
}

impl Op {
    pub fn new(kind: OpKind, client: u32) -> Op {
        Op {
            kind,
            client,
            sent_ms: 0,
            attempts: Vec::new(),
        }
    }

    /// When its first OK arrived during the load (not a final replay).
    pub fn acked_ms(&self) -> Option<u64> {
        self.attempts
            .iter()
            .filter(|a| !a.final_replay)
            .find(|a| a.answer.result().is_some_and(|r| r.status == Status::Ok))
            .map(|a| a.at_ms)
    }

    pub fn push(&mut self, at_ms: u64, answer: Answer) {
        self.push_gen(at_ms, answer, 0, 0);
    }

    pub fn push_gen(&mut self, at_ms: u64, answer: Answer, gen_sent: u64, gen_answered: u64) {
        self.attempts.push(Attempt {
            at_ms,
            answer,
            final_replay: false,
            gen_sent,
            gen_answered,
        });
    }

    /// The first RESULT (the outcome the load learned).
    pub fn first_result(&self) -> Option<&Reply> {
        self.attempts.iter().find_map(|a| a.answer.result())
    }

    /// Whether any attempt was answered OK.
    pub fn accepted(&self) -> bool {
        self.attempts
            .iter()
            .any(|a| a.answer.result().is_some_and(|r| r.status == Status::Ok))
    }

    /// Whether some attempt was answered with a RESULT (or, for
    /// GET_AUCTION, an AUCTION).
    pub fn resolved(&self) -> bool {
        self.attempts.iter().any(|a| a.answer.is_final())
    }

    /// The earliest this attempt can have been sent: a client sends an
    /// attempt after the previous one's answer (or the op's creation).
    pub fn attempt_sent_after(&self, i: usize) -> u64 {
        match i.checked_sub(1) {
            Some(p) => self.attempts[p].at_ms.max(self.sent_ms),
            None => self.sent_ms,
        }
    }

    /// Never answered with a RESULT, yet some attempt may have executed it:
    /// its effect may or may not be in the final state.
    pub fn maybe_executed(&self) -> bool {
        !self.resolved() && self.attempts.iter().any(|a| a.answer.ambiguous())
    }

    pub fn got_in_doubt(&self) -> bool {
        self.attempts.iter().any(|a| a.answer.is_in_doubt())
    }

    /// The request history, one attempt per line, for a violation report.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} (client {}, sent +{}ms)",
            self.kind, self.client, self.sent_ms
        );
        for a in &self.attempts {
            s.push_str(&format!(
                "\n      +{}ms [gen {}→{}] {}{}",
                a.at_ms,
                a.gen_sent,
                a.gen_answered,
                a.answer,
                if a.final_replay {
                    "  [final replay]"
                } else {
                    ""
                }
            ));
        }
        if self.attempts.is_empty() {
            s.push_str("\n      (never sent)");
        }
        s
    }
}
