//! The local engine: all state one shard owns (auctions, sales, idempotency
//! keys, subscriptions) and the rules that change it.
//!
//! [`ShardState`] is a pure state machine: commands and the time go in,
//! replies and [`Mutation`]s come out through [`Effects`]. No threads,
//! sockets or clock; unit-tested as is. The shard runner drives it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use gavel_protocol::{
    AuctionState, BidRequest, BuyRequest, ErrorCode, OpenAuctionRequest, OpenSaleRequest, Push,
    ResultPayload, Status,
};

use super::auction::{coarse, Auction, BidOutcome, COARSE_MS};
use super::auction_table::AuctionTable;
use super::command::{Command, ConnRef, Op, Reply};
use super::effects::Effects;
use super::idempotency::{key_of, IdempotencyStore, Key, KeyBudget, KeyKind, KeyLookup, Seen};
use super::limits::{Cap, Capacity, Sizes};
use super::mutation::Mutation;
use super::parked::{scope_of, Answer, Parked, Scope, Wanted};
use super::passivated::Passivation;
use super::sale::Sale;
use super::subscriptions::{Added, Subscriptions};

/// All state one shard owns.
pub struct ShardState {
    auctions: AuctionTable,
    sales: HashMap<u64, Sale, ahash::RandomState>,
    idempotency: IdempotencyStore,
    /// Scheduled ends of open auctions, earliest first.
    deadlines: BinaryHeap<Reverse<(u64, u64)>>,
    subscriptions: Subscriptions,
    /// This shard's share of `--max-auctions` / `--max-sales`.
    cap: Capacity,
    /// Commands waiting for a lookup in the store.
    parked: Parked,
    /// With a durable store: closed auctions and finished sales that left
    /// memory.
    passivation: Option<Passivation>,
    /// With passivation: scheduled ends of sales, earliest first (an ended
    /// sale may leave memory).
    sale_ends: BinaryHeap<Reverse<(u64, u64)>>,
    /// Where the next walk for idle open auctions starts (a position in
    /// `auctions`).
    idle_cursor: usize,
    /// Buyer holdings in memory, all sales (`--max-holdings`).
    holdings: usize,
    /// Nothing leaves memory any more: the tables may lack rows (a
    /// quarantined journal record), so what left could not be read back.
    passivation_held: bool,
}

/// Most commands a shard holds while their keys are looked up.
const PARKED_MAX: usize = 65_536;

/// Most auctions one sweep looks at for idle ones (a cache miss each: ~0.1
/// ms; at the default 50 ms sweep, 20k auctions a second).
const IDLE_WALK: usize = 1024;

/// How many commands ahead [`ShardState::execute_batch`] prefetches (4,
/// 8 and 16 measured alike in the engine bench; 8 is enough to cover a
/// DRAM miss at ~170 ns per command).
const PREFETCH_AHEAD: usize = 8;

const NONE: ResultPayload = ResultPayload::new(Status::NotFound, 0, 0);
const OK: ResultPayload = ResultPayload::new(Status::Ok, 0, 0);

impl ShardState {
    pub fn new(idempotency_window_ms: u64, keys: KeyBudget) -> Self {
        ShardState {
            auctions: AuctionTable::default(),
            sales: HashMap::default(),
            idempotency: IdempotencyStore::new(idempotency_window_ms, keys),
            deadlines: BinaryHeap::new(),
            subscriptions: Subscriptions::default(),
            cap: Capacity::UNLIMITED,
            parked: Parked::new(PARKED_MAX),
            passivation: None,
            sale_ends: BinaryHeap::new(),
            idle_cursor: 0,
            holdings: 0,
            passivation_held: false,
        }
    }

    /// With a durable store: accepted keys may leave memory for the store
    /// once its tables hold them (see `engine::idempotency`), and closed
    /// auctions and sold-out or ended sales leave `passivate_after_ms`
    /// after they finished (`None`: never; see `engine::passivated`).
    pub fn back_with_store(&mut self, passivate_after_ms: Option<u64>) {
        self.idempotency.enable_spill();
        self.passivation = passivate_after_ms.map(Passivation::new);
    }

    /// Bounds the filter of keys that left memory (this shard's share of
    /// `--idempotency-max-filter-bytes`).
    pub fn cap_key_filter(&mut self, bytes: usize) {
        self.idempotency.cap_filter(bytes);
    }

    /// From now on no auction or sale leaves memory (those out already
    /// stay readable: their rows were in the tables when they left).
    pub fn hold_passivation(&mut self) {
        if !self.passivation_held {
            self.passivation_held = true;
            tracing::error!("a journal record is quarantined: auctions and sales stay in memory");
        }
    }

    /// The materializer's count of this shard's keyed mutations in the tables.
    pub fn keys_applied(&mut self, applied: u64) {
        self.idempotency.keys_applied(applied);
    }

    /// Executes one command; its replies, mutations and lookups go to `fx`.
    /// A command on an auction or sale whose earlier command waits for a
    /// key lookup waits behind it.
    pub fn execute(&mut self, cmd: &Command, now_ms: u64, fx: &mut Effects) {
        if !self.parked.is_empty() || self.passivation.as_ref().is_some_and(|p| !p.is_empty()) {
            let scope = scope_of(&cmd.op);
            if self.parked.holds(scope) {
                return self.park(cmd, scope, fx);
            }
            if self.is_passivated(scope) {
                return self.wait_for(cmd, Wanted::passivated(scope), fx);
            }
        }
        self.run(cmd, now_ms, fx);
    }

