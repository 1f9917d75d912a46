//! Shards: one thread owns each shard's auctions, sales, idempotency keys and
//! subscriptions, so the hot path takes no locks.
//!
//! [`ShardState`] is the pure state machine (unit-tested without threads);
//! [`spawn`] runs it on a thread that drains its queue in batches, sends the
//! replies of a batch to each event loop as one message and wakes it once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use gavel_protocol::{ErrorCode, Push, ResultPayload, Status, FLAG_REPLAYED};

use crate::auction::{Auction, BidOutcome};
use crate::batch_writer::{Round, WriterHandle};
use crate::command::{Command, ConnRef, Op, Outgoing, Reply, ShardMsg};
use crate::idempotency::{IdempotencyStore, Key, KeyKind, Seen};
use crate::mutation::Mutation;
use crate::redis_backend::RedisShard;
use crate::sale::Sale;
use crate::store::{AuctionRow, BidRow, OrderRow, SaleRow};

/// Milliseconds since the Unix epoch, server clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct AuctionEntry {
    auction: Auction,
    subscribers: Vec<ConnRef>,
}

/// Output of executing commands: replies per event loop, and mutations.
pub struct Effects {
    pub replies: Vec<Vec<Outgoing>>,
    pub mutations: Vec<Mutation>,
    /// Stamp of the command being executed, copied into its replies.
    cur: (u32, u8),
}

impl Effects {
    pub fn new(io_loops: usize) -> Self {
        Effects {
            replies: (0..io_loops).map(|_| Vec::new()).collect(),
            mutations: Vec::new(),
            cur: (0, 0),
        }
    }

    pub(crate) fn send(&mut self, to: ConnRef, reply: Reply) {
        let (t0_us, kind) = match reply {
            Reply::Push(_) => (0, 0),
            _ => self.cur,
        };
        self.replies[to.io as usize].push(Outgoing {
            slot: to.slot,
            gen: to.gen,
            t0_us,
            kind,
            reply,
        });
    }

    /// Replies sent from now on answer `c` (for latency metrics).
    pub(crate) fn stamp(&mut self, c: &Command) {
        self.cur = (c.t0_us, c.kind);
    }

    pub(crate) fn result(
        &mut self,
        to: ConnRef,
        request_id: u32,
        result: ResultPayload,
        replayed: bool,
    ) {
        let flags = if replayed { FLAG_REPLAYED } else { 0 };
        self.send(
            to,
            Reply::Result {
                request_id,
                flags,
                result,
            },
        );
    }
}

/// All state one shard owns.
pub struct ShardState {
    auctions: HashMap<u64, AuctionEntry, ahash::RandomState>,
    sales: HashMap<u64, Sale, ahash::RandomState>,
    idempotency: IdempotencyStore,
    /// Scheduled ends of open auctions, earliest first.
    deadlines: BinaryHeap<Reverse<(u64, u64)>>,
    /// Auctions each connection subscribed to here, to clean up on disconnect.
    conn_subs: HashMap<ConnRef, Vec<u64>, ahash::RandomState>,
}

const NONE: ResultPayload = ResultPayload::new(Status::NotFound, 0, 0);

impl ShardState {
    pub fn new(idempotency_window_ms: u64, idempotency_max_keys: usize) -> Self {
        ShardState {
            auctions: HashMap::default(),
            sales: HashMap::default(),
            idempotency: IdempotencyStore::new(idempotency_window_ms, idempotency_max_keys),
            deadlines: BinaryHeap::new(),
            conn_subs: HashMap::default(),
        }
    }

