//! Cross-node mode: a shard whose auctions and sales live in Redis.
//!
//! Each shard round becomes one pipelined round trip of Lua scripts (see
//! `lua/` and the `gavel-redis` crate). The shard keeps only what makes it
//! fast and local: what it knows of each auction (high bid, end, closed; fed
//! by replies and by the update channel) to answer `OUTBID` without asking
//! Redis for a bid that cannot win (see [`KnownAuction`]), and the
//! subscriptions of this node's connections, fed by Redis pub/sub so a
//! subscriber here sees bids accepted on any node. While Redis is unreachable, requests that need it
//! are answered `UNAVAILABLE` (never `OK` without Redis's answer) and the
//! shard reconnects with exponential backoff and jitter.

use std::collections::{HashMap, VecDeque};

use crossbeam_channel::{Receiver, Sender};
use redis::Value;
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
    /// Whether this node's update listener is subscribed to Redis.
    pub updates_live: Arc<std::sync::atomic::AtomicBool>,
}

/// Closed auctions are forgotten this long after their closing was learned
/// (a bid held back behind another is answered within --redis-timeout; a
/// SUBSCRIBE racing the closing, within a round trip).
const FORGET_CLOSED_AFTER_MS: u64 = 60_000;
/// How often the sweep looks for closed auctions to forget.
const PRUNE_EVERY_MS: u64 = 10_000;

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
    /// A bid below one this shard already sent for the same auction: it
    /// loses whatever that one's outcome, so it is answered, without Redis,
    /// once the earlier bid's reply is in (see [`KnownAuction`]).
    Dominated(Command, gavel_protocol::BidRequest),
    Unsubscribe(Command, u64),
    /// Refused without Redis: ERROR UNAVAILABLE (a SUBSCRIBE while this
    /// node's update listener is not subscribed, so no update would reach it).
    Refused(Command),
    /// The sweep's read of an auction this node's connections watch, past
    /// its end: get_auction.lua closes it and publishes the closing. Nobody
    /// waits for its reply.
    Touch(u64, u64),
}

impl Pending {
    fn command(&self) -> Option<&Command> {
        match self {
            Pending::Op(c, _)
            | Pending::Subscribe(c)
            | Pending::Local(c, _)
            | Pending::Dominated(c, _)
            | Pending::Refused(c)
            | Pending::Unsubscribe(c, _) => Some(c),
            Pending::Touch(..) => None,
        }
    }

    /// Whether it has a reply in the Redis pipeline.
    fn in_pipeline(&self) -> bool {
        matches!(
            self,
            Pending::Op(..) | Pending::Subscribe(_) | Pending::Touch(..)
        )
    }
}

/// What a shard knows of one auction, for the OUTBID filter.
///
/// A bid `b` cannot win when `b < high` (ties lose and the high bid only
/// rises), or when `b < a` for a bid `a` on the same auction that Redis
/// answered `OK` or `OUTBID`: after `a` the high bid is `a` (accepted) or at
/// least `a - increment + 1` (outbid), so winning needs at least `a + 1`. The
/// second rule lets a shard turn away a hot auction's herd of bids built on
/// the same stale price while the first of them is still in flight. The
/// filter stays off an auction that is closed or past its end (Redis answers
/// `CLOSED` there) and one never seen with a high bid (a bid there may be
/// below the reserve).
#[derive(Debug, Clone, Copy, Default)]
struct KnownAuction {
    high: u64,
    bidder: u64,
    /// 0 = no end (or not known yet).
    ends_ms: u64,
    closed: bool,
    /// When this shard learned it was closed (for pruning).
    closed_at_ms: u64,
    /// Highest bid this shard sent to Redis for it (a hint: reset to
    /// `settled_max` when a bid it dominated finds nothing settled above).
    sent_max: u64,
    /// Highest bid Redis answered `OK` or `OUTBID`.
    settled_max: u64,
}

impl KnownAuction {
    /// High bids only rise.
    fn raise(&mut self, high: u64, bidder: u64) {
        if high > self.high {
            (self.high, self.bidder) = (high, bidder);
        }
    }

    fn filterable(&self, now_ms: u64) -> bool {
        !self.closed && self.high > 0 && (self.ends_ms == 0 || now_ms < self.ends_ms)
    }
}

