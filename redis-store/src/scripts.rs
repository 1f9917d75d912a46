//! The operations Gavel runs on Redis, the scripts behind them, and how
//! their replies map onto the wire protocol's outcomes.

use gavel_protocol::{
    AuctionInfo, AuctionState, BidRequest, BuyRequest, OpenAuctionRequest, OpenSaleRequest,
    ResultPayload, SaleInfo, Status,
};
use redis::{Cmd, FromRedisValue, Value};

use crate::keys;

macro_rules! script {
    ($file:literal) => {
        concat!(
            include_str!("../../lua/u64.lua"),
            "\n",
            include_str!(concat!("../../lua/", $file))
        )
    };
}

/// Script sources, each with the shared u64 prelude prepended.
pub const OPEN_AUCTION: &str = script!("open_auction.lua");
pub const BID: &str = script!("bid.lua");
pub const CLOSE_AUCTION: &str = script!("close_auction.lua");
pub const OPEN_SALE: &str = script!("open_sale.lua");
pub const BUY: &str = script!("buy.lua");
pub const GET_AUCTION: &str = script!("get_auction.lua");

/// All scripts, in the order of [`ScriptId`].
pub const ALL: [&str; SCRIPTS] = [
    OPEN_AUCTION,
    BID,
    CLOSE_AUCTION,
    OPEN_SALE,
    BUY,
    GET_AUCTION,
];

/// How many scripts there are.
pub const SCRIPTS: usize = 6;

/// The SHA1 of each script in [`ALL`] (what `SCRIPT LOAD` returns and
/// `EVALSHA` takes), computed locally: a client that sends `EVALSHA` itself
/// (client-bench's redis target) needs no round trip to learn them.
pub fn script_shas() -> [String; SCRIPTS] {
    ALL.map(|src| redis::Script::new(src).get_hash().to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptId {
    OpenAuction = 0,
    Bid = 1,
    CloseAuction = 2,
    OpenSale = 3,
    Buy = 4,
    GetAuction = 5,
}

/// One request to execute on Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    OpenAuction(OpenAuctionRequest),
    Bid(BidRequest),
    CloseAuction(u64),
    GetAuction(u64),
    OpenSale(OpenSaleRequest),
    Buy(BuyRequest),
    GetSale(u64),
}

/// What Redis answered for one [`Op`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpResult {
    /// A RESULT. `bid_count` is the auction's count after an accepted bid,
    /// or the sale's units sold after an accepted purchase (0 otherwise).
    Outcome {
        result: ResultPayload,
        replayed: bool,
        bid_count: u64,
        /// A fresh bid outcome's auction end time (0 = none or unknown):
        /// what a node's OUTBID filter needs to stop filtering in time.
        ends_ms: u64,
    },
    /// The idempotency key was used before with other fields.
    Conflict,
    /// Redis refused the op (`-BUSY`: a slow script is running): not
    /// executed, the client should back off.
    Busy,
    Auction(Option<AuctionInfo>),
    Sale(Option<SaleInfo>),
}

/// A message on an auction's [`keys::updates`] channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    Bid {
        auction_id: u64,
        high_bid: u64,
        high_bidder: u64,
        bid_count: u64,
    },
    Closed {
        auction_id: u64,
        winning_bid: u64,
        winner: u64,
    },
}

impl From<Update> for gavel_protocol::Push {
    /// The BID_UPDATE / AUCTION_CLOSED push a node sends its subscribers.
    fn from(u: Update) -> Self {
        match u {
            Update::Bid {
                auction_id,
                high_bid,
                high_bidder,
                bid_count,
            } => gavel_protocol::Push::BidUpdate {
                auction_id,
                high_bid,
                high_bidder,
                bid_count,
            },
            Update::Closed {
                auction_id,
                winning_bid,
                winner,
            } => gavel_protocol::Push::AuctionClosed {
                auction_id,
                winning_bid,
                winner,
            },
        }
    }
}

impl Update {
    pub fn auction_id(&self) -> u64 {
        match *self {
            Update::Bid { auction_id, .. } | Update::Closed { auction_id, .. } => auction_id,
        }
    }

