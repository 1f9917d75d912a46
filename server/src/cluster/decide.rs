//! The Redis engine's decisions, with no socket: which commands go to Redis
//! and which are answered here (the OUTBID filter), and how each of Redis's
//! results becomes a reply, a mutation for this node's log and knowledge of
//! the auction. The I/O side (`engine`) sends the planned ops and feeds the
//! results back in order; unit tests feed results by hand.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use gavel_protocol::{AuctionState, BidRequest, ErrorCode, Push, ResultPayload, Status};
use gavel_redis::{Op as ROp, OpResult};

use crate::engine::command::{Command, ConnRef, Op, Reply};
use crate::engine::effects::Effects;
use crate::engine::limits::Cap;
use crate::engine::mutation::Mutation;
use crate::engine::subscriptions::{Added, Subscriptions};

use super::updates::{Ctl, News};

/// Closed auctions are forgotten this long after their closing was learned
/// (a bid held back behind another is answered within --redis-timeout; a
/// SUBSCRIBE racing the closing, within a round trip).
pub const FORGET_CLOSED_AFTER_MS: u64 = 60_000;
/// How often the sweep looks for closed auctions to forget.
pub const PRUNE_EVERY_MS: u64 = 10_000;

const NONE: ResultPayload = ResultPayload::new(Status::NotFound, 0, 0);
const OK: ResultPayload = ResultPayload::new(Status::Ok, 0, 0);

