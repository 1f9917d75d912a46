//! Cross-node mode: a shard whose auctions and sales live in Redis.
//!
//! Each shard round becomes one pipelined round trip of Lua scripts (see
//! `lua/` and the `gavel-redis` crate). The shard keeps only what makes it
//! fast and local: a cache of each auction's known high bid (it only rises;
//! fed by replies and by the update channel) to answer `OUTBID` without
//! asking Redis for a bid that cannot win, and the subscriptions of this
//! node's connections, fed by Redis pub/sub so a subscriber here sees bids
//! accepted on any node. While Redis is unreachable, requests that need it
//! are answered `UNAVAILABLE` (never `OK` without Redis's answer) and the
//! shard reconnects with exponential backoff and jitter.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gavel_protocol::{ErrorCode, Push, ResultPayload, Status};
use gavel_redis::{Op as ROp, OpResult, RedisError, RedisGavel};

use std::sync::Arc;

use crate::command::{Command, ConnRef, Op, Reply};
use crate::metrics::Metrics;
use crate::mutation::Mutation;
use crate::shard::Effects;

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub urls: Vec<String>,
    pub cluster: bool,
    pub timeout: Duration,
    pub idempotency_window: Duration,
    /// Answer OUTBID locally for bids below the known high bid.
    pub outbid_filter: bool,
}

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What one command waits for from Redis.
/// Replies are produced in this order after the round trip, so a request
/// answered locally never overtakes an earlier one on the same auction.
enum Pending {
    Op(Command, ROp),
    /// SUBSCRIBE checks the auction exists and is open.
    Subscribe(Command),
    /// Decided without Redis (the OUTBID filter).
    Local(Command, ResultPayload),
    Unsubscribe(Command, u64),
}

impl Pending {
    fn command(&self) -> &Command {
        match self {
            Pending::Op(c, _)
            | Pending::Subscribe(c)
            | Pending::Local(c, _)
            | Pending::Unsubscribe(c, _) => c,
        }
    }

    /// Whether it has a reply in the Redis pipeline.
    fn in_pipeline(&self) -> bool {
        matches!(self, Pending::Op(..) | Pending::Subscribe(_))
    }
}

pub struct RedisShard {
    cfg: RedisConfig,
    conn: Option<RedisGavel>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// auction -> (high bid, high bidder) as last seen; only rises.
    known_high: HashMap<u64, (u64, u64), ahash::RandomState>,
    subscribers: HashMap<u64, Vec<ConnRef>, ahash::RandomState>,
    conn_subs: HashMap<ConnRef, Vec<u64>, ahash::RandomState>,
    pending: Vec<Pending>,
    ops: Vec<ROp>,
    metrics: Arc<Metrics>,
}

impl RedisShard {
    pub fn new(cfg: RedisConfig, metrics: Arc<Metrics>) -> Self {
        metrics.redis_up.set(1);
        RedisShard {
            cfg,
            conn: None,
            retry_at: None,
            backoff: BACKOFF_MIN,
            known_high: HashMap::default(),
            subscribers: HashMap::default(),
            conn_subs: HashMap::default(),
            pending: Vec::new(),
            ops: Vec::new(),
            metrics,
        }
    }

    pub fn is_up(&self) -> bool {
        self.retry_at.is_none()
    }

    fn connection(&mut self) -> Option<&mut RedisGavel> {
        if self.conn.is_none() {
            if self.retry_at.is_some_and(|t| Instant::now() < t) {
                return None;
            }
            match RedisGavel::connect(
                &self.cfg.urls,
                self.cfg.cluster,
                self.cfg.timeout,
                self.cfg.idempotency_window,
            ) {
                Ok(c) => {
                    if self.retry_at.take().is_some() {
                        tracing::info!("redis is reachable again");
                        self.metrics.redis_up.set(1);
                    }
                    self.backoff = BACKOFF_MIN;
                    self.conn = Some(c);
                }
                Err(e) => {
                    self.fail(&e);
                    return None;
                }
            }
        }
        self.conn.as_mut()
    }