    /// Parses `B|auction|high|bidder|count` or `C|auction|high|bidder`.
    pub fn parse(msg: &[u8]) -> Option<Update> {
        let s = std::str::from_utf8(msg).ok()?;
        let mut it = s.split('|');
        let kind = it.next()?;
        let mut n = || it.next()?.parse::<u64>().ok();
        match kind {
            "B" => Some(Update::Bid {
                auction_id: n()?,
                high_bid: n()?,
                high_bidder: n()?,
                bid_count: n()?,
            }),
            "C" => Some(Update::Closed {
                auction_id: n()?,
                winning_bid: n()?,
                winner: n()?,
            }),
            _ => None,
        }
    }
}

/// The key that decides where `op` runs (all its keys share its slot).
pub fn routing_key(op: &Op) -> String {
    match *op {
        Op::OpenAuction(o) => keys::auction(o.auction_id),
        Op::Bid(b) => keys::auction(b.auction_id),
        Op::CloseAuction(id) | Op::GetAuction(id) => keys::auction(id),
        Op::OpenSale(o) => keys::sale(o.sku_id),
        Op::Buy(b) => keys::sale(b.sku_id),
        Op::GetSale(id) => keys::sale(id),
    }
}

/// The Redis Cluster slot `op` runs in (that of [`routing_key`]).
pub fn slot(op: &Op) -> u16 {
    redis::cluster_routing::get_slot(routing_key(op).as_bytes())
}

/// Builds the command for `op`; `sha` gives each script's SHA1 as loaded.
pub fn command(op: &Op, sha: &[String; SCRIPTS], now_ms: u64, window_ms: u64) -> Cmd {
    let d = keys::dec;
    let evalsha = |id: ScriptId, ks: &[String]| {
        let mut c = redis::cmd("EVALSHA");
        c.arg(&sha[id as usize]).arg(ks.len());
        for k in ks {
            c.arg(k);
        }
        c
    };
    match *op {
        Op::OpenAuction(o) => {
            let mut c = evalsha(ScriptId::OpenAuction, &[keys::auction(o.auction_id)]);
            c.arg(d(o.reserve))
                .arg(d(o.min_increment))
                .arg(d(o.ends_at_ms));
            c
        }
        Op::Bid(b) => {
            let mut c = evalsha(ScriptId::Bid, &[keys::auction(b.auction_id)]);
            c.arg(d(b.bidder_id))
                .arg(d(b.amount))
                .arg(b.bid_id)
                .arg(d(now_ms))
                .arg(window_ms)
                .arg(format!("{}|{}|{}", b.bidder_id, b.amount, now_ms));
            c
        }
        Op::CloseAuction(id) => {
            let mut c = evalsha(ScriptId::CloseAuction, &[keys::auction(id)]);
            c.arg(d(now_ms)).arg(keys::updates(id)).arg(id);
            c
        }
        Op::GetAuction(id) => {
            // A script, not HMGET: reading closes an auction past its end.
            let mut c = evalsha(ScriptId::GetAuction, &[keys::auction(id)]);
            c.arg(d(now_ms)).arg(keys::updates(id)).arg(id);
            c
        }
        Op::OpenSale(o) => {
            let mut c = evalsha(ScriptId::OpenSale, &[keys::sale(o.sku_id)]);
            c.arg(d(o.stock))
                .arg(d(o.per_buyer_limit as u64))
                .arg(d(o.starts_at_ms))
                .arg(d(o.ends_at_ms));
            c
        }
        Op::Buy(b) => {
            let mut c = evalsha(
                ScriptId::Buy,
                &[
                    keys::sale(b.sku_id),
                    keys::held(b.sku_id),
                    keys::order(b.sku_id, b.order_id),
                ],
            );
            c.arg(d(b.buyer_id))
                .arg(d(b.quantity as u64))
                .arg(d(now_ms))
                .arg(window_ms);
            c
        }
        Op::GetSale(id) => {
            let mut c = redis::cmd("HMGET");
            c.arg(keys::sale(id))
                .arg(&["stock", "sold", "limit", "starts", "ends"]);
            c
        }
    }
}

fn num(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        // The scripts' 20-digit strings: parsed in place, no String.
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        other => String::from_redis_value(other).ok()?.parse().ok(),
    }
}

fn opt_num(v: Option<&Value>) -> Option<Option<u64>> {
    match v? {
        Value::Nil => Some(None),
        other => Some(Some(num(other)?)),
    }
}