    /// Executes `cmds` in order, as [`execute`](Self::execute) does each,
    /// hiding most of the idempotency table's memory latency: before
    /// executing a command it starts loading the table lines of the keyed
    /// command [`PREFETCH_AHEAD`] places later.
    pub fn execute_batch(&mut self, cmds: &[Command], now_ms: u64, fx: &mut Effects) {
        for c in cmds.iter().take(PREFETCH_AHEAD) {
            self.prefetch(c);
        }
        for (i, c) in cmds.iter().enumerate() {
            if let Some(later) = cmds.get(i + PREFETCH_AHEAD) {
                self.prefetch(later);
            }
            self.execute(c, now_ms, fx);
        }
    }

    #[inline]
    fn prefetch(&self, cmd: &Command) {
        if let Some(key) = key_of(&cmd.op) {
            self.idempotency.prefetch(&key);
        }
    }

    fn is_passivated(&self, scope: Scope) -> bool {
        let Some(p) = &self.passivation else {
            return false;
        };
        // One in memory is not out: most commands stop here, at the entry
        // they read next anyway.
        let in_memory = match scope {
            (KeyKind::Bid, id) => self.auctions.contains(id),
            (KeyKind::Order, id) => self.sales.contains_key(&id),
        };
        !in_memory && p.holds(scope)
    }

    fn park(&mut self, cmd: &Command, scope: Scope, fx: &mut Effects) {
        if !self.parked.push(scope, *cmd) {
            fx.stamp(cmd);
            fx.error(cmd, ErrorCode::Busy);
        }
    }

    /// `cmd` waits for `wanted` from the store (refused BUSY when too many
    /// commands wait already).
    fn wait_for(&mut self, cmd: &Command, wanted: Wanted, fx: &mut Effects) {
        if self.parked.push(wanted.scope(), *cmd) {
            fx.lookups.push(wanted);
        } else {
            fx.stamp(cmd);
            fx.error(cmd, ErrorCode::Busy);
        }
    }

    /// The store's answer: the command that asked runs now (a key found is
    /// replayed; an auction found is back in memory), then every command
    /// that waited behind it, in order — until one of them must wait for a
    /// lookup of its own.
    pub fn looked_up(&mut self, wanted: Wanted, answer: Answer, now_ms: u64, fx: &mut Effects) {
        let mut waiting = self.parked.take(wanted.scope());
        let Some(first) = waiting.pop_front() else {
            debug_assert!(false, "an answer without a waiting command: {wanted:?}");
            return;
        };
        let mut refused = false;
        match (wanted, answer) {
            (Wanted::Key(key), Answer::Key(found)) => self.key_looked_up(key, found),
            (Wanted::Auction(id), Answer::Auction(found)) => self.unpassivate(id, found, now_ms),
            (Wanted::Sale(id), Answer::Sale(found)) => self.unpassivate_sale(id, found),
            (_, Answer::Refused(code)) => {
                refused = true;
                fx.stamp(&first);
                fx.error(&first, code);
            }
            (w, a) => debug_assert!(false, "answer {a:?} to {w:?}"),
        }
        if !refused {
            self.run(&first, now_ms, fx);
        }
        for c in waiting {
            self.execute(&c, now_ms, fx);
        }
        self.parked.settle();
    }

    fn key_looked_up(&mut self, key: Key, found: KeyLookup) {
        match found {
            KeyLookup::Found(stored) => {
                let stock = self.sales.get(&key.scope).map_or(0, |s| s.stock);
                let (fields, result) = stored.entry(stock);
                self.idempotency
                    .remember_stored(key, fields, result, stored.at_ms());
            }
            KeyLookup::Absent => self.idempotency.looked_up_absent(key),
        }
    }

    /// A passivated auction read back from the tables: in memory again
    /// (until it has been idle another period).
    fn unpassivate(&mut self, id: u64, found: Option<Auction>, now_ms: u64) {
        let Some(p) = &mut self.passivation else {
            return;
        };
        let was = p.back((KeyKind::Bid, id));
        debug_assert!(was, "auction {id} was passivated");
        let Some(a) = found else {
            tracing::error!(
                auction = id,
                "a passivated auction is missing from the tables"
            );
            return;
        };
        if a.closed {
            p.finished((KeyKind::Bid, id), now_ms);
        }
        // An open one's deadline is still in the heap: not pushed again.
        let mut a = a;
        a.touched = coarse(now_ms.max(self.idempotency.latest_ms()));
        self.auctions.insert(a);
    }

    /// A passivated sale read back from the tables, holdings included: in
    /// memory again (until another period has passed).
    fn unpassivate_sale(&mut self, id: u64, found: Option<Box<Sale>>) {
        let Some(p) = &mut self.passivation else {
            return;
        };
        let was = p.back((KeyKind::Order, id));
        debug_assert!(was, "sale {id} was passivated");
        let Some(sale) = found else {
            tracing::error!(sku = id, "a passivated sale is missing from the tables");
            return;
        };
        // Came back now: may leave once what is tracked by now is applied.
        let at = self.idempotency.latest_ms();
        p.finished((KeyKind::Order, id), at);
        self.holdings += sale.holdings.len();
        self.sales.insert(id, *sale);
    }

    fn run(&mut self, cmd: &Command, now_ms: u64, fx: &mut Effects) {
        fx.stamp(cmd);
        match cmd.op {
            Op::OpenAuction(o) => self.open_auction(cmd, o, now_ms, fx),
            Op::Bid(b) => self.bid(cmd, b, now_ms, fx),
            Op::CloseAuction(id) => self.close_auction(cmd, id, now_ms, fx),
            Op::GetAuction(id) => self.get_auction(cmd, id, now_ms, fx),
            Op::Subscribe(id) => self.subscribe(cmd, id, now_ms, fx),
            Op::Unsubscribe(id) => {
                let (result, gone) = if self.auctions.contains(id) {
                    (OK, self.subscriptions.remove(id, cmd.conn))
                } else {
                    (NONE, false)
                };
                fx.subscription_result(cmd.conn, cmd.request_id, result, -(gone as i8));
            }
            Op::OpenSale(o) => self.open_sale(cmd, o, now_ms, fx),
            Op::Buy(b) => self.buy(cmd, b, now_ms, fx),
            Op::GetSale(id) => match self.sales.get(&id) {
                None => fx.result(cmd.conn, cmd.request_id, NONE, false),
                Some(s) => fx.send(
                    cmd.conn,
                    Reply::Sale {
                        request_id: cmd.request_id,
                        info: s.info(now_ms),
                    },
                ),
            },
        }
    }