pub struct RedisShard {
    cfg: RedisConfig,
    conn: Option<RedisGavel>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// What the OUTBID filter knows of each auction, and recent closings.
    known: HashMap<u64, KnownAuction, ahash::RandomState>,
    /// The latest clock a round or sweep ran with; next prune of `known`.
    now_ms: u64,
    next_prune_ms: u64,
    subscribers: HashMap<u64, Vec<ConnRef>, ahash::RandomState>,
    /// End times of the watched auctions that have one: the sweep touches
    /// them once they are past it, so their subscribers get AUCTION_CLOSED
    /// even if no bid arrives to close them.
    watched_ends: HashMap<u64, u64, ahash::RandomState>,
    conn_subs: HashMap<ConnRef, Vec<u64>, ahash::RandomState>,
    pending: Vec<Pending>,
    ops: Vec<ROp>,
    metrics: Arc<Metrics>,
    /// Pipelined single-node mode: the socket (write side), the channel its
    /// reader thread answers on, rounds in flight, and an epoch that tells
    /// replies of an abandoned connection apart.
    pipe: Option<std::net::TcpStream>,
    replies: Option<(Sender<RedisReply>, Receiver<RedisReply>)>,
    in_flight: VecDeque<InFlight>,
    epoch: u64,
    shas: [String; gavel_redis::scripts::SCRIPTS],
    out: Vec<u8>,
}

/// The replies one read of a pipelined connection brought (in order), tagged
/// with the connection's epoch; an error ends the connection.
pub type RedisReply = (u64, Result<Vec<Value>, String>);

/// Most rounds one shard keeps in flight before it waits for replies.
pub const MAX_IN_FLIGHT: usize = 8;

struct InFlight {
    pending: Vec<Pending>,
    ops: Vec<ROp>,
    values: Vec<Value>,
    sent: Instant,
    now_ms: u64,
}