/// Decodes the reply to `op`. `None` means Redis answered something the
/// scripts never return (a bug or a foreign key collision).
pub fn decode(op: &Op, v: &Value, now_ms: u64) -> Option<OpResult> {
    if let Value::ServerError(e) = v {
        return (e.code() == "BUSY").then_some(OpResult::Busy);
    }
    match op {
        Op::GetAuction(id) => {
            let Value::Array(f) = v else { return None };
            let Some(reserve) = opt_num(f.first())? else {
                return Some(OpResult::Auction(None));
            };
            let ends = opt_num(f.get(2))??;
            let closed = opt_num(f.get(6))?? == 1 || (ends != 0 && now_ms >= ends);
            Some(OpResult::Auction(Some(AuctionInfo {
                auction_id: *id,
                state: if closed {
                    AuctionState::Closed
                } else {
                    AuctionState::Open
                },
                high_bid: opt_num(f.get(3))??,
                high_bidder: opt_num(f.get(4))??,
                bid_count: opt_num(f.get(5))??,
                reserve,
                min_increment: opt_num(f.get(1))??,
                ends_at_ms: ends,
            })))
        }
        Op::GetSale(id) => {
            let Value::Array(f) = v else { return None };
            let Some(stock) = opt_num(f.first())? else {
                return Some(OpResult::Sale(None));
            };
            let starts = opt_num(f.get(3))??;
            let ends = opt_num(f.get(4))??;
            let state = if now_ms < starts {
                AuctionState::NotStarted
            } else if ends != 0 && now_ms >= ends {
                AuctionState::Closed
            } else {
                AuctionState::Open
            };
            Some(OpResult::Sale(Some(SaleInfo {
                sku_id: *id,
                state,
                stock,
                sold: opt_num(f.get(1))??,
                per_buyer_limit: opt_num(f.get(2))?? as u32,
                starts_at_ms: starts,
                ends_at_ms: ends,
            })))
        }
        _ => {
            let Value::Array(f) = v else { return None };
            let code = match f.first()? {
                Value::Int(i) => *i,
                _ => return None,
            };
            if code == -1 {
                return Some(OpResult::Conflict);
            }
            let status = Status::from_u8(u8::try_from(code).ok()?)?;
            let value = num(f.get(1)?)?;
            let aux = num(f.get(2)?)?;
            let replayed = num(f.get(3)?)? == 1;
            // bid.lua: [ends[, bid_count]]; buy.lua: [units sold].
            let (bid_count, ends_ms) = match op {
                Op::Bid(_) => (f.get(5), f.get(4)),
                _ => (f.get(4), None),
            };
            let bid_count = bid_count.and_then(num).unwrap_or(0);
            let ends_ms = ends_ms.and_then(num).unwrap_or(0);
            Some(OpResult::Outcome {
                result: ResultPayload::new(status, value, aux),
                replayed,
                bid_count,
                ends_ms,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_parse() {
        assert_eq!(
            Update::parse(b"B|42|00000000000000001500|00000000000000000007|00000000000000000003"),
            Some(Update::Bid {
                auction_id: 42,
                high_bid: 1500,
                high_bidder: 7,
                bid_count: 3
            })
        );
        assert_eq!(
            Update::parse(b"C|42|18446744073709551615|00000000000000000007"),
            Some(Update::Closed {
                auction_id: 42,
                winning_bid: u64::MAX,
                winner: 7
            })
        );
        assert_eq!(
            gavel_protocol::Push::from(Update::parse(b"C|42|5|7").unwrap()),
            gavel_protocol::Push::AuctionClosed {
                auction_id: 42,
                winning_bid: 5,
                winner: 7
            }
        );
        assert_eq!(Update::parse(b"X|1|2"), None);
        assert_eq!(Update::parse(b"B|1|2"), None);
    }

    #[test]
    fn scripts_carry_the_prelude() {
        for s in ALL {
            assert!(s.contains("local function add(a, b)"));
        }
    }

    #[test]
    fn bid_publishes_on_the_updates_channel() {
        // bid.lua names the channel itself (one argument less per bid): the
        // key, gavel:{a:ID}, and the suffix of keys::updates.
        let suffix = keys::updates(1).replace(&keys::auction(1), "");
        let call = format!("redis.call('SPUBLISH', k .. '{suffix}',");
        assert_eq!(BID.matches(&call).count(), 2, "{call} in bid.lua");
        assert!(!BID.contains("'PUBLISH'"));
    }
}