    fn fail(&mut self, e: &RedisError) {
        self.metrics.redis_errors.inc();
        self.metrics.redis_up.set(0);
        if self.retry_at.is_none() {
            tracing::error!(error = %e, "redis failed; answering UNAVAILABLE until it is back");
        }
        self.conn = None;
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        self.retry_at = Some(Instant::now() + self.backoff.mul_f64(jitter));
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Executes one shard round: local answers first, everything else in
    /// one round trip.
    pub fn execute(&mut self, cmds: &[Command], now_ms: u64, fx: &mut Effects) {
        for c in cmds {
            fx.stamp(c);
            match c.op {
                Op::Bid(b) if self.cfg.outbid_filter => match self.known_high.get(&b.auction_id) {
                    // Strictly below: cannot win whatever the increment
                    // (a bid equal to the high bid may be its own retry, which
                    // must replay, so it goes to Redis).
                    Some(&(high, bidder)) if b.amount < high => self.pending.push(Pending::Local(
                        *c,
                        ResultPayload::new(Status::Outbid, high, bidder),
                    )),
                    _ => self.queue(c, ROp::Bid(b)),
                },
                Op::Bid(b) => self.queue(c, ROp::Bid(b)),
                Op::OpenAuction(o) => self.queue(c, ROp::OpenAuction(o)),
                Op::CloseAuction(id) => self.queue(c, ROp::CloseAuction(id)),
                Op::GetAuction(id) => self.queue(c, ROp::GetAuction(id)),
                Op::OpenSale(o) => self.queue(c, ROp::OpenSale(o)),
                Op::Buy(b) => self.queue(c, ROp::Buy(b)),
                Op::GetSale(id) => self.queue(c, ROp::GetSale(id)),
                Op::Subscribe(id) => {
                    self.ops.push(ROp::GetAuction(id));
                    self.pending.push(Pending::Subscribe(*c));
                }
                Op::Unsubscribe(id) => self.pending.push(Pending::Unsubscribe(*c, id)),
            }
        }
        if self.pending.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.ops);
        let pending = std::mem::take(&mut self.pending);
        let mut results = None;
        if !ops.is_empty() {
            let t = Instant::now();
            results = match self.connection() {
                None => None,
                Some(conn) => match conn.execute(&ops, now_ms) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        self.fail(&e);
                        None
                    }
                },
            };
            self.metrics.redis_round_trips.inc();
            self.metrics
                .redis_seconds
                .observe(t.elapsed().as_micros() as u64);
        }
        let mut results = results.map(Vec::into_iter);
        for p in &pending {
            let c = p.command();
            fx.stamp(c);
            match p {
                Pending::Local(c, r) => fx.result(c.conn, c.request_id, *r, false),
                Pending::Unsubscribe(c, id) => {
                    self.unsubscribe(c.conn, *id);
                    fx.result(
                        c.conn,
                        c.request_id,
                        ResultPayload::new(Status::Ok, 0, 0),
                        false,
                    );
                }
                _ => match results.as_mut().and_then(Iterator::next) {
                    Some(r) => self.answer(p, r, now_ms, fx),
                    None => fx.send(
                        c.conn,
                        Reply::Error {
                            request_id: c.request_id,
                            code: ErrorCode::Unavailable,
                        },
                    ),
                },
            }
        }
        debug_assert!(pending.iter().filter(|p| p.in_pipeline()).count() == ops.len());
        self.ops = ops;
        self.ops.clear();
        self.pending = pending;
        self.pending.clear();
    }

    fn queue(&mut self, c: &Command, op: ROp) {
        self.ops.push(op);
        self.pending.push(Pending::Op(*c, op));
    }

    fn learn_high(&mut self, auction_id: u64, high: u64, bidder: u64) {
        let e = self.known_high.entry(auction_id).or_insert((high, bidder));
        if high > e.0 {
            *e = (high, bidder);
        }
    }

    fn answer(&mut self, p: &Pending, r: OpResult, now_ms: u64, fx: &mut Effects) {
        match p {
            Pending::Subscribe(c) => {
                fx.stamp(c);
                let Op::Subscribe(id) = c.op else { return };
                let result = match r {
                    OpResult::Auction(None) => ResultPayload::new(Status::NotFound, 0, 0),
                    OpResult::Auction(Some(a))
                        if a.state == gavel_protocol::AuctionState::Closed =>
                    {
                        ResultPayload::new(Status::Closed, a.high_bid, a.high_bidder)
                    }
                    OpResult::Auction(Some(_)) => {
                        let subs = self.subscribers.entry(id).or_default();
                        if !subs.contains(&c.conn) {
                            subs.push(c.conn);
                            self.conn_subs.entry(c.conn).or_default().push(id);
                        }
                        ResultPayload::new(Status::Ok, 0, 0)
                    }
                    _ => ResultPayload::new(Status::NotFound, 0, 0),
                };
                fx.result(c.conn, c.request_id, result, false);
            }
            Pending::Op(c, op) => {
                fx.stamp(c);
                let (to, rid) = (c.conn, c.request_id);
                match r {
                    OpResult::Conflict => fx.send(
                        to,
                        Reply::Error {
                            request_id: rid,
                            code: ErrorCode::IdempotencyConflict,
                        },
                    ),
                    OpResult::Auction(a) => match a {
                        Some(info) => {
                            self.learn_high(info.auction_id, info.high_bid, info.high_bidder);
                            fx.send(
                                to,
                                Reply::Auction {
                                    request_id: rid,
                                    info,
                                },
                            )
                        }
                        None => {
                            fx.result(to, rid, ResultPayload::new(Status::NotFound, 0, 0), false)
                        }
                    },
                    OpResult::Sale(s) => match s {
                        Some(info) => fx.send(
                            to,
                            Reply::Sale {
                                request_id: rid,
                                info,
                            },
                        ),
                        None => {
                            fx.result(to, rid, ResultPayload::new(Status::NotFound, 0, 0), false)
                        }
                    },
                    OpResult::Outcome {
                        result,
                        replayed,
                        bid_count,
                    } => {
                        self.record(op, &result, replayed, bid_count, now_ms, fx);
                        fx.result(to, rid, result, replayed);
                    }
                }
            }
            // Answered in `execute` without Redis.
            Pending::Local(..) | Pending::Unsubscribe(..) => {}
        }
    }

    /// Learns from an outcome and emits what this node's store should log.
    fn record(
        &mut self,
        op: &ROp,
        r: &ResultPayload,
        replayed: bool,
        count: u64,
        now_ms: u64,
        fx: &mut Effects,
    ) {
        match *op {
            ROp::Bid(b) if r.status != Status::NotFound => {
                self.learn_high(b.auction_id, r.value, r.aux);
                if r.status == Status::Ok && !replayed {
                    fx.mutations.push(Mutation::BidAccepted {
                        auction_id: b.auction_id,
                        bidder_id: b.bidder_id,
                        amount: b.amount,
                        bid_id: b.bid_id,
                        bid_count: count,
                        at_ms: now_ms,
                    });
                }
            }
            ROp::OpenAuction(o) if r.status == Status::Ok && !replayed => {
                fx.mutations.push(Mutation::AuctionOpened {
                    req: o,
                    at_ms: now_ms,
                });
            }
            ROp::CloseAuction(id) if r.status == Status::Ok => {
                fx.mutations.push(Mutation::AuctionClosed {
                    auction_id: id,
                    at_ms: now_ms,
                });
            }
            ROp::OpenSale(o) if r.status == Status::Ok && !replayed => {
                fx.mutations.push(Mutation::SaleOpened {
                    req: o,
                    at_ms: now_ms,
                });
            }
            ROp::Buy(b) if r.status == Status::Ok && !replayed => {
                fx.mutations.push(Mutation::Purchase {
                    sku_id: b.sku_id,
                    buyer_id: b.buyer_id,
                    quantity: b.quantity,
                    order_id: b.order_id,
                    sold_after: count,
                    held_after: r.aux,
                    at_ms: now_ms,
                });
            }
            _ => {}
        }
    }

    /// An update from the channel (any node): fan out to local subscribers.
    pub fn on_update(&mut self, push: Push, fx: &mut Effects) {
        match push {
            Push::BidUpdate {
                auction_id,
                high_bid,
                high_bidder,
                ..
            } => {
                self.learn_high(auction_id, high_bid, high_bidder);
                if let Some(subs) = self.subscribers.get(&auction_id) {
                    for s in subs {
                        fx.send(*s, Reply::Push(push));
                    }
                }
            }
            Push::AuctionClosed { auction_id, .. } => {
                if let Some(subs) = self.subscribers.remove(&auction_id) {
                    for s in subs {
                        fx.send(s, Reply::Push(push));
                        if let Some(v) = self.conn_subs.get_mut(&s) {
                            v.retain(|x| *x != auction_id);
                        }
                    }
                }
            }
        }
    }

    fn unsubscribe(&mut self, conn: ConnRef, id: u64) {
        if let Some(v) = self.subscribers.get_mut(&id) {
            v.retain(|s| *s != conn);
        }
        if let Some(v) = self.conn_subs.get_mut(&conn) {
            v.retain(|x| *x != id);
        }
    }

    pub fn disconnect(&mut self, conn: ConnRef) {
        if let Some(ids) = self.conn_subs.remove(&conn) {
            for id in ids {
                if let Some(v) = self.subscribers.get_mut(&id) {
                    v.retain(|s| *s != conn);
                }
            }
        }
    }
}