    pub fn execute(&mut self, cmd: &Command, now_ms: u64, fx: &mut Effects) {
        fx.cur = (cmd.t0_us, cmd.kind);
        let (to, rid) = (cmd.conn, cmd.request_id);
        match cmd.op {
            Op::OpenAuction(o) => {
                let (status, replayed) = match self.auctions.get(&o.auction_id) {
                    Some(e) => {
                        let a = &e.auction;
                        if (a.reserve, a.min_increment, a.ends_at_ms)
                            == (o.reserve, o.min_increment, o.ends_at_ms)
                        {
                            (Status::Ok, true)
                        } else {
                            (Status::AlreadyExists, false)
                        }
                    }
                    None => {
                        let a =
                            Auction::new(o.auction_id, o.reserve, o.min_increment, o.ends_at_ms);
                        if o.ends_at_ms != 0 {
                            self.deadlines.push(Reverse((o.ends_at_ms, o.auction_id)));
                        }
                        self.auctions.insert(
                            o.auction_id,
                            AuctionEntry {
                                auction: a,
                                subscribers: Vec::new(),
                            },
                        );
                        fx.mutations.push(Mutation::AuctionOpened {
                            req: o,
                            at_ms: now_ms,
                        });
                        (Status::Ok, false)
                    }
                };
                fx.result(to, rid, ResultPayload::new(status, 0, 0), replayed);
            }
            Op::Bid(b) => {
                if !self.auctions.contains_key(&b.auction_id) {
                    return fx.result(to, rid, NONE, false);
                }
                let key = Key {
                    kind: KeyKind::Bid,
                    scope: b.auction_id,
                    key: b.bid_id,
                };
                let fields = (b.bidder_id, b.amount);
                match self.idempotency.check(key, fields) {
                    Seen::Replay(r) => return fx.result(to, rid, r, true),
                    Seen::Conflict => {
                        return fx.send(
                            to,
                            Reply::Error {
                                request_id: rid,
                                code: ErrorCode::IdempotencyConflict,
                            },
                        )
                    }
                    Seen::New => {}
                }
                self.close_if_due(b.auction_id, now_ms, fx);
                let entry = self.auctions.get_mut(&b.auction_id).expect("checked above");
                let a = &mut entry.auction;
                let outcome = a.bid(b.bidder_id, b.amount);
                let result = match outcome {
                    BidOutcome::Accepted => a.result(Status::Ok),
                    BidOutcome::Rejected(s) => a.result(s),
                };
                if outcome == BidOutcome::Accepted {
                    fx.mutations.push(Mutation::BidAccepted {
                        auction_id: a.id,
                        bidder_id: b.bidder_id,
                        amount: b.amount,
                        bid_id: b.bid_id,
                        bid_count: a.bid_count,
                        at_ms: now_ms,
                    });
                    let push = Push::BidUpdate {
                        auction_id: a.id,
                        high_bid: a.high_bid,
                        high_bidder: a.high_bidder,
                        bid_count: a.bid_count,
                    };
                    for s in &entry.subscribers {
                        fx.send(*s, Reply::Push(push));
                    }
                }
                self.idempotency.remember(key, fields, result, now_ms);
                fx.result(to, rid, result, false);
            }
            Op::CloseAuction(id) => {
                self.close_if_due(id, now_ms, fx);
                let result = match self.auctions.get(&id) {
                    None => NONE,
                    Some(e) if e.auction.closed => e.auction.result(Status::Closed),
                    Some(_) => {
                        self.close(id, now_ms, fx);
                        self.auctions[&id].auction.result(Status::Ok)
                    }
                };
                fx.result(to, rid, result, false);
            }
            Op::GetAuction(id) => {
                self.close_if_due(id, now_ms, fx);
                match self.auctions.get(&id) {
                    None => fx.result(to, rid, NONE, false),
                    Some(e) => fx.send(
                        to,
                        Reply::Auction {
                            request_id: rid,
                            info: e.auction.info(),
                        },
                    ),
                }
            }
            Op::Subscribe(id) => {
                self.close_if_due(id, now_ms, fx);
                let result = match self.auctions.get_mut(&id) {
                    None => NONE,
                    Some(e) if e.auction.closed => e.auction.result(Status::Closed),
                    Some(e) => {
                        if !e.subscribers.contains(&to) {
                            e.subscribers.push(to);
                            self.conn_subs.entry(to).or_default().push(id);
                        }
                        ResultPayload::new(Status::Ok, 0, 0)
                    }
                };
                fx.result(to, rid, result, false);
            }
            Op::Unsubscribe(id) => {
                let result = match self.auctions.get_mut(&id) {
                    None => NONE,
                    Some(e) => {
                        e.subscribers.retain(|s| *s != to);
                        if let Some(v) = self.conn_subs.get_mut(&to) {
                            v.retain(|x| *x != id);
                        }
                        ResultPayload::new(Status::Ok, 0, 0)
                    }
                };
                fx.result(to, rid, result, false);
            }
            Op::OpenSale(o) => {
                let (status, replayed) = match self.sales.get(&o.sku_id) {
                    Some(s) => {
                        if (s.stock, s.per_buyer_limit, s.starts_at_ms, s.ends_at_ms)
                            == (o.stock, o.per_buyer_limit, o.starts_at_ms, o.ends_at_ms)
                        {
                            (Status::Ok, true)
                        } else {
                            (Status::AlreadyExists, false)
                        }
                    }
                    None => {
                        self.sales.insert(
                            o.sku_id,
                            Sale::new(
                                o.sku_id,
                                o.stock,
                                o.per_buyer_limit,
                                o.starts_at_ms,
                                o.ends_at_ms,
                            ),
                        );
                        fx.mutations.push(Mutation::SaleOpened {
                            req: o,
                            at_ms: now_ms,
                        });
                        (Status::Ok, false)
                    }
                };
                fx.result(to, rid, ResultPayload::new(status, 0, 0), replayed);
            }
            Op::Buy(b) => {
                let Some(sale) = self.sales.get_mut(&b.sku_id) else {
                    return fx.result(to, rid, NONE, false);
                };
                let key = Key {
                    kind: KeyKind::Order,
                    scope: b.sku_id,
                    key: b.order_id,
                };
                let fields = (b.buyer_id, b.quantity as u64);
                match self.idempotency.check(key, fields) {
                    Seen::Replay(r) => return fx.result(to, rid, r, true),
                    Seen::Conflict => {
                        return fx.send(
                            to,
                            Reply::Error {
                                request_id: rid,
                                code: ErrorCode::IdempotencyConflict,
                            },
                        )
                    }
                    Seen::New => {}
                }
                let result = sale.buy(b.buyer_id, b.quantity, now_ms);
                if result.status == Status::Ok {
                    fx.mutations.push(Mutation::Purchase {
                        sku_id: b.sku_id,
                        buyer_id: b.buyer_id,
                        quantity: b.quantity,
                        order_id: b.order_id,
                        sold_after: sale.sold,
                        held_after: result.aux,
                        at_ms: now_ms,
                    });
                }
                self.idempotency.remember(key, fields, result, now_ms);
                fx.result(to, rid, result, false);
            }
            Op::GetSale(id) => match self.sales.get(&id) {
                None => fx.result(to, rid, NONE, false),
                Some(s) => fx.send(
                    to,
                    Reply::Sale {
                        request_id: rid,
                        info: s.info(now_ms),
                    },
                ),
            },
        }
    }