    fn open_auction(&mut self, c: &Command, o: OpenAuctionRequest, now_ms: u64, fx: &mut Effects) {
        let (status, replayed) = match self.auctions.get(o.auction_id) {
            Some(a)
                if (a.reserve, a.min_increment, a.ends_at_ms)
                    == (o.reserve, o.min_increment, o.ends_at_ms) =>
            {
                (Status::Ok, true)
            }
            Some(_) => (Status::AlreadyExists, false),
            None if self.auctions.len() >= self.cap.auctions => {
                return fx.refuse(c, Cap::Auctions);
            }
            None => {
                let mut a = Auction::new(o.auction_id, o.reserve, o.min_increment, o.ends_at_ms);
                fx.mutations.push(Mutation::AuctionOpened {
                    req: o,
                    at_ms: now_ms,
                });
                a.touched = coarse(self.idempotency.track(now_ms));
                self.insert_auction(a);
                (Status::Ok, false)
            }
        };
        fx.result(
            c.conn,
            c.request_id,
            ResultPayload::new(status, 0, 0),
            replayed,
        );
    }

    fn insert_auction(&mut self, a: Auction) {
        if !a.closed && a.ends_at_ms != 0 {
            self.deadlines.push(Reverse((a.ends_at_ms, a.id)));
        }
        self.auctions.insert(a);
    }

    /// Looks a keyed request up: `true` when it is new and must execute;
    /// otherwise it has been answered (replay or conflict).
    fn first_time(
        &mut self,
        c: &Command,
        key: Key,
        fields: (u64, u64),
        now_ms: u64,
        fx: &mut Effects,
    ) -> bool {
        match self.idempotency.check(key, fields, now_ms) {
            Seen::New => true,
            Seen::Replay(r) => {
                fx.result(c.conn, c.request_id, r, true);
                false
            }
            Seen::Conflict => {
                fx.error(c, ErrorCode::IdempotencyConflict);
                false
            }
            // Accepted keys are never dropped to make room: not executed.
            Seen::Full => {
                fx.error(c, ErrorCode::Busy);
                false
            }
            // It may have left memory: ask the store, and wait.
            Seen::Lookup => {
                self.wait_for(c, Wanted::Key(key), fx);
                false
            }
        }
    }