impl RedisShard {
    pub fn new(cfg: RedisConfig, metrics: Arc<Metrics>) -> Self {
        let cfg_cluster = cfg.cluster;
        let first_url = cfg.urls.first().cloned().unwrap_or_default();
        metrics.redis_up.set(1);
        RedisShard {
            cfg,
            conn: None,
            retry_at: None,
            backoff: BACKOFF_MIN,
            known: HashMap::default(),
            now_ms: 0,
            next_prune_ms: 0,
            subscribers: HashMap::default(),
            watched_ends: HashMap::default(),
            conn_subs: HashMap::default(),
            pending: Vec::new(),
            ops: Vec::new(),
            metrics,
            pipe: None,
            // A plain `redis://host:port` gets the pipelined connection; one
            // with a password or database index keeps the synchronous client,
            // which performs the handshake.
            replies: (!cfg_cluster && plain_addr(&first_url).is_some())
                .then(crossbeam_channel::unbounded),
            in_flight: VecDeque::new(),
            epoch: 0,
            shas: gavel_redis::scripts::script_shas(),
            out: Vec::new(),
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

    /// Executes one shard round: what Redis must decide goes in one pipeline
    /// (in flight or synchronous); every request is answered in order.
    pub fn execute(&mut self, cmds: &[Command], now_ms: u64, fx: &mut Effects) {
        self.now_ms = now_ms;
        for c in cmds {
            match c.op {
                Op::Bid(b) if self.cfg.outbid_filter => {
                    // Strictly below: a bid equal to the high bid (or to a
                    // bid in flight) may be that bid's own retry, which must
                    // replay, so it goes to Redis.
                    match self.known.get_mut(&b.auction_id) {
                        Some(k) if k.filterable(now_ms) && b.amount < k.high => {
                            let r = ResultPayload::new(Status::Outbid, k.high, k.bidder);
                            self.pending.push(Pending::Local(*c, r));
                        }
                        Some(k) if k.filterable(now_ms) && b.amount < k.sent_max => {
                            self.pending.push(Pending::Dominated(*c, b));
                        }
                        Some(k) => {
                            k.sent_max = k.sent_max.max(b.amount);
                            self.queue(c, ROp::Bid(b));
                        }
                        None => self.queue(c, ROp::Bid(b)),
                    }
                }
                Op::Bid(b) => self.queue(c, ROp::Bid(b)),
                Op::OpenAuction(o) => self.queue(c, ROp::OpenAuction(o)),
                Op::CloseAuction(id) => self.queue(c, ROp::CloseAuction(id)),
                Op::GetAuction(id) => self.queue(c, ROp::GetAuction(id)),
                Op::OpenSale(o) => self.queue(c, ROp::OpenSale(o)),
                Op::Buy(b) => self.queue(c, ROp::Buy(b)),
                Op::GetSale(id) => self.queue(c, ROp::GetSale(id)),
                Op::Subscribe(_)
                    if !self
                        .cfg
                        .updates_live
                        .load(std::sync::atomic::Ordering::Acquire) =>
                {
                    self.pending.push(Pending::Refused(*c))
                }
                Op::Subscribe(id) => {
                    self.ops.push(ROp::GetAuction(id));
                    self.pending.push(Pending::Subscribe(*c));
                }
                Op::Unsubscribe(id) => self.pending.push(Pending::Unsubscribe(*c, id)),
            }
        }
        self.dispatch(now_ms, fx);
    }

    /// Touches the watched auctions past their end (see [`Pending::Touch`]).
    pub fn sweep(&mut self, now_ms: u64, fx: &mut Effects) {
        self.now_ms = now_ms;
        if now_ms >= self.next_prune_ms {
            self.next_prune_ms = now_ms + PRUNE_EVERY_MS;
            self.known.retain(|_, k| {
                !k.closed || now_ms.saturating_sub(k.closed_at_ms) < FORGET_CLOSED_AFTER_MS
            });
        }
        if self.watched_ends.values().all(|&ends| ends > now_ms) {
            return;
        }
        let due: Vec<(u64, u64)> = self
            .watched_ends
            .iter()
            .filter(|&(_, &ends)| ends <= now_ms)
            .map(|(&id, &ends)| (id, ends))
            .collect();
        for (id, ends) in due {
            // Back in the map if the touch does not find it closed.
            self.watched_ends.remove(&id);
            self.ops.push(ROp::GetAuction(id));
            self.pending.push(Pending::Touch(id, ends));
        }
        self.dispatch(now_ms, fx);
    }

    /// Sends the round queued in `pending`/`ops` (pipelined or synchronous).
    fn dispatch(&mut self, now_ms: u64, fx: &mut Effects) {
        if self.pending.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.ops);
        let pending = std::mem::take(&mut self.pending);
        if self.pipelined() {
            self.send_round(ops, pending, now_ms, fx);
            return;
        }
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
        self.finish_round(&pending, results, now_ms, fx);
        self.ops = ops;
        self.ops.clear();
        self.pending = pending;
        self.pending.clear();
    }

    /// Answers every request of a round, in order; `results` are the
    /// pipeline's, `None` when Redis could not be asked.
    fn finish_round(
        &mut self,
        pending: &[Pending],
        results: Option<Vec<OpResult>>,
        now_ms: u64,
        fx: &mut Effects,
    ) {
        let mut results = results.map(Vec::into_iter);
        for p in pending {
            let r = if p.in_pipeline() {
                results.as_mut().and_then(Iterator::next)
            } else {
                None
            };
            self.answer_one(p, r, now_ms, fx);
        }
    }

    /// Answers one request: locally decided ones as decided, the others with
    /// Redis's result, or UNAVAILABLE when there is none (Redis unreachable,
    /// or it refused the op).
    fn answer_one(&mut self, p: &Pending, r: Option<OpResult>, now_ms: u64, fx: &mut Effects) {
        let Some(c) = p.command() else {
            if let Pending::Touch(id, ends) = p {
                self.touched(*id, *ends, r, fx);
            }
            return;
        };
        fx.stamp(c);
        match (p, r) {
            (Pending::Local(c, r), _) => fx.result(c.conn, c.request_id, *r, false),
            (Pending::Refused(c), _) => refuse(fx, c, ErrorCode::Unavailable),
            (Pending::Dominated(c, b), _) => match self.known.get_mut(&b.auction_id) {
                // Closed for good meanwhile (a reply or the update channel).
                Some(k) if k.closed => fx.result(
                    c.conn,
                    c.request_id,
                    ResultPayload::new(Status::Closed, k.high, k.bidder),
                    false,
                ),
                Some(k) if k.settled_max > b.amount || k.high > b.amount => fx.result(
                    c.conn,
                    c.request_id,
                    ResultPayload::new(Status::Outbid, k.high, k.bidder),
                    false,
                ),
                // The bid it was held behind was not executed (Redis failed
                // or was busy, or its key conflicted), and nothing else
                // proves this one loses: it was not executed either.
                k => {
                    if let Some(k) = k {
                        k.sent_max = k.settled_max;
                    }
                    refuse(fx, c, ErrorCode::Unavailable)
                }
            },
            (Pending::Unsubscribe(c, id), _) => {
                self.unsubscribe(c.conn, *id);
                fx.result(
                    c.conn,
                    c.request_id,
                    ResultPayload::new(Status::Ok, 0, 0),
                    false,
                );
            }
            (_, Some(OpResult::Busy)) => refuse(fx, c, ErrorCode::Busy),
            (_, Some(r)) => self.answer(p, r, now_ms, fx),
            (_, None) => refuse(fx, c, ErrorCode::Unavailable),
        }
    }

    /// Single-node mode keeps several rounds in flight on one connection: a
    /// reader thread feeds replies back, so Redis never idles while this
    /// shard turns a round's replies around. (A cluster spreads a round over
    /// several masters and stays one synchronous round trip at a time.)
    fn pipelined(&self) -> bool {
        !self.cfg.cluster && self.replies.is_some()
    }

    /// The replies of in-flight rounds, for the shard loop to wait on.
    pub fn reply_receiver(&self) -> Option<Receiver<RedisReply>> {
        self.replies.as_ref().map(|(_, rx)| rx.clone())
    }

    /// Rounds in flight; the shard stops taking commands at [`MAX_IN_FLIGHT`].
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn send_round(&mut self, ops: Vec<ROp>, pending: Vec<Pending>, now_ms: u64, fx: &mut Effects) {
        if ops.is_empty() {
            if self.in_flight.is_empty() {
                self.finish_round(&pending, None, now_ms, fx);
            } else {
                self.in_flight.push_back(InFlight {
                    pending,
                    ops,
                    values: Vec::new(),
                    sent: Instant::now(),
                    now_ms,
                });
            }
            return;
        }
        if self.pipe.is_none() && !self.open_pipe() {
            // Down: nothing is in flight (a failure answers all of it).
            self.finish_round(&pending, None, now_ms, fx);
            return;
        }
        let shas = &self.shas;
        let window = self.cfg.idempotency_window.as_millis() as u64;
        self.out.clear();
        for op in &ops {
            gavel_redis::resp::encode(op, shas, now_ms, window, &mut self.out);
        }
        let pipe = self.pipe.as_mut().expect("opened above");
        if let Err(e) = std::io::Write::write_all(pipe, &self.out) {
            self.in_flight.push_back(InFlight {
                pending,
                ops,
                values: Vec::new(),
                sent: Instant::now(),
                now_ms,
            });
            self.fail_pipe(&format!("write: {e}"), fx);
            return;
        }
        self.metrics.redis_round_trips.inc();
        self.in_flight.push_back(InFlight {
            pending,
            ops,
            values: Vec::new(),
            sent: Instant::now(),
            now_ms,
        });
    }

    /// Connects the pipelined socket (scripts are loaded through the
    /// synchronous client first) and starts its reader thread.
    fn open_pipe(&mut self) -> bool {
        if self.connection().is_none() {
            return false;
        }
        let addr = plain_addr(&self.cfg.urls[0]).unwrap_or_default();
        let stream = match std::net::ToSocketAddrs::to_socket_addrs(addr.as_str())
            .and_then(|mut a| {
                a.next()
                    .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
            })
            .and_then(|a| std::net::TcpStream::connect_timeout(&a, self.cfg.timeout))
        {
            Ok(s) => s,
            Err(e) => {
                self.fail(&RedisError::Script(format!(
                    "pipelined connect to {addr}: {e}"
                )));
                return false;
            }
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(self.cfg.timeout));
        let reader = match stream.try_clone() {
            Ok(r) => r,
            Err(_) => return false,
        };
        self.epoch += 1;
        let epoch = self.epoch;
        let tx = self.replies.as_ref().expect("pipelined").0.clone();
        let spawned = std::thread::Builder::new()
            .name("gavel-redis-reader".into())
            .spawn(move || read_replies(reader, epoch, &tx));
        if spawned.is_err() {
            return false;
        }
        self.pipe = Some(stream);
        true
    }

    /// Replies from the reader thread, in order.
    pub fn on_replies(&mut self, epoch: u64, vs: Result<Vec<Value>, String>, fx: &mut Effects) {
        if epoch != self.epoch {
            return; // from a connection already given up
        }
        let vs = match vs {
            Ok(vs) => vs,
            Err(e) => return self.fail_pipe(&e, fx),
        };
        // Rounds before `next` are complete; fill from there on.
        let mut next = 0;
        for v in vs {
            while self
                .in_flight
                .get(next)
                .is_some_and(|r| r.values.len() == r.ops.len())
            {
                next += 1;
            }
            let Some(round) = self.in_flight.get_mut(next) else {
                return self.fail_pipe("reply without a request", fx);
            };
            round.values.push(v);
        }
        self.finish_ready(fx);
    }

    /// Answers completed rounds at the front, in order.
    fn finish_ready(&mut self, fx: &mut Effects) {
        while self
            .in_flight
            .front()
            .is_some_and(|r| r.values.len() == r.ops.len())
        {
            let r = self.in_flight.pop_front().expect("checked");
            self.metrics
                .redis_seconds
                .observe(r.sent.elapsed().as_micros() as u64);
            let mut lost_scripts = false;
            let mut cursor = r.ops.iter().zip(&r.values).map(|(op, v)| {
                let res = gavel_redis::scripts::decode(op, v, r.now_ms);
                if res.is_none() {
                    lost_scripts |= matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT");
                }
                res
            });
            for p in &r.pending {
                let res = if p.in_pipeline() {
                    // None: refused by Redis (NOSCRIPT after a flush, a script
                    // error) — UNAVAILABLE, never a guess; the others stand.
                    let res = cursor.next().flatten();
                    if matches!(res, None | Some(OpResult::Busy)) {
                        self.metrics.redis_errors.inc();
                    }
                    res
                } else {
                    None
                };
                self.answer_one(p, res, r.now_ms, fx);
            }
            drop(cursor);
            if lost_scripts {
                // Reload them: reconnect both clients.
                self.conn = None;
                self.fail_pipe("NOSCRIPT", fx);
            }
        }
    }

    /// Gives the pipelined connection up: every round in flight is answered
    /// (UNAVAILABLE for what needed Redis), and the shard backs off.
    fn fail_pipe(&mut self, why: &str, fx: &mut Effects) {
        if let Some(s) = self.pipe.take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        self.epoch += 1;
        self.fail(&RedisError::Script(why.to_string()));
        while let Some(r) = self.in_flight.pop_front() {
            self.finish_round(&r.pending, None, r.now_ms, fx);
        }
    }

    /// Called every loop turn: a round waiting longer than the timeout
    /// fails the connection (never a hang).
    pub fn tick(&mut self, fx: &mut Effects) {
        if self
            .in_flight
            .front()
            .is_some_and(|r| r.values.len() < r.ops.len() && r.sent.elapsed() > self.cfg.timeout)
        {
            self.fail_pipe("no reply within --redis-timeout", fx);
        }
        self.finish_ready(fx);
    }

    fn queue(&mut self, c: &Command, op: ROp) {
        self.ops.push(op);
        self.pending.push(Pending::Op(*c, op));
    }

    /// Raises the known high bid of an auction the filter already tracks.
    fn learn_high(&mut self, auction_id: u64, high: u64, bidder: u64) {
        if let Some(k) = self.known.get_mut(&auction_id) {
            k.raise(high, bidder);
        }
    }

    /// Learns from Redis's outcome of a bid: the auction's high bid, end and
    /// whether it is closed; `OK`/`OUTBID` settle the bid's amount.
    /// A replay carries no end time, so it only updates a tracked auction.
    fn learn_bid(
        &mut self,
        b: &gavel_protocol::BidRequest,
        r: &ResultPayload,
        replayed: bool,
        ends_ms: u64,
    ) {
        if !self.cfg.outbid_filter || r.status == Status::NotFound {
            return;
        }
        let k = match self.known.entry(b.auction_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(_) if replayed => return,
            std::collections::hash_map::Entry::Vacant(e) => e.insert(KnownAuction::default()),
        };
        if !replayed {
            k.ends_ms = ends_ms;
        }
        k.raise(r.value, r.aux);
        match r.status {
            Status::Ok | Status::Outbid => k.settled_max = k.settled_max.max(b.amount),
            Status::Closed => self.learn_closed(b.auction_id),
            _ => {}
        }
    }

    /// The reply to a sweep's touch: closed (its closing reaches the
    /// subscribers through the update channel), or to be touched again (Redis
    /// unreachable, or a node clock behind the end).
    fn touched(&mut self, id: u64, ends: u64, r: Option<OpResult>, fx: &mut Effects) {
        match r {
            // Push the closing here too: this touch may not be the one that
            // closed it (closed elsewhere while this node's listener was
            // reconnecting). No duplicate: whichever comes first takes the
            // subscribers.
            Some(OpResult::Auction(Some(a))) if a.state == gavel_protocol::AuctionState::Closed => {
                self.closed_push(id, a.high_bid, a.high_bidder, fx)
            }
            Some(OpResult::Auction(None)) => {}
            _ if self.subscribers.get(&id).is_some_and(|s| !s.is_empty()) => {
                self.watched_ends.insert(id, ends);
            }
            _ => {}
        }
    }

    /// Remembers that an auction is closed for good (also with the filter
    /// off: a SUBSCRIBE whose read raced the closing checks it).
    fn learn_closed(&mut self, auction_id: u64) {
        self.watched_ends.remove(&auction_id);
        let k = self.known.entry(auction_id).or_default();
        if !k.closed {
            (k.closed, k.closed_at_ms) = (true, self.now_ms);
        }
    }

    /// An auction closed: tell this node's subscribers, once.
    fn closed_push(&mut self, auction_id: u64, winning_bid: u64, winner: u64, fx: &mut Effects) {
        self.learn_closed(auction_id);
        let push = Push::AuctionClosed {
            auction_id,
            winning_bid,
            winner,
        };
        if let Some(subs) = self.subscribers.remove(&auction_id) {
            for s in subs {
                fx.send(s, Reply::Push(push));
                if let Some(v) = self.conn_subs.get_mut(&s) {
                    v.retain(|x| *x != auction_id);
                }
            }
        }
    }

    /// A request's reply from Redis's result (stamped by `answer_one`).
    fn answer(&mut self, p: &Pending, r: OpResult, now_ms: u64, fx: &mut Effects) {
        match p {
            Pending::Subscribe(c) => {
                let Op::Subscribe(id) = c.op else { return };
                let result = match r {
                    OpResult::Auction(None) => ResultPayload::new(Status::NotFound, 0, 0),
                    // Closed, as read or as the update channel said since
                    // (the closing may overtake this read's reply).
                    OpResult::Auction(Some(a))
                        if a.state == gavel_protocol::AuctionState::Closed
                            || self.known.get(&id).is_some_and(|k| k.closed) =>
                    {
                        ResultPayload::new(Status::Closed, a.high_bid, a.high_bidder)
                    }
                    OpResult::Auction(Some(a)) => {
                        if a.ends_at_ms != 0 {
                            self.watched_ends.insert(id, a.ends_at_ms);
                        }
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
                let (to, rid) = (c.conn, c.request_id);
                match r {
                    OpResult::Busy => {} // answered in `answer_one`
                    OpResult::Conflict => refuse(fx, c, ErrorCode::IdempotencyConflict),
                    OpResult::Auction(a) => match a {
                        Some(info) => {
                            if info.state == gavel_protocol::AuctionState::Closed {
                                self.learn_closed(info.auction_id);
                            }
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
                        ends_ms,
                    } => {
                        if let ROp::Bid(b) = op {
                            self.learn_bid(b, &result, replayed, ends_ms);
                        }
                        self.record(op, &result, replayed, bid_count, now_ms, fx);
                        fx.result(to, rid, result, replayed);
                    }
                }
            }
            // Answered in `answer_one`.
            Pending::Local(..)
            | Pending::Refused(_)
            | Pending::Dominated(..)
            | Pending::Unsubscribe(..)
            | Pending::Touch(..) => {}
        }
    }

    /// Emits what this node's store should log of an outcome.
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
            ROp::Bid(b) if r.status == Status::Ok && !replayed => {
                fx.mutations.push(Mutation::BidAccepted {
                    auction_id: b.auction_id,
                    bidder_id: b.bidder_id,
                    amount: b.amount,
                    bid_id: b.bid_id,
                    bid_count: count,
                    at_ms: now_ms,
                });
            }
            ROp::OpenAuction(o) if r.status == Status::Ok && !replayed => {
                fx.mutations.push(Mutation::AuctionOpened {
                    req: o,
                    at_ms: now_ms,
                });
            }
            ROp::CloseAuction(id) if r.status == Status::Ok => {
                self.learn_closed(id);
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
            Push::AuctionClosed {
                auction_id,
                winning_bid,
                winner,
            } => self.closed_push(auction_id, winning_bid, winner, fx),
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

/// The reader thread of a pipelined connection: reads what Redis sent,
/// parses every complete reply in it and hands them to the shard in one
/// message per read (not one per reply: fewer wake-ups). Ends on EOF, on an
/// I/O or parse error (reported), or when the shard is gone.
fn read_replies(mut sock: std::net::TcpStream, epoch: u64, tx: &Sender<RedisReply>) {
    use std::io::Read;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut start, mut end) = (0, 0);
    loop {
        if start == end {
            (start, end) = (0, 0);
        } else if end == buf.len() {
            if start > 0 {
                buf.copy_within(start..end, 0);
                (start, end) = (0, end - start);
            } else {
                let n = buf.len() * 2;
                buf.resize(n, 0); // one reply larger than the buffer
            }
        }
        let n = match sock.read(&mut buf[end..]) {
            Ok(0) => {
                let _ = tx.send((epoch, Err("redis closed the connection".into())));
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.send((epoch, Err(format!("read: {e}"))));
                return;
            }
        };
        end += n;
        let mut batch = Vec::new();
        loop {
            match gavel_redis::resp::parse(&buf[start..end]) {
                Ok(Some((v, used))) => {
                    batch.push(v);
                    start += used;
                }
                Ok(None) => break,
                Err(e) => {
                    if !batch.is_empty() {
                        let _ = tx.send((epoch, Ok(batch)));
                    }
                    let _ = tx.send((epoch, Err(format!("unreadable reply: {e}"))));
                    return;
                }
            }
        }
        if !batch.is_empty() && tx.send((epoch, Ok(batch))).is_err() {
            return;
        }
    }
}

/// Answers `c` with an ERROR: it was not executed.
fn refuse(fx: &mut Effects, c: &Command, code: ErrorCode) {
    fx.send(
        c.conn,
        Reply::Error {
            request_id: c.request_id,
            code,
        },
    );
}

/// `host:port` of a `redis://host[:port][/]` URL without credentials or a
/// database index; `None` otherwise.
fn plain_addr(url: &str) -> Option<String> {
    let rest = url.strip_prefix("redis://")?.trim_end_matches('/');
    if rest.is_empty() || rest.contains(['@', '/', '?']) {
        return None;
    }
    Some(if rest.contains(':') {
        rest.to_string()
    } else {
        format!("{rest}:6379")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_auctions_are_forgotten_after_a_while() {
        let cfg = RedisConfig {
            urls: vec!["redis://127.0.0.1:1".into()],
            cluster: false,
            timeout: Duration::from_secs(1),
            idempotency_window: Duration::from_secs(60),
            outbid_filter: true,
            updates_live: Default::default(),
        };
        let mut shard = RedisShard::new(cfg, Arc::new(Metrics::new(1)));
        let mut fx = Effects::new(1);
        let t0 = 1_000_000;
        shard.sweep(t0, &mut fx);
        shard.learn_closed(5);
        shard.known.entry(6).or_default().high = 10; // open: kept
        shard.sweep(t0 + FORGET_CLOSED_AFTER_MS - 1, &mut fx);
        assert!(shard.known.get(&5).is_some_and(|k| k.closed), "too early");
        shard.sweep(t0 + FORGET_CLOSED_AFTER_MS + PRUNE_EVERY_MS, &mut fx);
        assert!(!shard.known.contains_key(&5), "forgotten");
        assert!(shard.known.contains_key(&6));
    }

    #[test]
    fn plain_urls_only() {
        assert_eq!(
            plain_addr("redis://127.0.0.1:7000"),
            Some("127.0.0.1:7000".into())
        );
        assert_eq!(plain_addr("redis://cache/"), Some("cache:6379".into()));
        assert_eq!(plain_addr("redis://:pw@h:1"), None);
        assert_eq!(plain_addr("redis://h:1/2"), None);
        assert_eq!(plain_addr("rediss://h:1"), None);
    }
}