    fn close_if_due(&mut self, id: u64, now_ms: u64, fx: &mut Effects) {
        if let Some(e) = self.auctions.get(&id) {
            if !e.auction.closed && e.auction.time_is_up(now_ms) {
                self.close(id, now_ms, fx);
            }
        }
    }

    /// Closes an open auction: records it and tells its subscribers.
    fn close(&mut self, id: u64, now_ms: u64, fx: &mut Effects) {
        let Some(e) = self.auctions.get_mut(&id) else {
            return;
        };
        e.auction.closed = true;
        fx.mutations.push(Mutation::AuctionClosed {
            auction_id: id,
            at_ms: now_ms,
        });
        let push = Push::AuctionClosed {
            auction_id: id,
            winning_bid: e.auction.high_bid,
            winner: e.auction.high_bidder,
        };
        for s in e.subscribers.drain(..) {
            fx.send(s, Reply::Push(push));
            if let Some(v) = self.conn_subs.get_mut(&s) {
                v.retain(|x| *x != id);
            }
        }
    }

    /// Closes auctions whose end time has passed and expires old idempotency keys.
    pub fn sweep(&mut self, now_ms: u64, fx: &mut Effects) {
        while let Some(&Reverse((at, id))) = self.deadlines.peek() {
            if at > now_ms {
                break;
            }
            self.deadlines.pop();
            self.close_if_due(id, now_ms, fx);
        }
        self.idempotency.expire(now_ms);
    }