    fn bid(&mut self, c: &Command, b: BidRequest, now_ms: u64, fx: &mut Effects) {
        if !self.auctions.contains(b.auction_id) {
            return fx.result(c.conn, c.request_id, NONE, false);
        }
        let key = Key {
            kind: KeyKind::Bid,
            scope: b.auction_id,
            key: b.bid_id,
        };
        let fields = (b.bidder_id, b.amount);
        if !self.first_time(c, key, fields, now_ms, fx) {
            return;
        }
        self.arrive(b.auction_id, now_ms, fx);
        let a = self.auctions.get_mut(b.auction_id).expect("checked above");
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
            for s in self.subscriptions.of(b.auction_id) {
                fx.send(*s, Reply::Push(push));
            }
        }
        self.idempotency.remember(key, fields, result, now_ms);
        fx.result(c.conn, c.request_id, result, false);
    }

    fn close_auction(&mut self, c: &Command, id: u64, now_ms: u64, fx: &mut Effects) {
        self.arrive(id, now_ms, fx);
        let result = match self.auctions.get(id) {
            None => NONE,
            Some(a) if a.closed => a.result(Status::Closed),
            Some(_) => {
                self.close(id, now_ms, fx);
                self.auctions
                    .get(id)
                    .expect("closed above")
                    .result(Status::Ok)
            }
        };
        fx.result(c.conn, c.request_id, result, false);
    }

    fn get_auction(&mut self, c: &Command, id: u64, now_ms: u64, fx: &mut Effects) {
        self.arrive(id, now_ms, fx);
        match self.auctions.get(id) {
            None => fx.result(c.conn, c.request_id, NONE, false),
            Some(a) => fx.send(
                c.conn,
                Reply::Auction {
                    request_id: c.request_id,
                    info: a.info(),
                },
            ),
        }
    }

    fn subscribe(&mut self, c: &Command, id: u64, now_ms: u64, fx: &mut Effects) {
        self.arrive(id, now_ms, fx);
        let result = match self.auctions.get(id) {
            None => NONE,
            Some(a) if a.closed => a.result(Status::Closed),
            // Its connection closed while it waited for a lookup: answered
            // (to nobody), not registered.
            Some(_) if self.parked.is_gone(c.conn) => OK,
            Some(_) => match self.subscriptions.add(id, c.conn) {
                Added::New => return fx.subscription_result(c.conn, c.request_id, OK, 1),
                Added::Already => OK,
                Added::Full => return fx.refuse(c, Cap::Subscriptions),
            },
        };
        fx.result(c.conn, c.request_id, result, false);
    }

    fn open_sale(&mut self, c: &Command, o: OpenSaleRequest, now_ms: u64, fx: &mut Effects) {
        let (status, replayed) = match self.sales.get(&o.sku_id) {
            Some(s)
                if (s.stock, s.per_buyer_limit, s.starts_at_ms, s.ends_at_ms)
                    == (o.stock, o.per_buyer_limit, o.starts_at_ms, o.ends_at_ms) =>
            {
                (Status::Ok, true)
            }
            Some(_) => (Status::AlreadyExists, false),
            None if self.sales.len() >= self.cap.sales => return fx.refuse(c, Cap::Sales),
            None => {
                let s = Sale::new(
                    o.sku_id,
                    o.stock,
                    o.per_buyer_limit,
                    o.starts_at_ms,
                    o.ends_at_ms,
                );
                self.insert_sale(s);
                fx.mutations.push(Mutation::SaleOpened {
                    req: o,
                    at_ms: now_ms,
                });
                self.idempotency.track(now_ms);
                (Status::Ok, false)
            }
        };
        fx.result(
            c.conn,
            c.request_id,
            ResultPayload::new(status, 0, 0),
            replayed,
        );
    }

    fn buy(&mut self, c: &Command, b: BuyRequest, now_ms: u64, fx: &mut Effects) {
        if !self.sales.contains_key(&b.sku_id) {
            return fx.result(c.conn, c.request_id, NONE, false);
        }
        let key = Key {
            kind: KeyKind::Order,
            scope: b.sku_id,
            key: b.order_id,
        };
        let fields = (b.buyer_id, b.quantity as u64);
        if !self.first_time(c, key, fields, now_ms, fx) {
            return;
        }
        let sale = self.sales.get_mut(&b.sku_id).expect("checked above");
        let before = sale.holdings.len();
        let may_add = self.holdings < self.cap.holdings;
        let Some(result) = sale.buy(b.buyer_id, b.quantity, now_ms, may_add) else {
            return fx.refuse(c, Cap::Holdings);
        };
        self.holdings += sale.holdings.len() - before;
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
        let sold_out = result.status == Status::Ok && sale.sold == sale.stock;
        self.idempotency.remember(key, fields, result, now_ms);
        if sold_out {
            self.sale_finished(b.sku_id);
        }
        fx.result(c.conn, c.request_id, result, false);
    }

    /// A command (or the deadline) names auction `id`: it is used now
    /// (see [`Self::passivate_idle`]), and closes first if its time is up.
    fn arrive(&mut self, id: u64, now_ms: u64, fx: &mut Effects) {
        // Not before anything tracked so far: a bid it takes next is
        // tracked at this time.
        let now = coarse(now_ms.max(self.idempotency.latest_ms()));
        let Some(a) = self.auctions.get_mut(id) else {
            return;
        };
        a.touched = now;
        if !a.closed && a.time_is_up(now_ms) {
            self.close(id, now_ms, fx);
        }
    }

    /// Closes an open auction: records it and tells its subscribers.
    fn close(&mut self, id: u64, now_ms: u64, fx: &mut Effects) {
        let Some(a) = self.auctions.get_mut(id) else {
            return;
        };
        debug_assert!(!a.closed, "an auction closes once");
        a.closed = true;
        fx.mutations.push(Mutation::AuctionClosed {
            auction_id: id,
            at_ms: now_ms,
        });
        // A tracked mutation: the auction may leave memory once it is in
        // the tables.
        let at = self.idempotency.track(now_ms);
        if let Some(p) = &mut self.passivation {
            p.finished((KeyKind::Bid, id), at);
        }
        let push = Push::AuctionClosed {
            auction_id: id,
            winning_bid: a.high_bid,
            winner: a.high_bidder,
        };
        for s in self.subscriptions.take(id) {
            fx.send(s, Reply::Push(push));
        }
    }

    /// Closes auctions whose end time has passed and expires old idempotency keys.
    pub fn sweep(&mut self, now_ms: u64, fx: &mut Effects) {
        while let Some(&Reverse((at, id))) = self.deadlines.peek() {
            if at > now_ms {
                break;
            }
            self.deadlines.pop();
            let out = (self.passivation.as_mut()).is_some_and(|p| p.ended_while_out(id));
            if out {
                self.record_closing(id, now_ms, fx);
            } else {
                self.arrive(id, now_ms, fx);
            }
        }
        self.idempotency.expire(now_ms);
        if self.passivation.is_some() && !self.passivation_held {
            self.sales_ended(now_ms);
            self.passivate(KeyKind::Bid, now_ms);
            self.passivate(KeyKind::Order, now_ms);
            self.passivate_idle(now_ms);
        }
    }

    /// The end of an idle open auction out of memory came: its closing is
    /// recorded without reading it back (nobody subscribes to it, and a
    /// closing changes nothing but `closed`). If a command reads it back
    /// before the tables have the closing, it closes again on arrival (the
    /// same row update twice).
    fn record_closing(&mut self, id: u64, now_ms: u64, fx: &mut Effects) {
        fx.mutations.push(Mutation::AuctionClosed {
            auction_id: id,
            at_ms: now_ms,
        });
        self.idempotency.track(now_ms);
    }

    /// Walks up to [`IDLE_WALK`] auctions from where the last walk stopped:
    /// an open one that no command named for `--passivate-after`, with no
    /// subscriber and no waiting command, whose last change is in the
    /// tables, leaves memory (its id and its deadline stay).
    fn passivate_idle(&mut self, now_ms: u64) {
        let Some(p) = &mut self.passivation else {
            return;
        };
        // In COARSE_MS units, one more than the delay: the unit it was
        // touched in may have begun before it was.
        let after = p.after_ms().div_ceil(COARSE_MS) + 1;
        let now = now_ms / COARSE_MS;
        let mut pos = self.idle_cursor;
        for _ in 0..IDLE_WALK.min(self.auctions.len()) {
            if pos >= self.auctions.len() {
                pos = 0;
            }
            let Some(a) = self.auctions.at(pos) else {
                break; // none left
            };
            let age = coarse(now_ms).wrapping_sub(a.touched);
            // Touched after now: the wall clock stepped back. Not idle.
            let future = age > u32::MAX / 2;
            let age = u64::from(age);
            let last_change_ms = (now.saturating_sub(age) + 1) * COARSE_MS - 1;
            let leaves = !a.closed
                && !future
                && age >= after
                && !self.subscriptions.is_watched(a.id)
                && !self.parked.holds((KeyKind::Bid, a.id))
                && self.idempotency.in_tables_through(last_change_ms);
            if leaves {
                let id = a.id;
                self.auctions.remove(id);
                p.left_idle(id);
                // The last auction moved into `pos`: look at it next.
            } else {
                pos += 1;
            }
        }
        self.idle_cursor = pos;
    }

    /// Sales whose end time has passed are finished.
    fn sales_ended(&mut self, now_ms: u64) {
        while let Some(&Reverse((at, id))) = self.sale_ends.peek() {
            if at > now_ms {
                break;
            }
            self.sale_ends.pop();
            self.sale_finished(id);
        }
    }

    /// A sale sold out or ended: nothing it does changes any more, so it
    /// may leave memory once what was tracked so far is in the tables.
    fn sale_finished(&mut self, id: u64) {
        let at = self.idempotency.latest_ms();
        if let Some(p) = &mut self.passivation {
            p.finished((KeyKind::Order, id), at);
        }
    }

    /// Closed auctions whose time in memory is up and whose closing is in
    /// the tables leave memory.
    fn passivate(&mut self, kind: KeyKind, now_ms: u64) {
        let Some(p) = &mut self.passivation else {
            return;
        };
        let mut busy = Vec::new();
        let latest = self.idempotency.latest_ms();
        while let Some((at, id)) = p.next_due(kind, now_ms) {
            if !self.idempotency.in_tables_through(at) {
                break;
            }
            p.pop(kind);
            if self.parked.holds((kind, id)) {
                // Commands wait on it: try again another period later.
                busy.push(id);
                continue;
            }
            let gone = match kind {
                KeyKind::Bid => {
                    self.auctions.get(id).is_some_and(|a| a.closed)
                        && self.auctions.remove(id).is_some()
                }
                KeyKind::Order => match self.sales.remove(&id) {
                    Some(s) => {
                        self.holdings -= s.holdings.len();
                        true
                    }
                    None => false,
                },
            };
            if gone {
                p.left((kind, id));
            }
        }
        for id in busy {
            p.finished((kind, id), latest);
        }
    }

    pub fn disconnect(&mut self, conn: ConnRef) {
        self.subscriptions.disconnect(conn);
        self.parked.disconnected(conn);
    }

    /// Recovery: an auction as the store has it. When auctions are
    /// passivated a closed one stays in the tables, and so do open ones
    /// past this shard's share of `--max-auctions` (idle ones out of memory
    /// do not count against it, so the tables may hold more). Those in
    /// memory count as used at `now_ms`.
    pub fn restore_auction(&mut self, mut a: Auction, now_ms: u64) {
        a.touched = coarse(now_ms);
        match &mut self.passivation {
            Some(p) if a.closed => p.left((KeyKind::Bid, a.id)),
            Some(p) if self.auctions.len() >= self.cap.auctions => {
                p.left_idle(a.id);
                if a.ends_at_ms != 0 {
                    self.deadlines.push(Reverse((a.ends_at_ms, a.id)));
                }
            }
            _ => self.insert_auction(a),
        }
    }

    /// Recovery: a sale as the store has it (its holdings follow through
    /// [`Self::sale_mut`]). A finished one (sold out, or ended by
    /// `now_ms`) stays in the tables when sales are passivated.
    pub fn restore_sale(&mut self, s: Sale, now_ms: u64) {
        let finished = s.sold == s.stock || s.state(now_ms) == AuctionState::Closed;
        match &mut self.passivation {
            Some(p) if finished => p.left((KeyKind::Order, s.id)),
            _ => self.insert_sale(s),
        }
    }

    fn insert_sale(&mut self, s: Sale) {
        if self.passivation.is_some() && s.ends_at_ms != 0 {
            self.sale_ends.push(Reverse((s.ends_at_ms, s.id)));
        }
        self.sales.insert(s.id, s);
    }

    pub fn sale_mut(&mut self, sku_id: u64) -> Option<&mut Sale> {
        self.sales.get_mut(&sku_id)
    }

    /// Recovery is over: counts what the restored sales hold.
    pub fn restored(&mut self) {
        self.holdings = self.sales.values().map(|s| s.holdings.len()).sum();
    }

    /// Recovery: an accepted request inside the idempotency window, so a
    /// retry after a restart replays `OK` with the values first sent.
    pub fn restore_key(&mut self, key: Key, fields: (u64, u64), result: ResultPayload, at_ms: u64) {
        self.idempotency.remember_stored(key, fields, result, at_ms);
    }

    pub fn auction_count(&self) -> usize {
        self.auctions.len()
    }

    /// Caps what this shard holds (its share of the server's caps).
    pub fn set_capacity(&mut self, cap: Capacity) {
        self.subscriptions.set_cap(cap.subscriptions);
        self.cap = cap;
    }

    /// What this shard holds, for the gauges.
    pub fn sizes(&self) -> Sizes {
        Sizes {
            auctions: self.auctions.len(),
            sales: self.sales.len(),
            holdings: self.holdings,
            subscriptions: self.subscriptions.len(),
            keys: self.idempotency.len(),
            spilled_keys: self.idempotency.spilled_len(),
            filter_bytes: self.idempotency.filter_bytes(),
            parked: self.parked.len(),
            passivated: self.passivation.as_ref().map_or(0, Passivation::auctions),
            passivated_sales: self.passivation.as_ref().map_or(0, Passivation::sales),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::command::Outgoing;
    use crate::engine::idempotency::StoredOutcome;
    use crate::engine::parked::{Answer, Wanted};
    use gavel_protocol::FLAG_REPLAYED;

    const KEYS: KeyBudget = KeyBudget {
        accepted: 100,
        rejected: 100,
    };

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

    /// OPEN_AUCTION with no reserve and an increment of 1.
    fn open_op(auction_id: u64, ends_at_ms: u64) -> Op {
        Op::OpenAuction(OpenAuctionRequest {
            auction_id,
            reserve: 0,
            min_increment: 1,
            ends_at_ms,
        })
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
        let mut st = ShardState::new(1000, KEYS);
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
        let mut st = ShardState::new(1000, KEYS);
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
        let mut st = ShardState::new(1000, KEYS);
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

    /// At the shard's share of `--max-holdings`, a buyer new to a sale is
    /// refused BUSY (not executed, its order not remembered); buyers who
    /// hold some still buy; holdings leave with a passivated sale.
    #[test]
    fn holdings_stop_at_the_cap() {
        let mut st = ShardState::new(1_000_000, KEYS);
        st.set_capacity(Capacity {
            holdings: 2,
            ..Capacity::UNLIMITED
        });
        st.back_with_store(Some(100));
        let open = OpenSaleRequest {
            sku_id: 5,
            stock: 4,
            per_buyer_limit: 0,
            starts_at_ms: 0,
            ends_at_ms: 0,
        };
        run(&mut st, Op::OpenSale(open), 0);
        let buy = |buyer, order| {
            Op::Buy(BuyRequest {
                sku_id: 5,
                buyer_id: buyer,
                quantity: 1,
                order_id: order,
            })
        };
        let refused = |out: &[Outgoing]| {
            matches!(
                out.last().unwrap().reply,
                Reply::Refused {
                    limit: Cap::Holdings,
                    ..
                }
            )
        };
        for (buyer, order) in [(1, 1), (2, 2)] {
            assert_eq!(
                result(&run(&mut st, buy(buyer, order), 1).0).0.status,
                Status::Ok
            );
        }
        assert!(refused(&run(&mut st, buy(3, 3), 2).0));
        assert!(refused(&run(&mut st, buy(3, 3), 2).0), "not remembered");
        let (out, _) = run(&mut st, buy(1, 4), 2);
        assert_eq!(result(&out).0, ResultPayload::new(Status::Ok, 1, 2));
        assert_eq!(st.sizes().holdings, 2);
        // Sold out; once it has left memory its holdings no longer count.
        run(&mut st, buy(2, 5), 3);
        st.keys_applied(5); // the opening and 4 purchases
        let mut fx = Effects::new(1);
        st.sweep(1_000, &mut fx);
        assert_eq!((st.sizes().holdings, st.sizes().passivated_sales), (0, 1));
    }

    #[test]
    fn sales_and_order_replay() {
        let mut st = ShardState::new(1000, KEYS);
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

    fn run_as(st: &mut ShardState, request_id: u32, op: Op, fx: &mut Effects) {
        let c = Command {
            conn: C,
            request_id,
            op,
            t0_us: 0,
            kind: 0,
        };
        st.execute(&c, 0, fx);
    }

    fn answered(fx: &mut Effects) -> Vec<(u32, Reply)> {
        fx.replies[0]
            .drain(..)
            .map(|o| match o.reply {
                Reply::Result { request_id, .. } | Reply::Auction { request_id, .. } => {
                    (request_id, o.reply)
                }
                Reply::Error { request_id, .. } => (request_id, o.reply),
                r => panic!("{r:?}"),
            })
            .collect()
    }

    /// A state backed by a store with room for one accepted key, auctions
    /// 1 and 2 open, bid key 100 accepted (at 10) and moved out of memory by
    /// key 101 (at 20). Returns the state and bid 100's first RESULT.
    fn with_key_100_spilled() -> (ShardState, ResultPayload) {
        let mut st = ShardState::new(
            1_000_000,
            KeyBudget {
                accepted: 1,
                rejected: 10,
            },
        );
        st.back_with_store(None);
        for id in [1, 2] {
            run(&mut st, open_op(id, 0), 0);
        }
        let first = result(&run(&mut st, bid(1, 7, 10, 100), 0).0).0;
        st.keys_applied(3); // the two openings and the bid
        run(&mut st, bid(1, 7, 20, 101), 0); // key 100 leaves memory
        (st, first)
    }

    /// A key that left memory is looked up while its command, and later
    /// ones on the same auction, wait; other auctions keep flowing; the
    /// answer releases them in order.
    #[test]
    fn a_spilled_key_waits_for_its_lookup_and_holds_its_auction_only() {
        let (mut st, first) = with_key_100_spilled();
        let mut fx = Effects::new(1);
        run_as(&mut st, 1, bid(1, 7, 10, 100), &mut fx); // retry of 100
        run_as(&mut st, 2, Op::GetAuction(1), &mut fx); // waits behind it
        run_as(&mut st, 3, Op::GetAuction(2), &mut fx); // another auction
        assert_eq!(
            fx.lookups,
            vec![Wanted::Key(Key {
                kind: KeyKind::Bid,
                scope: 1,
                key: 100
            })]
        );
        let ids: Vec<u32> = answered(&mut fx).iter().map(|r| r.0).collect();
        assert_eq!(ids, vec![3], "only the other auction answered");
        let stored = StoredOutcome::Bid {
            bidder_id: 7,
            amount: 10,
            at_ms: 0,
        };
        st.looked_up(
            fx.lookups.pop().unwrap(),
            Answer::Key(KeyLookup::Found(stored)),
            0,
            &mut fx,
        );
        let out = answered(&mut fx);
        assert_eq!(
            out.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![1, 2],
            "in order"
        );
        assert_eq!(
            out[0].1,
            Reply::Result {
                request_id: 1,
                result: first,
                flags: FLAG_REPLAYED
            }
        );
        assert!(fx.mutations.is_empty(), "a replay changes nothing");
    }

    #[test]
    fn an_absent_key_executes_and_a_failed_lookup_refuses() {
        let (mut st, _) = with_key_100_spilled();
        let key = Key {
            kind: KeyKind::Bid,
            scope: 1,
            key: 100,
        };
        // The store failed: refused (not executed), the next one runs.
        let mut fx = Effects::new(1);
        run_as(&mut st, 1, bid(1, 7, 10, 100), &mut fx);
        run_as(&mut st, 2, Op::GetAuction(1), &mut fx);
        let refused = Answer::Refused(ErrorCode::Unavailable);
        st.looked_up(Wanted::Key(key), refused, 0, &mut fx);
        let out = answered(&mut fx);
        assert!(matches!(
            out[0].1,
            Reply::Error {
                code: ErrorCode::Unavailable,
                ..
            }
        ));
        assert_eq!(out[1].0, 2);
        // Absent (a false "maybe"): it executes — here OUTBID (10 < 20) —
        // once key 101 may leave memory to make room.
        st.keys_applied(4);
        run_as(&mut st, 3, bid(1, 7, 10, 100), &mut fx);
        st.looked_up(Wanted::Key(key), Answer::Key(KeyLookup::Absent), 0, &mut fx);
        let out = answered(&mut fx);
        match out[0].1 {
            Reply::Result {
                request_id: 3,
                result,
                flags: 0,
            } => assert_eq!(result.status, Status::Outbid),
            ref r => panic!("{r:?}"),
        }
    }

    /// A closed auction leaves memory once its time is up and its closing
    /// is in the tables; a later command waits while it is read back, and
    /// then sees it as it was.
    #[test]
    fn a_closed_auction_leaves_memory_and_comes_back_on_demand() {
        let mut st = ShardState::new(1_000_000, KEYS);
        st.back_with_store(Some(100));
        run(&mut st, open_op(1, 0), 0);
        run(&mut st, bid(1, 7, 50, 1), 0);
        run(&mut st, Op::CloseAuction(1), 10);
        let before = *st.auctions.get(1).unwrap();
        let mut fx = Effects::new(1);
        st.sweep(200, &mut fx);
        assert_eq!(
            st.sizes().auctions,
            1,
            "the closing is not in the tables yet"
        );
        st.keys_applied(3); // the opening, the bid and the closing
        st.sweep(200, &mut fx);
        assert_eq!((st.sizes().auctions, st.sizes().passivated), (0, 1));
        // Two commands on it wait for one read; another auction is unaffected.
        run_as(&mut st, 1, Op::GetAuction(1), &mut fx);
        run_as(&mut st, 2, bid(1, 8, 99, 2), &mut fx);
        run_as(&mut st, 3, Op::GetAuction(5), &mut fx);
        assert_eq!(fx.lookups, vec![Wanted::Auction(1)]);
        assert_eq!(
            answered(&mut fx).iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![3]
        );
        let w = fx.lookups.pop().unwrap();
        st.looked_up(w, Answer::Auction(Some(before)), 300, &mut fx);
        let out = answered(&mut fx);
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0].1,
            Reply::Auction {
                request_id: 1,
                info: before.info()
            }
        );
        match out[1].1 {
            Reply::Result {
                request_id: 2,
                result,
                ..
            } => {
                assert_eq!(result, ResultPayload::new(Status::Closed, 50, 7))
            }
            ref r => panic!("{r:?}"),
        }
        assert_eq!((st.sizes().auctions, st.sizes().passivated), (1, 0));
        // Idle again for the period: it leaves again.
        st.sweep(400, &mut fx);
        assert_eq!((st.sizes().auctions, st.sizes().passivated), (0, 1));
    }

    /// An auction restored at a restart counts as used then: it goes idle
    /// after the period, whatever the clock reads (here a time whose
    /// coarse value has its top bit set).
    #[test]
    fn a_restored_auction_goes_idle_after_the_period() {
        let t = (1u64 << 37) + 640;
        assert!(coarse(t) > u32::MAX / 2);
        let mut st = ShardState::new(1_000_000, KEYS);
        st.back_with_store(Some(100));
        st.restore_auction(Auction::new(1, 0, 1, 0), t);
        let mut fx = Effects::new(1);
        st.sweep(t + 50, &mut fx);
        assert_eq!((st.sizes().auctions, st.sizes().passivated), (1, 0));
        st.sweep(t + 1_000, &mut fx);
        assert_eq!((st.sizes().auctions, st.sizes().passivated), (0, 1));
    }

    /// Once a record is quarantined nothing leaves memory: the tables may
    /// lack the rows it would be read back from.
    #[test]
    fn a_quarantined_record_holds_passivation() {
        let mut st = ShardState::new(1_000_000, KEYS);
        st.back_with_store(Some(100));
        run(&mut st, open_op(1, 0), 0);
        run(&mut st, open_op(2, 0), 0);
        run(&mut st, Op::CloseAuction(2), 0);
        st.keys_applied(3);
        st.hold_passivation();
        let mut fx = Effects::new(1);
        st.sweep(10_000, &mut fx);
        assert_eq!((st.sizes().auctions, st.sizes().passivated), (2, 0));
    }

    /// A wall clock stepping back does not make a just-used auction idle.
    #[test]
    fn a_clock_stepping_back_makes_no_auction_idle() {
        let mut st = ShardState::new(1_000_000, KEYS);
        st.back_with_store(Some(100));
        run(&mut st, open_op(1, 0), 10_000);
        st.keys_applied(1);
        let mut fx = Effects::new(1);
        st.sweep(5_000, &mut fx);
        assert_eq!((st.sizes().auctions, st.sizes().passivated), (1, 0));
        st.sweep(10_300, &mut fx);
        assert_eq!((st.sizes().auctions, st.sizes().passivated), (0, 1));
    }

    /// At a restart, open auctions past the shard's share of the cap stay
    /// in the tables as idle ones; their ends are still recorded.
    #[test]
    fn restored_open_auctions_past_the_cap_stay_out_of_memory() {
        let mut st = ShardState::new(1_000_000, KEYS);
        st.set_capacity(Capacity {
            auctions: 2,
            ..Capacity::UNLIMITED
        });
        st.back_with_store(Some(100));
        let mut closed = Auction::new(9, 0, 1, 0);
        closed.closed = true;
        st.restore_auction(closed, 0);
        for id in 1..=3 {
            st.restore_auction(Auction::new(id, 0, 1, 1_000 * id), 0);
        }
        assert_eq!((st.sizes().auctions, st.sizes().passivated), (2, 2));
        let mut fx = Effects::new(1);
        st.sweep(3_000, &mut fx);
        let closings: Vec<u64> = (fx.mutations.iter())
            .map(|m| match *m {
                Mutation::AuctionClosed { auction_id, .. } => auction_id,
                ref m => panic!("{m:?}"),
            })
            .collect();
        assert_eq!(closings, vec![1, 2, 3], "in memory or not, each closes");
    }

    /// An open auction no command named for the period, with no
    /// subscriber, whose last change is in the tables, leaves memory; it
    /// comes back as it was; its end, while it is out, is recorded.
    #[test]
    fn an_idle_open_auction_leaves_memory_and_its_end_is_recorded() {
        let mut st = ShardState::new(1_000_000, KEYS);
        st.back_with_store(Some(100));
        for (id, ends_at_ms) in [(1, 0), (2, 5_000), (3, 0)] {
            run(&mut st, open_op(id, ends_at_ms), 0);
        }
        run(&mut st, bid(1, 7, 50, 1), 200);
        let mut fx = Effects::new(1);
        run_as(&mut st, 1, Op::Subscribe(3), &mut fx);
        answered(&mut fx);
        let before = *st.auctions.get(1).unwrap();
        let out = |st: &ShardState| (st.sizes().auctions, st.sizes().passivated);
        st.sweep(1_000, &mut fx);
        assert_eq!(out(&st), (3, 0), "idle, but not in the tables yet");
        st.keys_applied(3); // the openings, not the bid
        st.sweep(1_000, &mut fx);
        assert_eq!(out(&st), (2, 1), "2 leaves; 1's bid is not applied");
        st.keys_applied(4);
        run(&mut st, Op::GetAuction(3), 1_000); // watched and named: stays
        st.sweep(1_000, &mut fx);
        assert_eq!(out(&st), (1, 2));
        assert!(st.auctions.get(3).is_some());
        // A command on one out of memory waits for it to be read back.
        run_as(&mut st, 2, Op::GetAuction(1), &mut fx);
        assert_eq!(fx.lookups.pop(), Some(Wanted::Auction(1)));
        st.looked_up(
            Wanted::Auction(1),
            Answer::Auction(Some(before)),
            1_000,
            &mut fx,
        );
        let info = before.info();
        let got = answered(&mut fx);
        assert_eq!(
            got,
            vec![(
                2,
                Reply::Auction {
                    request_id: 2,
                    info
                }
            )]
        );
        assert_eq!(out(&st), (2, 1));
        // Auction 2's end comes while it is out: its closing is recorded.
        fx.mutations.clear();
        st.sweep(5_000, &mut fx);
        let closing = Mutation::AuctionClosed {
            auction_id: 2,
            at_ms: 5_000,
        };
        assert_eq!(fx.mutations, vec![closing]);
        st.sweep(5_001, &mut fx);
        assert_eq!(fx.mutations.len(), 1, "recorded once");
        // Read back before the tables have the closing, it closes on arrival.
        run_as(&mut st, 3, bid(2, 8, 60, 2), &mut fx);
        let row = Auction::new(2, 0, 1, 5_000);
        st.looked_up(
            Wanted::Auction(2),
            Answer::Auction(Some(row)),
            5_002,
            &mut fx,
        );
        match answered(&mut fx).as_slice() {
            [(3, Reply::Result { result, .. })] => assert_eq!(result.status, Status::Closed),
            other => panic!("{other:?}"),
        }
    }

    /// A SUBSCRIBE that waited behind a lookup while its connection closed
    /// does not register when it runs (it would never be removed).
    #[test]
    fn a_waiting_subscribe_of_a_closed_connection_does_not_register() {
        let (mut st, _) = with_key_100_spilled();
        let mut fx = Effects::new(1);
        run_as(&mut st, 1, bid(1, 7, 10, 100), &mut fx); // waits for a lookup
        run_as(&mut st, 2, Op::Subscribe(1), &mut fx); // waits behind it
        st.disconnect(C);
        let w = fx.lookups.pop().unwrap();
        st.looked_up(w, Answer::Key(KeyLookup::Absent), 0, &mut fx);
        assert_eq!(
            st.sizes().subscriptions,
            0,
            "no subscription for a closed connection"
        );
        // A later connection in the same slot (another generation) subscribes.
        let again = ConnRef {
            gen: C.gen + 1,
            ..C
        };
        let mut fx = Effects::new(1);
        st.execute(
            &Command {
                conn: again,
                request_id: 3,
                op: Op::Subscribe(1),
                t0_us: 0,
                kind: 0,
            },
            0,
            &mut fx,
        );
        assert_eq!(st.sizes().subscriptions, 1);
    }
}