/// What one command waits for from Redis.
/// Replies are produced in this order after the round trip, so a request
/// answered locally never overtakes an earlier one on the same auction.
#[derive(Debug, Clone, Copy)]
pub enum Pending {
    Op(Command, ROp),
    /// SUBSCRIBE checks the auction exists and is open.
    Subscribe(Command),
    /// Decided without Redis (the OUTBID filter).
    Local(Command, ResultPayload),
    /// A bid below one this shard already sent for the same auction: it
    /// loses whatever that one's outcome, so it is answered, without Redis,
    /// once the earlier bid's reply is in (see [`KnownAuction`]).
    Dominated(Command, BidRequest),
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
    /// Whether it has a reply in the Redis pipeline.
    pub fn in_pipeline(&self) -> bool {
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
pub struct KnownAuction {
    pub high: u64,
    pub bidder: u64,
    /// 0 = no end (or not known yet).
    pub ends_ms: u64,
    pub closed: bool,
    /// When this shard learned it was closed (for pruning).
    pub closed_at_ms: u64,
    /// Highest bid this shard sent to Redis for it (a hint: reset to
    /// `settled_max` when a bid it dominated finds nothing settled above).
    pub sent_max: u64,
    /// Highest bid Redis answered `OK` or `OUTBID`.
    pub settled_max: u64,
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

/// What became of a round's ops.
#[derive(Debug)]
pub enum RoundOutcome {
    /// Redis answered each op (in order).
    Answered(Vec<OpResult>),
    /// Never sent (Redis unreachable): nothing executed.
    NotSent,
    /// Sent, and the answer never came (connection lost, timeout): each op
    /// may or may not have run.
    Lost,
    /// One outcome per op (in order): on a cluster a round is split over
    /// the masters, and one master failing decides only its own ops.
    PerOp(Vec<OpOutcome>),
}

/// What became of one op of a round (see [`RoundOutcome::PerOp`]).
#[derive(Debug)]
pub enum OpOutcome {
    /// Its master answered.
    Answered(OpResult),
    /// Not executed: never sent (its master was down or reconnecting), or
    /// refused by Redis (`NOSCRIPT`, `MOVED`, a script error).
    NotRun,
    /// Written to its master, whose answer never came (the connection broke
    /// or stayed silent past `--redis-timeout`): it may have run.
    Lost,
}

/// One round's plan: the ops for Redis, and every command's place in line.
#[derive(Debug, Default)]
pub struct Round {
    pub ops: Vec<ROp>,
    pub pending: Vec<Pending>,
    /// Auctions whose update channel a SUBSCRIBE here waits for: the round
    /// is answered once Redis confirmed each (or the wait failed).
    pub waits: Vec<u64>,
}

impl Round {
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn queue(&mut self, c: &Command, op: ROp) {
        self.ops.push(op);
        self.pending.push(Pending::Op(*c, op));
    }
}

/// The decisions of one shard in Redis mode.
pub struct Decisions {
    outbid_filter: bool,
    /// What the OUTBID filter knows of each auction, and recent closings.
    known: HashMap<u64, KnownAuction, ahash::RandomState>,
    subscriptions: Subscriptions,
    /// End times of the watched auctions that have one: the sweep touches
    /// them once they are past it, so their subscribers get AUCTION_CLOSED
    /// even if no bid arrives to close them.
    watched_ends: HashMap<u64, u64, ahash::RandomState>,
    /// The latest clock a round or sweep ran with; next prune of `known`.
    now_ms: u64,
    next_prune_ms: u64,
    /// The update channels this shard asked the listener for: true once
    /// Redis confirmed one (updates of that auction reach this node).
    channels: HashMap<u64, bool, ahash::RandomState>,
    /// SUBSCRIBEs in flight, per auction (its channel stays while any is).
    subscribing: HashMap<u64, u32, ahash::RandomState>,
    /// What to ask of the listener, in order (drained by the I/O side).
    pub wishes: Vec<Ctl>,
}

impl Decisions {
    pub fn new(outbid_filter: bool) -> Self {
        Decisions {
            outbid_filter,
            known: HashMap::default(),
            subscriptions: Subscriptions::default(),
            watched_ends: HashMap::default(),
            now_ms: 0,
            next_prune_ms: 0,
            channels: HashMap::default(),
            subscribing: HashMap::default(),
            wishes: Vec::new(),
        }
    }

    /// Plans one command into `round`. `updates_live`: whether this node's
    /// update listener holds any master's channels (a SUBSCRIBE is refused
    /// otherwise; one on a master whose channels are down is refused once
    /// the listener says so, [`News::Lost`]).
    pub fn plan(&mut self, c: &Command, now_ms: u64, updates_live: bool, round: &mut Round) {
        self.now_ms = now_ms;
        match c.op {
            Op::Bid(b) if self.outbid_filter => self.plan_filtered_bid(c, b, now_ms, round),
            Op::Bid(b) => round.queue(c, ROp::Bid(b)),
            Op::OpenAuction(o) => round.queue(c, ROp::OpenAuction(o)),
            Op::CloseAuction(id) => round.queue(c, ROp::CloseAuction(id)),
            Op::GetAuction(id) => round.queue(c, ROp::GetAuction(id)),
            Op::OpenSale(o) => round.queue(c, ROp::OpenSale(o)),
            Op::Buy(b) => round.queue(c, ROp::Buy(b)),
            Op::GetSale(id) => round.queue(c, ROp::GetSale(id)),
            Op::Subscribe(_) if !updates_live => round.pending.push(Pending::Refused(*c)),
            Op::Subscribe(id) => {
                round.ops.push(ROp::GetAuction(id));
                round.pending.push(Pending::Subscribe(*c));
                *self.subscribing.entry(id).or_default() += 1;
                match self.channels.entry(id) {
                    Entry::Occupied(e) if *e.get() => {}
                    // Asked for already, or lost with its master: asked
                    // again (the listener answers at once while the master
                    // is down, and Redis confirms a channel held again).
                    Entry::Occupied(_) => {
                        self.wishes.push(Ctl::Want(id));
                        round.waits.push(id);
                    }
                    Entry::Vacant(e) => {
                        e.insert(false);
                        self.wishes.push(Ctl::Want(id));
                        round.waits.push(id);
                    }
                }
            }
            Op::Unsubscribe(id) => round.pending.push(Pending::Unsubscribe(*c, id)),
        }
    }

    /// Strictly below: a bid equal to the high bid (or to a bid in flight)
    /// may be that bid's own retry, which must replay, so it goes to Redis.
    fn plan_filtered_bid(&mut self, c: &Command, b: BidRequest, now_ms: u64, round: &mut Round) {
        match self.known.get_mut(&b.auction_id) {
            Some(k) if k.filterable(now_ms) && b.amount < k.high => {
                let r = ResultPayload::new(Status::Outbid, k.high, k.bidder);
                round.pending.push(Pending::Local(*c, r));
            }
            Some(k) if k.filterable(now_ms) && b.amount < k.sent_max => {
                round.pending.push(Pending::Dominated(*c, b));
            }
            Some(k) => {
                k.sent_max = k.sent_max.max(b.amount);
                round.queue(c, ROp::Bid(b));
            }
            None => round.queue(c, ROp::Bid(b)),
        }
    }

    /// Forgets old closings, and plans a touch of each watched auction past
    /// its end (see [`Pending::Touch`]).
    pub fn plan_sweep(&mut self, now_ms: u64, round: &mut Round) {
        self.now_ms = now_ms;
        if now_ms >= self.next_prune_ms {
            self.next_prune_ms = now_ms + PRUNE_EVERY_MS;
            self.known.retain(|_, k| {
                !k.closed || now_ms.saturating_sub(k.closed_at_ms) < FORGET_CLOSED_AFTER_MS
            });
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
            round.ops.push(ROp::GetAuction(id));
            round.pending.push(Pending::Touch(id, ends));
        }
        // Channels nobody here watches any more (their subscribers'
        // connections closed, or a SUBSCRIBE that asked for one failed).
        let idle: Vec<u64> = self
            .channels
            .keys()
            .copied()
            .filter(|&id| self.channel_idle(id))
            .collect();
        for id in idle {
            self.let_go(id);
        }
    }

    /// News of this shard's channels from the listener. Returns whether it
    /// confirmed a channel a SUBSCRIBE may be waiting for: the I/O side
    /// then reads the auction again ([`Decisions::plan_recheck`]).
    pub fn on_channel(&mut self, news: &News) -> bool {
        match news {
            News::Live(id) => match self.channels.get_mut(id) {
                Some(live) if !*live => {
                    *live = true;
                    true
                }
                _ => false,
            },
            News::Lost(ids) => {
                for id in ids {
                    if let Some(live) = self.channels.get_mut(id) {
                        *live = false;
                    }
                }
                false
            }
        }
    }

    /// A read of an auction whose channel was just confirmed. The
    /// SUBSCRIBE's own read may have run before the channel was subscribed,
    /// so a closing in between reached nobody: this read, sent after the
    /// confirmation, finds it (and pushes it, as a sweep's touch does).
    pub fn plan_recheck(&mut self, id: u64, round: &mut Round) {
        round.ops.push(ROp::GetAuction(id));
        round.pending.push(Pending::Touch(id, 0));
    }

    /// Whether updates of the auction reach this node.
    pub fn channel_live(&self, id: u64) -> bool {
        self.channels.get(&id).copied().unwrap_or(false)
    }

    /// A channel nobody here watches or is subscribing to.
    fn channel_idle(&self, id: u64) -> bool {
        !self.subscriptions.is_watched(id) && !self.subscribing.contains_key(&id)
    }

    /// Lets the auction's channel go if nobody here needs it.
    fn drop_channel_if_idle(&mut self, id: u64) {
        if self.channels.contains_key(&id) && self.channel_idle(id) {
            self.let_go(id);
        }
    }

    fn let_go(&mut self, id: u64) {
        self.channels.remove(&id);
        self.wishes.push(Ctl::Drop(id));
    }

    /// Answers every request of a round, in order.
    pub fn finish_round(
        &mut self,
        pending: &[Pending],
        outcome: RoundOutcome,
        now_ms: u64,
        fx: &mut Effects,
    ) {
        let mut per_op = match outcome {
            RoundOutcome::PerOp(o) => o.into_iter(),
            RoundOutcome::Answered(r) => r
                .into_iter()
                .map(OpOutcome::Answered)
                .collect::<Vec<_>>()
                .into_iter(),
            RoundOutcome::NotSent => Vec::new().into_iter(),
            RoundOutcome::Lost => {
                let sent = pending.iter().filter(|p| p.in_pipeline()).count();
                let lost: Vec<_> = (0..sent).map(|_| OpOutcome::Lost).collect();
                lost.into_iter()
            }
        };
        for p in pending {
            let (r, lost) = match p.in_pipeline().then(|| per_op.next()).flatten() {
                Some(OpOutcome::Answered(r)) => (Some(r), false),
                Some(OpOutcome::Lost) => (None, true),
                Some(OpOutcome::NotRun) | None => (None, false),
            };
            self.answer_one(p, r, lost, now_ms, fx);
        }
    }

    /// Answers one request: locally decided ones as decided, the others with
    /// Redis's result. Without one: IN_DOUBT for a mutating request that was
    /// sent and whose answer was `lost` (it may have run), UNAVAILABLE
    /// otherwise (Redis unreachable before sending, or it refused the op:
    /// not executed).
    pub fn answer_one(
        &mut self,
        p: &Pending,
        r: Option<OpResult>,
        lost: bool,
        now_ms: u64,
        fx: &mut Effects,
    ) {
        if let Pending::Subscribe(c) = p {
            self.answer_subscription(c, r, fx);
            return;
        }
        match (p, r) {
            (Pending::Touch(id, ends), r) => self.touched(*id, *ends, r, fx),
            (Pending::Local(c, r), _) => {
                fx.stamp(c);
                fx.result(c.conn, c.request_id, *r, false)
            }
            (Pending::Refused(c), _) => refuse(fx, c, ErrorCode::Unavailable),
            (Pending::Dominated(c, b), _) => self.answer_dominated(c, b, fx),
            (Pending::Unsubscribe(c, id), _) => {
                let gone = self.subscriptions.remove(*id, c.conn);
                self.drop_channel_if_idle(*id);
                fx.stamp(c);
                fx.subscription_result(c.conn, c.request_id, OK, -(gone as i8));
            }
            (Pending::Op(c, _), Some(OpResult::Busy)) => refuse(fx, c, ErrorCode::Busy),
            (Pending::Op(c, op), Some(r)) => {
                fx.stamp(c);
                self.answer_op(c, op, r, now_ms, fx)
            }
            (Pending::Subscribe(_), _) => unreachable!("answered above"),
            (Pending::Op(c, _), None) if lost && c.op.is_mutating() => {
                refuse(fx, c, ErrorCode::InDoubt)
            }
            (Pending::Op(c, _), None) => refuse(fx, c, ErrorCode::Unavailable),
        }
    }

    /// A SUBSCRIBE: its read's result, once its channel is confirmed or the
    /// wait failed (then UNAVAILABLE: no update would reach the subscriber).
    fn answer_subscription(&mut self, c: &Command, r: Option<OpResult>, fx: &mut Effects) {
        let Op::Subscribe(id) = c.op else {
            unreachable!("Pending::Subscribe holds a SUBSCRIBE")
        };
        if let Entry::Occupied(mut e) = self.subscribing.entry(id) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
        match r {
            Some(OpResult::Busy) => refuse(fx, c, ErrorCode::Busy),
            // Open (or not known closed) with no live channel: refused.
            Some(OpResult::Auction(Some(a)))
                if a.state != AuctionState::Closed
                    && !self.known.get(&id).is_some_and(|k| k.closed)
                    && !self.channel_live(id) =>
            {
                refuse(fx, c, ErrorCode::Unavailable)
            }
            Some(r) => {
                fx.stamp(c);
                self.answer_subscribe(c, r, fx)
            }
            None => refuse(fx, c, ErrorCode::Unavailable),
        }
        self.drop_channel_if_idle(id);
    }

    /// A bid held behind a higher one: it loses unless that one was not
    /// executed and nothing else proves it loses.
    fn answer_dominated(&mut self, c: &Command, b: &BidRequest, fx: &mut Effects) {
        fx.stamp(c);
        match self.known.get_mut(&b.auction_id) {
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
        }
    }

    fn answer_subscribe(&mut self, c: &Command, r: OpResult, fx: &mut Effects) {
        let Op::Subscribe(id) = c.op else {
            unreachable!("Pending::Subscribe holds a SUBSCRIBE")
        };
        let result = match r {
            // Closed, as read or as the update channel said since (the
            // closing may overtake this read's reply).
            OpResult::Auction(Some(a))
                if a.state == AuctionState::Closed
                    || self.known.get(&id).is_some_and(|k| k.closed) =>
            {
                ResultPayload::new(Status::Closed, a.high_bid, a.high_bidder)
            }
            OpResult::Auction(Some(a)) => {
                let added = self.subscriptions.add(id, c.conn);
                if added == Added::Full {
                    return fx.refuse(c, Cap::Subscriptions);
                }
                if a.ends_at_ms != 0 {
                    self.watched_ends.insert(id, a.ends_at_ms);
                }
                if added == Added::New {
                    return fx.subscription_result(c.conn, c.request_id, OK, 1);
                }
                OK
            }
            _ => NONE,
        };
        fx.result(c.conn, c.request_id, result, false);
    }

    /// A request's reply from Redis's result.
    fn answer_op(&mut self, c: &Command, op: &ROp, r: OpResult, now_ms: u64, fx: &mut Effects) {
        let (to, rid) = (c.conn, c.request_id);
        match r {
            OpResult::Busy => unreachable!("answered in answer_one"),
            OpResult::Conflict => refuse(fx, c, ErrorCode::IdempotencyConflict),
            OpResult::Auction(Some(info)) => {
                if info.state == AuctionState::Closed {
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
            OpResult::Sale(Some(info)) => fx.send(
                to,
                Reply::Sale {
                    request_id: rid,
                    info,
                },
            ),
            OpResult::Auction(None) | OpResult::Sale(None) => fx.result(to, rid, NONE, false),
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

    /// Raises the known high bid of an auction the filter already tracks.
    fn learn_high(&mut self, auction_id: u64, high: u64, bidder: u64) {
        if let Some(k) = self.known.get_mut(&auction_id) {
            k.raise(high, bidder);
        }
    }

    /// Learns from Redis's outcome of a bid: the auction's high bid, end and
    /// whether it is closed; `OK`/`OUTBID` settle the bid's amount.
    /// A replay carries no end time, so it only updates a tracked auction.
    fn learn_bid(&mut self, b: &BidRequest, r: &ResultPayload, replayed: bool, ends_ms: u64) {
        if !self.outbid_filter || r.status == Status::NotFound {
            return;
        }
        let k = match self.known.entry(b.auction_id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(_) if replayed => return,
            Entry::Vacant(e) => e.insert(KnownAuction::default()),
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
            Some(OpResult::Auction(Some(a))) if a.state == AuctionState::Closed => {
                fx.unstamp();
                self.closed_push(id, a.high_bid, a.high_bidder, fx)
            }
            Some(OpResult::Auction(None)) => {}
            // A recheck (see plan_recheck), or an end not reached yet.
            _ if ends != 0 && self.subscriptions.is_watched(id) => {
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
        for s in self.subscriptions.take(auction_id) {
            fx.send(s, Reply::Push(push));
        }
        self.drop_channel_if_idle(auction_id);
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
        if r.status != Status::Ok {
            return;
        }
        let m = match *op {
            ROp::CloseAuction(auction_id) => {
                self.learn_closed(auction_id);
                Mutation::AuctionClosed {
                    auction_id,
                    at_ms: now_ms,
                }
            }
            _ if replayed => return,
            ROp::Bid(b) => Mutation::BidAccepted {
                auction_id: b.auction_id,
                bidder_id: b.bidder_id,
                amount: b.amount,
                bid_id: b.bid_id,
                bid_count: count,
                at_ms: now_ms,
            },
            ROp::OpenAuction(req) => Mutation::AuctionOpened { req, at_ms: now_ms },
            ROp::OpenSale(req) => Mutation::SaleOpened { req, at_ms: now_ms },
            ROp::Buy(b) => Mutation::Purchase {
                sku_id: b.sku_id,
                buyer_id: b.buyer_id,
                quantity: b.quantity,
                order_id: b.order_id,
                sold_after: count,
                held_after: r.aux,
                at_ms: now_ms,
            },
            _ => return,
        };
        fx.mutations.push(m);
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
                for s in self.subscriptions.of(auction_id) {
                    fx.send(*s, Reply::Push(push));
                }
            }
            Push::AuctionClosed {
                auction_id,
                winning_bid,
                winner,
            } => self.closed_push(auction_id, winning_bid, winner, fx),
        }
    }

    pub fn disconnect(&mut self, conn: ConnRef) {
        self.subscriptions.disconnect(conn);
    }

    /// Caps the subscriptions this shard holds.
    pub fn set_subscription_cap(&mut self, cap: usize) {
        self.subscriptions.set_cap(cap);
    }

    /// Subscriptions this shard holds, for the gauge.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// What the filter knows of an auction (for tests and metrics).
    pub fn known(&self, auction_id: u64) -> Option<&KnownAuction> {
        self.known.get(&auction_id)
    }
}

/// Answers `c` with an ERROR.
fn refuse(fx: &mut Effects, c: &Command, code: ErrorCode) {
    fx.stamp(c);
    fx.error(c, code);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::command::Outgoing;
    use gavel_protocol::AuctionInfo;

    const C: ConnRef = ConnRef {
        io: 0,
        slot: 1,
        gen: 1,
    };
    const S: ConnRef = ConnRef {
        io: 0,
        slot: 2,
        gen: 1,
    };

    fn cmd(request_id: u32, op: Op) -> Command {
        Command {
            conn: C,
            request_id,
            op,
            t0_us: 0,
            kind: 0,
        }
    }

    fn bid(request_id: u32, amount: u64, bid_id: u64) -> Command {
        cmd(
            request_id,
            Op::Bid(BidRequest {
                auction_id: 7,
                bidder_id: amount,
                amount,
                bid_id,
            }),
        )
    }

    fn outcome(status: Status, value: u64, aux: u64, replayed: bool) -> OpResult {
        OpResult::Outcome {
            result: ResultPayload::new(status, value, aux),
            replayed,
            bid_count: 1,
            ends_ms: 0,
        }
    }

    /// Plans `cmds` as one round, answers its ops with `results` (in order)
    /// and returns the replies.
    fn round(d: &mut Decisions, cmds: &[Command], results: RoundOutcome) -> Vec<Outgoing> {
        let mut r = Round::default();
        for c in cmds {
            d.plan(c, 1_000, true, &mut r);
        }
        if let RoundOutcome::Answered(res) = &results {
            assert_eq!(res.len(), r.ops.len(), "one result per op sent");
        }
        let mut fx = Effects::new(1);
        d.finish_round(&r.pending, results, 1_000, &mut fx);
        fx.replies.remove(0)
    }

    fn answer(o: &Outgoing) -> (u32, Result<ResultPayload, ErrorCode>) {
        match o.reply {
            Reply::Result {
                request_id, result, ..
            } => (request_id, Ok(result)),
            Reply::Error { request_id, code } => (request_id, Err(code)),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn filter_answers_bids_below_the_known_high_without_redis() {
        let mut d = Decisions::new(true);
        let accepted = outcome(Status::Ok, 100, 100, false);
        round(
            &mut d,
            &[bid(1, 100, 1)],
            RoundOutcome::Answered(vec![accepted]),
        );
        let mut r = Round::default();
        d.plan(&bid(2, 99, 2), 1_000, true, &mut r);
        assert!(r.ops.is_empty(), "a losing bid is not sent to Redis");
        let out = round(&mut d, &[bid(2, 99, 2)], RoundOutcome::Answered(vec![]));
        let lost = ResultPayload::new(Status::Outbid, 100, 100);
        assert_eq!(answer(&out[0]), (2, Ok(lost)));
        // Equal to the high bid: may be that bid's own retry, so Redis decides.
        let replay = outcome(Status::Ok, 100, 100, true);
        let out = round(
            &mut d,
            &[bid(3, 100, 1)],
            RoundOutcome::Answered(vec![replay]),
        );
        assert_eq!(answer(&out[0]).0, 3);
    }

    #[test]
    fn without_the_filter_every_bid_goes_to_redis() {
        let mut d = Decisions::new(false);
        round(
            &mut d,
            &[bid(1, 100, 1)],
            RoundOutcome::Answered(vec![outcome(Status::Ok, 100, 100, false)]),
        );
        let mut r = Round::default();
        d.plan(&bid(2, 5, 2), 1_000, true, &mut r);
        assert_eq!(r.ops.len(), 1);
    }

    #[test]
    fn a_dominated_bid_follows_the_fate_of_the_bid_it_waited_for() {
        let mut d = Decisions::new(true);
        round(
            &mut d,
            &[bid(1, 100, 1)],
            RoundOutcome::Answered(vec![outcome(Status::Ok, 100, 100, false)]),
        );
        // 200 goes to Redis; 150 waits behind it in the same round.
        let both = [bid(2, 200, 2), bid(3, 150, 3)];
        let won = outcome(Status::Ok, 200, 200, false);
        let out = round(&mut d, &both, RoundOutcome::Answered(vec![won]));
        assert_eq!(out.len(), 2, "answered in order");
        let lost = ResultPayload::new(Status::Outbid, 200, 200);
        assert_eq!(answer(&out[1]), (3, Ok(lost)));
        // Redis unreachable: the leader is not executed, so neither is the one behind it.
        let both = [bid(4, 300, 4), bid(5, 250, 5)];
        let out = round(&mut d, &both, RoundOutcome::NotSent);
        assert_eq!(answer(&out[0]), (4, Err(ErrorCode::Unavailable)));
        assert_eq!(answer(&out[1]), (5, Err(ErrorCode::Unavailable)));
    }

    #[test]
    fn a_lost_answer_is_in_doubt_for_writes_and_unavailable_for_reads() {
        let mut d = Decisions::new(false);
        let cmds = [bid(1, 100, 1), cmd(2, Op::GetAuction(7))];
        let out = round(&mut d, &cmds, RoundOutcome::Lost);
        assert_eq!(
            answer(&out[0]),
            (1, Err(ErrorCode::InDoubt)),
            "may have run"
        );
        assert_eq!(answer(&out[1]), (2, Err(ErrorCode::Unavailable)));
        let out = round(&mut d, &cmds, RoundOutcome::NotSent);
        assert_eq!(
            answer(&out[0]),
            (1, Err(ErrorCode::Unavailable)),
            "never sent"
        );
    }

    fn bid_on(request_id: u32, auction_id: u64, amount: u64) -> Command {
        cmd(
            request_id,
            Op::Bid(BidRequest {
                auction_id,
                bidder_id: amount,
                amount,
                bid_id: amount,
            }),
        )
    }

    /// A cluster round split over three masters, one of which failed: its
    /// ops that were written are IN_DOUBT if they write (they may have
    /// run) and UNAVAILABLE if they read; its ops never written (the master
    /// was already down) are UNAVAILABLE; the other masters' ops are
    /// answered as usual, and every reply keeps its place in line.
    #[test]
    fn one_failed_master_decides_only_its_own_ops() {
        let mut d = Decisions::new(false);
        let info = AuctionInfo {
            auction_id: 7,
            state: AuctionState::Open,
            high_bid: 100,
            high_bidder: 100,
            bid_count: 1,
            reserve: 0,
            min_increment: 1,
            ends_at_ms: 0,
        };
        let cmds = [
            bid_on(1, 7, 100),           // healthy master: answered
            bid_on(2, 8, 100),           // failed master, written: lost
            cmd(3, Op::GetAuction(8)),   // failed master, written: lost
            bid_on(4, 9, 100),           // master down: never written
            cmd(5, Op::CloseAuction(9)), // master down: never written
            cmd(6, Op::GetAuction(7)),   // healthy master: answered
            cmd(7, Op::Unsubscribe(8)),  // local
        ];
        let outcome = RoundOutcome::PerOp(vec![
            OpOutcome::Answered(outcome(Status::Ok, 100, 100, false)),
            OpOutcome::Lost,
            OpOutcome::Lost,
            OpOutcome::NotRun,
            OpOutcome::NotRun,
            OpOutcome::Answered(OpResult::Auction(Some(info))),
        ]);
        let out = round(&mut d, &cmds, outcome);
        assert_eq!(out.len(), 7, "every request answered");
        let got: Vec<_> = out[..5].iter().map(answer).collect();
        assert_eq!(
            got,
            [
                (1, Ok(ResultPayload::new(Status::Ok, 100, 100))),
                (2, Err(ErrorCode::InDoubt)),
                (3, Err(ErrorCode::Unavailable)),
                (4, Err(ErrorCode::Unavailable)),
                (5, Err(ErrorCode::Unavailable)),
            ]
        );
        assert!(
            matches!(out[5].reply, Reply::Auction { request_id: 6, info: i } if i == info),
            "{:?}",
            out[5]
        );
        assert_eq!(answer(&out[6]), (7, Ok(OK)));
    }

    /// With the filter on, a bid held behind one on a failed master follows
    /// it (not executed: UNAVAILABLE, its own retry decides), while a bid
    /// the filter answers locally, and the healthy masters' bids, stand.
    #[test]
    fn bids_held_behind_a_failed_masters_bid_are_not_executed() {
        let mut d = Decisions::new(true);
        round(
            &mut d,
            &[bid_on(1, 7, 100), bid_on(2, 8, 100)],
            RoundOutcome::Answered(vec![
                outcome(Status::Ok, 100, 100, false),
                outcome(Status::Ok, 100, 100, false),
            ]),
        );
        let cmds = [
            bid_on(3, 8, 300), // failed master: lost
            bid_on(4, 8, 200), // held behind 300
            bid_on(5, 8, 50),  // below the known high: OUTBID here
            bid_on(6, 7, 300), // healthy master
            bid_on(7, 7, 250), // held behind 300 there
        ];
        let outcome = RoundOutcome::PerOp(vec![
            OpOutcome::Lost,
            OpOutcome::Answered(outcome(Status::Ok, 300, 300, false)),
        ]);
        let out = round(&mut d, &cmds, outcome);
        let got: Vec<_> = out.iter().map(answer).collect();
        assert_eq!(
            got,
            [
                (3, Err(ErrorCode::InDoubt)),
                (4, Err(ErrorCode::Unavailable)),
                (5, Ok(ResultPayload::new(Status::Outbid, 100, 100))),
                (6, Ok(ResultPayload::new(Status::Ok, 300, 300))),
                (7, Ok(ResultPayload::new(Status::Outbid, 300, 300))),
            ]
        );
        // The failed master's auction is filtered again from what was
        // settled: the next bid above 100 goes to Redis.
        let mut r = Round::default();
        d.plan(&bid_on(8, 8, 150), 1_000, true, &mut r);
        assert_eq!(r.ops.len(), 1);
    }

    #[test]
    fn accepted_bids_are_logged_once_and_busy_is_refused() {
        let mut d = Decisions::new(false);
        let mut r = Round::default();
        d.plan(&bid(1, 100, 1), 1_000, true, &mut r);
        d.plan(&bid(2, 100, 1), 1_000, true, &mut r);
        d.plan(&bid(3, 120, 3), 1_000, true, &mut r);
        let mut fx = Effects::new(1);
        let results = vec![
            outcome(Status::Ok, 100, 100, false),
            outcome(Status::Ok, 100, 100, true),
            OpResult::Busy,
        ];
        d.finish_round(&r.pending, RoundOutcome::Answered(results), 1_000, &mut fx);
        assert_eq!(fx.mutations.len(), 1, "a replay is not logged again");
        assert_eq!(answer(&fx.replies[0][2]), (3, Err(ErrorCode::Busy)));
    }

    #[test]
    fn subscriptions_need_the_update_channel_and_end_at_the_close() {
        let mut d = Decisions::new(false);
        let sub = Command {
            conn: S,
            ..cmd(1, Op::Subscribe(7))
        };
        let mut r = Round::default();
        d.plan(&sub, 1_000, false, &mut r);
        let mut fx = Effects::new(1);
        d.finish_round(&r.pending, RoundOutcome::Answered(vec![]), 1_000, &mut fx);
        assert_eq!(answer(&fx.replies[0][0]), (1, Err(ErrorCode::Unavailable)));

        let open = AuctionInfo {
            auction_id: 7,
            state: AuctionState::Open,
            high_bid: 0,
            high_bidder: 0,
            bid_count: 0,
            reserve: 0,
            min_increment: 1,
            ends_at_ms: 0,
        };
        // The first SUBSCRIBE asks for the auction's channel; answered
        // before Redis confirmed it, it is UNAVAILABLE (and the channel is
        // let go: nobody watches).
        let mut r = Round::default();
        d.plan(&sub, 1_000, true, &mut r);
        assert_eq!(d.wishes, [Ctl::Want(7)]);
        assert_eq!(r.waits, [7]);
        let mut fx = Effects::new(1);
        let read = OpResult::Auction(Some(open));
        d.finish_round(
            &r.pending,
            RoundOutcome::Answered(vec![read]),
            1_000,
            &mut fx,
        );
        assert_eq!(answer(&fx.replies[0][0]), (1, Err(ErrorCode::Unavailable)));
        assert_eq!(d.wishes, [Ctl::Want(7), Ctl::Drop(7)]);
        d.wishes.clear();

        let mut r = Round::default();
        d.plan(&sub, 1_000, true, &mut r);
        assert!(d.on_channel(&News::Live(7)), "a SUBSCRIBE may wait for it");
        let mut fx = Effects::new(1);
        d.finish_round(
            &r.pending,
            RoundOutcome::Answered(vec![read]),
            1_000,
            &mut fx,
        );
        assert_eq!(answer(&fx.replies[0][0]), (1, Ok(OK)));
        // Subscribed again: the channel is live, nothing to ask or wait for.
        let mut r = Round::default();
        d.plan(&sub, 1_000, true, &mut r);
        assert!(r.waits.is_empty());
        let mut fx = Effects::new(1);
        d.finish_round(
            &r.pending,
            RoundOutcome::Answered(vec![read]),
            1_000,
            &mut fx,
        );
        assert_eq!(d.wishes, [Ctl::Want(7)]);

        let mut fx = Effects::new(1);
        let closed = Push::AuctionClosed {
            auction_id: 7,
            winning_bid: 5,
            winner: 6,
        };
        d.on_update(closed, &mut fx);
        d.on_update(closed, &mut fx);
        assert_eq!(fx.replies[0].len(), 1, "one AUCTION_CLOSED per subscriber");
        assert_eq!(fx.replies[0][0].slot, S.slot);
        assert!(d.known(7).is_some_and(|k| k.closed));
        assert_eq!(d.wishes, [Ctl::Want(7), Ctl::Drop(7)], "closed: let go");
    }

    /// One master's update channels lost: the shard forgets only the
    /// channels named; a SUBSCRIBE on one of them asks the listener again
    /// (which answers at once while that master is down) and is refused
    /// UNAVAILABLE unless the channel is confirmed, while one on a channel
    /// still held is answered as usual.
    #[test]
    fn a_lost_master_refuses_only_its_auctions_subscribes() {
        let mut d = Decisions::new(false);
        let sub = |request_id, id| Command {
            conn: S,
            ..cmd(request_id, Op::Subscribe(id))
        };
        let mut r = Round::default();
        d.plan(&sub(1, 7), 1_000, true, &mut r);
        d.plan(&sub(2, 8), 1_000, true, &mut r);
        assert_eq!(r.waits, [7, 8]);
        assert_eq!(d.wishes, [Ctl::Want(7), Ctl::Want(8)]);
        assert!(d.on_channel(&News::Live(7)));
        assert!(d.on_channel(&News::Live(8)));
        let open = |auction_id| {
            OpResult::Auction(Some(AuctionInfo {
                auction_id,
                state: AuctionState::Open,
                high_bid: 0,
                high_bidder: 0,
                bid_count: 0,
                reserve: 0,
                min_increment: 1,
                ends_at_ms: 0,
            }))
        };
        let mut fx = Effects::new(1);
        let reads = vec![open(7), open(8)];
        d.finish_round(&r.pending, RoundOutcome::Answered(reads), 1_000, &mut fx);
        assert_eq!(answer(&fx.replies[0][0]), (1, Ok(OK)));
        assert_eq!(answer(&fx.replies[0][1]), (2, Ok(OK)));

        assert!(!d.on_channel(&News::Lost(vec![8, 9])), "9: not asked for");
        assert!(d.channel_live(7) && !d.channel_live(8));
        d.wishes.clear();
        let mut r = Round::default();
        d.plan(&sub(3, 8), 1_000, true, &mut r);
        d.plan(&sub(4, 7), 1_000, true, &mut r);
        assert_eq!((r.waits.as_slice(), r.ops.len()), ([8].as_slice(), 2));
        assert_eq!(d.wishes, [Ctl::Want(8)], "asked again, 7 is held");
        // Still down: the listener's answer, then the reads.
        d.on_channel(&News::Lost(vec![8]));
        let mut fx = Effects::new(1);
        let reads = vec![open(8), open(7)];
        d.finish_round(&r.pending, RoundOutcome::Answered(reads), 1_000, &mut fx);
        assert_eq!(answer(&fx.replies[0][0]), (3, Err(ErrorCode::Unavailable)));
        assert_eq!(answer(&fx.replies[0][1]), (4, Ok(OK)));
        // Watched (by request 2's subscription): not let go.
        assert_eq!(d.wishes, [Ctl::Want(8)]);
    }

    #[test]
    fn closed_auctions_are_forgotten_after_a_while() {
        let mut d = Decisions::new(true);
        let t0 = 1_000_000;
        d.plan_sweep(t0, &mut Round::default());
        d.learn_closed(5);
        d.known.entry(6).or_default().high = 10; // open: kept
        d.plan_sweep(t0 + FORGET_CLOSED_AFTER_MS - 1, &mut Round::default());
        assert!(d.known(5).is_some_and(|k| k.closed), "too early");
        d.plan_sweep(
            t0 + FORGET_CLOSED_AFTER_MS + PRUNE_EVERY_MS,
            &mut Round::default(),
        );
        assert!(d.known(5).is_none(), "forgotten");
        assert!(d.known(6).is_some());
    }
}