    pub fn disconnect(&mut self, conn: ConnRef) {
        if let Some(ids) = self.conn_subs.remove(&conn) {
            for id in ids {
                if let Some(e) = self.auctions.get_mut(&id) {
                    e.subscribers.retain(|s| *s != conn);
                }
            }
        }
    }

    /// Recovery: an auction as the store has it.
    pub fn restore_auction(&mut self, r: &AuctionRow) {
        let mut a = Auction::new(r.id, r.reserve, r.min_increment, r.ends_at_ms);
        a.high_bid = r.high_bid;
        a.high_bidder = r.high_bidder;
        a.bid_count = r.bid_count;
        a.closed = r.closed;
        if !a.closed && a.ends_at_ms != 0 {
            self.deadlines.push(Reverse((a.ends_at_ms, a.id)));
        }
        self.auctions.insert(
            r.id,
            AuctionEntry {
                auction: a,
                subscribers: Vec::new(),
            },
        );
    }

    pub fn restore_sale(&mut self, r: &SaleRow) {
        let mut s = Sale::new(
            r.id,
            r.stock,
            r.per_buyer_limit,
            r.starts_at_ms,
            r.ends_at_ms,
        );
        s.sold = r.sold;
        self.sales.insert(r.id, s);
    }

    pub fn restore_holding(&mut self, sku_id: u64, buyer_id: u64, held: u64) {
        if let Some(s) = self.sales.get_mut(&sku_id) {
            s.holdings.insert(buyer_id, held);
        }
    }

    /// Recovery: an accepted bid inside the idempotency window, so a retry
    /// after a restart replays `OK` with the values first sent.
    pub fn restore_bid(&mut self, b: &BidRow) {
        let key = Key {
            kind: KeyKind::Bid,
            scope: b.auction_id,
            key: b.bid_id,
        };
        let result = ResultPayload::new(Status::Ok, b.amount, b.bidder_id);
        self.idempotency
            .remember(key, (b.bidder_id, b.amount), result, b.at_ms);
    }

    pub fn restore_order(&mut self, o: &OrderRow) {
        let Some(sale) = self.sales.get(&o.sku_id) else {
            return;
        };
        let key = Key {
            kind: KeyKind::Order,
            scope: o.sku_id,
            key: o.order_id,
        };
        let result = ResultPayload::new(
            Status::Ok,
            sale.stock.saturating_sub(o.sold_after),
            o.held_after,
        );
        self.idempotency
            .remember(key, (o.buyer_id, o.quantity as u64), result, o.at_ms);
    }

    pub fn auction_count(&self) -> usize {
        self.auctions.len()
    }
}

/// Where an event loop's replies go: its channel and the waker of its poll.
#[derive(Clone)]
pub struct LoopHandle {
    pub replies: Sender<Vec<Outgoing>>,
    pub waker: Arc<mio::Waker>,
}

/// The event loops' side of a shard.
pub struct ShardHandle {
    pub tx: Sender<ShardMsg>,
    /// Commands sent and not yet executed; bounds the queue.
    pub queued: Arc<AtomicUsize>,
}

/// Most commands executed before replies are released, so a flood on one
/// shard cannot delay every reply indefinitely.
const MAX_COMMANDS_PER_ROUND: usize = 8192;

/// What a shard works with besides its own state.
pub struct ShardBackends {
    /// Period of the sweep that closes auctions past their end.
    pub sweep_interval: Duration,
    /// The batch writer (persistence); `None` with `--store memory`.
    pub writer: Option<WriterHandle>,
    /// Cross-node mode: auctions and sales live in Redis.
    pub redis: Option<RedisShard>,
}

/// Starts the shard thread. It exits when every sender of `rx` is dropped.
/// With a `writer`, mutations are persisted and (in durable mode) replies are
/// released by the writer after commit; without one, state is memory only.
pub fn spawn(
    index: usize,
    mut state: ShardState,
    rx: Receiver<ShardMsg>,
    queued: Arc<AtomicUsize>,
    loops: Vec<LoopHandle>,
    backends: ShardBackends,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let ShardBackends {
        sweep_interval,
        writer,
        mut redis,
    } = backends;
    std::thread::Builder::new()
        .name(format!("gavel-shard-{index}"))
        .spawn(move || {
            let mut fx = Effects::new(loops.len());
            let mut next_sweep = Instant::now() + sweep_interval;
            // Pipelined Redis mode: replies of rounds in flight arrive here.
            let redis_replies = redis.as_ref().and_then(|r| r.reply_receiver());
            let no_commands = crossbeam_channel::never::<ShardMsg>();
            loop {
                let timeout = next_sweep.saturating_duration_since(Instant::now());
                let first = match (&redis_replies, redis.as_ref()) {
                    (Some(rr), Some(r)) => {
                        // At the in-flight cap, wait for replies only.
                        let cmds = if r.in_flight() >= crate::redis_backend::MAX_IN_FLIGHT {
                            &no_commands
                        } else {
                            &rx
                        };
                        crossbeam_channel::select! {
                            recv(cmds) -> m => match m {
                                Ok(m) => Some(m),
                                Err(_) => break,
                            },
                            recv(rr) -> v => {
                                if let Ok((epoch, vs)) = v {
                                    fx.cur = (0, 0);
                                    redis.as_mut().expect("checked").on_replies(epoch, vs, &mut fx);
                                }
                                None
                            },
                            default(timeout) => None,
                        }
                    }
                    _ => match rx.recv_timeout(timeout) {
                        Ok(m) => Some(m),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    },
                };
                let now = now_ms();
                let mut executed = 0usize;
                let mut msg = first;
                while let Some(m) = msg {
                    match m {
                        ShardMsg::Batch(cmds) if redis.is_some() => {
                            let r = redis.as_mut().expect("checked");
                            let refuse = writer.as_ref().and_then(|w| w.gate.refuse());
                            if refuse.is_none() {
                                r.execute(&cmds, now, &mut fx);
                            } else {
                                let mut allowed = Vec::with_capacity(cmds.len());
                                for c in &cmds {
                                    match refuse.filter(|_| c.op.is_mutating()) {
                                        Some(code) => {
                                            fx.stamp(c);
                                            fx.send(
                                                c.conn,
                                                Reply::Error {
                                                    request_id: c.request_id,
                                                    code,
                                                },
                                            );
                                        }
                                        None => allowed.push(*c),
                                    }
                                }
                                r.execute(&allowed, now, &mut fx);
                            }
                            executed += cmds.len();
                        }
                        ShardMsg::Batch(cmds) => {
                            for c in &cmds {
                                fx.cur = (c.t0_us, c.kind);
                                if let Some(code) = writer
                                    .as_ref()
                                    .filter(|_| c.op.is_mutating())
                                    .and_then(|w| w.gate.refuse())
                                {
                                    fx.send(
                                        c.conn,
                                        Reply::Error {
                                            request_id: c.request_id,
                                            code,
                                        },
                                    );
                                    continue;
                                }
                                state.execute(c, now, &mut fx);
                            }
                            executed += cmds.len();
                        }
                        ShardMsg::Disconnect(c) => match redis.as_mut() {
                            Some(r) => r.disconnect(c),
                            None => state.disconnect(c),
                        },
                        ShardMsg::Remote(pushes) => {
                            fx.cur = (0, 0);
                            if let Some(r) = redis.as_mut() {
                                for push in pushes {
                                    r.on_update(push, &mut fx);
                                }
                            }
                        }
                    }
                    if executed >= MAX_COMMANDS_PER_ROUND {
                        break;
                    }
                    msg = rx.try_recv().ok();
                }
                if let (Some(rr), Some(r)) = (&redis_replies, redis.as_mut()) {
                    while let Ok((epoch, vs)) = rr.try_recv() {
                        r.on_replies(epoch, vs, &mut fx);
                    }
                    r.tick(&mut fx);
                }
                if Instant::now() >= next_sweep {
                    fx.cur = (0, 0);
                    state.sweep(now, &mut fx);
                    if let Some(r) = redis.as_mut() {
                        r.sweep(now, &mut fx);
                    }
                    next_sweep = Instant::now() + sweep_interval;
                }
                if let Some(w) = &writer {
                    let taken = Round {
                        shard: index,
                        mutations: std::mem::take(&mut fx.mutations),
                        replies: if w.gate.durable {
                            fx.replies.iter_mut().map(std::mem::take).collect()
                        } else {
                            Vec::new()
                        },
                    };
                    if let Some(back) = w.submit(taken) {
                        // Nothing to wait for: release as the memory store does.
                        fx.mutations = back.mutations;
                        for (io, r) in back.replies.into_iter().enumerate() {
                            fx.replies[io] = r;
                        }
                    }
                }
                // Memory store (or nothing held): mutations are not persisted, replies go out now.
                fx.mutations.clear();
                for (io, l) in loops.iter().enumerate() {
                    if !fx.replies[io].is_empty() {
                        let batch = std::mem::take(&mut fx.replies[io]);
                        if l.replies.send(batch).is_ok() {
                            let _ = l.waker.wake();
                        }
                    }
                }
                if executed > 0 {
                    queued.fetch_sub(executed, Ordering::AcqRel);
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gavel_protocol::{BidRequest, BuyRequest, OpenAuctionRequest, OpenSaleRequest};

    const C: ConnRef = ConnRef {
        io: 0,
        slot: 1,
        gen: 1,
    };
    const S: ConnRef = ConnRef {
        io: 0,
        slot: 2,
        gen: 2,
    };

    fn run(st: &mut ShardState, op: Op, now: u64) -> (Vec<Outgoing>, Vec<Mutation>) {
        let mut fx = Effects::new(1);
        st.execute(
            &Command {
                conn: C,
                request_id: 9,
                op,
                t0_us: 0,
                kind: 0,
            },
            now,
            &mut fx,
        );
        (fx.replies.remove(0), fx.mutations)
    }

    fn result(out: &[Outgoing]) -> (ResultPayload, u8) {
        match out.last().unwrap().reply {
            Reply::Result { result, flags, .. } => (result, flags),
            r => panic!("{r:?}"),
        }
    }

    fn bid(auction_id: u64, bidder_id: u64, amount: u64, bid_id: u64) -> Op {
        Op::Bid(BidRequest {
            auction_id,
            bidder_id,
            amount,
            bid_id,
        })
    }

    #[test]
    fn bids_replay_and_conflict() {
        let mut st = ShardState::new(1000, 100);
        let open = Op::OpenAuction(OpenAuctionRequest {
            auction_id: 1,
            reserve: 10,
            min_increment: 5,
            ends_at_ms: 0,
        });
        let (out, m) = run(&mut st, open, 0);
        assert_eq!(result(&out), (ResultPayload::new(Status::Ok, 0, 0), 0));
        assert_eq!(m.len(), 1);
        let (out, m) = run(&mut st, open, 0);
        assert_eq!(result(&out).1, FLAG_REPLAYED);
        assert!(m.is_empty());

        let (out, m) = run(&mut st, bid(1, 7, 20, 100), 0);
        assert_eq!(result(&out), (ResultPayload::new(Status::Ok, 20, 7), 0));
        assert_eq!(m.len(), 1);
        let (out, m) = run(&mut st, bid(1, 7, 20, 100), 0);
        assert_eq!(
            result(&out),
            (ResultPayload::new(Status::Ok, 20, 7), FLAG_REPLAYED)
        );
        assert!(m.is_empty());
        let (out, _) = run(&mut st, bid(1, 7, 21, 100), 0);
        assert!(matches!(
            out[0].reply,
            Reply::Error {
                code: ErrorCode::IdempotencyConflict,
                ..
            }
        ));
        let (out, _) = run(&mut st, bid(1, 8, 24, 101), 0);
        assert_eq!(result(&out).0, ResultPayload::new(Status::Outbid, 20, 7));
        let (out, _) = run(&mut st, bid(2, 8, 24, 101), 0);
        assert_eq!(result(&out).0.status, Status::NotFound);
    }

    #[test]
    fn subscribers_get_updates_and_close_by_time() {
        let mut st = ShardState::new(1000, 100);
        run(
            &mut st,
            Op::OpenAuction(OpenAuctionRequest {
                auction_id: 1,
                reserve: 0,
                min_increment: 1,
                ends_at_ms: 100,
            }),
            0,
        );
        let mut fx = Effects::new(1);
        st.execute(
            &Command {
                conn: S,
                request_id: 1,
                op: Op::Subscribe(1),
                t0_us: 0,
                kind: 0,
            },
            0,
            &mut fx,
        );
        let (out, _) = run(&mut st, bid(1, 3, 50, 1), 10);
        assert!(out.iter().any(|o| o.slot == S.slot
            && o.reply
                == Reply::Push(Push::BidUpdate {
                    auction_id: 1,
                    high_bid: 50,
                    high_bidder: 3,
                    bid_count: 1
                })));
        let mut fx = Effects::new(1);
        st.sweep(100, &mut fx);
        assert_eq!(
            fx.replies[0][0].reply,
            Reply::Push(Push::AuctionClosed {
                auction_id: 1,
                winning_bid: 50,
                winner: 3
            })
        );
        assert_eq!(fx.mutations.len(), 1);
        let (out, _) = run(&mut st, bid(1, 4, 60, 2), 101);
        assert_eq!(result(&out).0, ResultPayload::new(Status::Closed, 50, 3));
        let (out, _) = run(&mut st, Op::CloseAuction(1), 101);
        assert_eq!(result(&out).0, ResultPayload::new(Status::Closed, 50, 3));
    }

    #[test]
    fn disconnect_forgets_subscriptions() {
        let mut st = ShardState::new(1000, 100);
        run(
            &mut st,
            Op::OpenAuction(OpenAuctionRequest {
                auction_id: 1,
                reserve: 0,
                min_increment: 1,
                ends_at_ms: 0,
            }),
            0,
        );
        let mut fx = Effects::new(1);
        st.execute(
            &Command {
                conn: S,
                request_id: 1,
                op: Op::Subscribe(1),
                t0_us: 0,
                kind: 0,
            },
            0,
            &mut fx,
        );
        st.disconnect(S);
        let (out, _) = run(&mut st, bid(1, 3, 50, 1), 10);
        assert_eq!(out.len(), 1, "no push to a disconnected subscriber");
    }

    #[test]
    fn sales_and_order_replay() {
        let mut st = ShardState::new(1000, 100);
        run(
            &mut st,
            Op::OpenSale(OpenSaleRequest {
                sku_id: 5,
                stock: 3,
                per_buyer_limit: 2,
                starts_at_ms: 0,
                ends_at_ms: 0,
            }),
            0,
        );
        let buy = |buyer, q, order| {
            Op::Buy(BuyRequest {
                sku_id: 5,
                buyer_id: buyer,
                quantity: q,
                order_id: order,
            })
        };
        let (out, m) = run(&mut st, buy(1, 2, 1), 0);
        assert_eq!(result(&out).0, ResultPayload::new(Status::Ok, 1, 2));
        assert_eq!(m.len(), 1);
        let (out, _) = run(&mut st, buy(2, 2, 2), 0);
        assert_eq!(result(&out).0, ResultPayload::new(Status::SoldOut, 1, 0));
        let (out, m) = run(&mut st, buy(1, 2, 1), 0);
        assert_eq!(
            result(&out),
            (ResultPayload::new(Status::Ok, 1, 2), FLAG_REPLAYED)
        );
        assert!(m.is_empty());
        let (out, _) = run(
            &mut st,
            Op::OpenSale(OpenSaleRequest {
                sku_id: 5,
                stock: 4,
                per_buyer_limit: 2,
                starts_at_ms: 0,
                ends_at_ms: 0,
            }),
            0,
        );
        assert_eq!(result(&out).0.status, Status::AlreadyExists);
    }
}
