//! The Redis engine's I/O: the connections to Redis (synchronous client, or
//! pipelined sockets with their reader threads: one to a single node, one to
//! each master of a cluster), rounds in flight, and reconnecting with
//! backoff. What to send and how to answer is decided in [`super::decide`];
//! this file only moves bytes and keeps order.
//!
//! Pipelined, each connection (a "lane": the node, or one master) fails and
//! comes back on its own: a lane that breaks or stays silent past
//! `--redis-timeout` decides only the ops it carried (IN_DOUBT for writes it
//! had sent, UNAVAILABLE for reads), the other masters' ops in the same
//! round are answered as usual, and while it is down its slots' ops are
//! answered UNAVAILABLE at once (never sent) as it reconnects with backoff
//! on a thread of its own (see [`super::pipe::open_lane`]: the master must
//! answer `SCRIPT LOAD` before it gets ops again).

use std::collections::VecDeque;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use gavel_protocol::Push;
use gavel_redis::{Op as ROp, RedisError, RedisGavel};
use redis::Value;

use super::decide::{Decisions, OpOutcome, Pending, Round, RoundOutcome};
use super::pipe::{open_lane, plain_addr, read_replies, RedisEvent};
use super::updates::News;
use super::RedisConfig;
use crate::backoff::Backoff;
use crate::engine::command::{Command, ConnRef};
use crate::engine::effects::Effects;
use crate::metrics::Metrics;
use crate::shard::{Backend, Sizes};

/// Most rounds one shard keeps in flight before it waits for replies.
pub const MAX_IN_FLIGHT: usize = 8;

/// A shard whose auctions and sales live in Redis.
pub struct RedisShard {
    cfg: RedisConfig,
    decide: Decisions,
    /// The synchronous client (password URLs: every round waits for it).
    conn: Option<RedisGavel>,
    /// The synchronous client's next attempt, or (pipelined) when the slot
    /// map may be read again after a failed read; `None` while fine.
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// The round being planned.
    round: Round,
    metrics: Arc<Metrics>,
    /// Pipelined mode: one lane per connection (the node, or each master of
    /// a cluster; a lane stays in place while its master is down), rounds in
    /// flight (`first_seq` numbers the front one), and the last epoch given
    /// to a connection (each has its own, so replies of an abandoned one are
    /// told apart).
    lanes: Vec<Lane>,
    /// A cluster's slot ranges and the lane of the master serving each,
    /// sorted by first slot (empty on a single node).
    slots: Vec<(u16, u16, usize)>,
    /// A master answered MOVED or ASK: the slot map is read again before
    /// the next round is sent.
    remap: bool,
    pipelined: bool,
    in_flight: VecDeque<InFlight>,
    first_seq: u64,
    epoch: u64,
    shas: [String; gavel_redis::scripts::SCRIPTS],
}

/// One pipelined connection: its master, its state, where its replies go
/// (round number and op index, in the order sent: Redis answers in order),
/// and the bytes of the round being sent.
struct Lane {
    addr: String,
    state: LaneState,
    /// The epoch of its current connection (or connection attempt).
    epoch: u64,
    backoff: Backoff,
    /// Down since this moment, if it is (for the log: once per outage).
    down_since: Option<Instant>,
    /// Redis lost the scripts (`NOSCRIPT`): no new ops; once the replies
    /// in flight are in, it reconnects (the connect loads them).
    reload: bool,
    expect: VecDeque<(u64, usize)>,
    out: Vec<u8>,
}

enum LaneState {
    Up(TcpStream),
    /// A thread is connecting it (and loading the scripts).
    Connecting,
    /// Down; the next attempt is due then.
    Down(Instant),
}

impl Lane {
    fn new(addr: String) -> Lane {
        Lane {
            addr,
            state: LaneState::Down(Instant::now()),
            epoch: 0,
            backoff: Backoff::new(),
            down_since: None,
            reload: false,
            expect: VecDeque::new(),
            out: Vec::new(),
        }
    }

    /// Takes new ops.
    fn ready(&self) -> bool {
        matches!(self.state, LaneState::Up(_)) && !self.reload
    }
}

/// What came back for one op of a round in flight.
#[derive(Debug)]
enum Got {
    /// Written; no reply yet.
    Waiting,
    Reply(Value),
    /// Written, and its connection failed before the reply came.
    Lost,
    /// Never written: its master was down or reconnecting.
    NotSent,
}

struct InFlight {
    pending: Vec<Pending>,
    ops: Vec<ROp>,
    /// One entry per op, filled as the lanes answer (in any order between
    /// lanes) or fail; `filled` counts those no longer waiting.
    values: Vec<Got>,
    filled: usize,
    sent: Instant,
    now_ms: u64,
    /// Connections that closed while this round was the last in flight:
    /// forgotten once it is answered (a SUBSCRIBE in it subscribes when
    /// its read comes back, so forgetting them before would leak it).
    disconnects: Vec<ConnRef>,
    /// Update channels its SUBSCRIBEs wait for (confirmed by the listener).
    waits: Vec<u64>,
}

impl InFlight {
    fn complete(&self) -> bool {
        self.filled == self.ops.len() && self.waits.is_empty()
    }

    fn fill(&mut self, i: usize, got: Got) {
        if matches!(self.values[i], Got::Waiting) {
            self.filled += 1;
        }
        self.values[i] = got;
    }
}

impl RedisShard {
    pub fn new(cfg: RedisConfig, metrics: Arc<Metrics>) -> Self {
        // Plain `redis://host:port` URLs get pipelined connections (a
        // cluster's masters, found by the synchronous client, take the seed
        // URLs' credentials: none); one with a password or database index
        // keeps the synchronous client, which performs the handshake.
        let pipelined = !cfg.urls.is_empty() && cfg.urls.iter().all(|u| plain_addr(u).is_some());
        metrics.redis_up.set(1);
        let mut decide = Decisions::new(cfg.outbid_filter);
        decide.set_subscription_cap(cfg.max_subscriptions);
        RedisShard {
            decide,
            cfg,
            conn: None,
            retry_at: None,
            backoff: Backoff::new(),
            round: Round::default(),
            metrics,
            lanes: Vec::new(),
            slots: Vec::new(),
            remap: false,
            pipelined,
            in_flight: VecDeque::new(),
            first_seq: 0,
            epoch: 0,
            shas: gavel_redis::scripts::script_shas(),
        }
    }

    pub fn is_up(&self) -> bool {
        if self.pipelined {
            return self.lanes.iter().any(Lane::ready);
        }
        self.retry_at.is_none()
    }

    /// The synchronous client, connecting it if due.
    fn connection(&mut self) -> Option<&mut RedisGavel> {
        if self.conn.is_none() {
            if self.retry_at.is_some_and(|t| Instant::now() < t) {
                return None;
            }
            let c = &self.cfg;
            match RedisGavel::connect(&c.urls, c.cluster, c.timeout, c.idempotency_window) {
                Ok(c) => {
                    if self.retry_at.take().is_some() {
                        tracing::info!("redis is reachable again");
                        self.metrics.redis_up.set(1);
                    }
                    self.backoff.reset();
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
        self.retry_at = Some(self.backoff.next_attempt());
    }

    /// Sends the planned round (pipelined or synchronous).
    fn dispatch(&mut self, now_ms: u64, fx: &mut Effects) {
        if self.round.is_empty() {
            return;
        }
        self.tell_listener();
        let Round {
            ops,
            pending,
            mut waits,
        } = std::mem::take(&mut self.round);
        if self.pipelined() {
            return self.send_round(ops, pending, waits, now_ms, fx);
        }
        // Synchronous: wait for the channels first, so the SUBSCRIBEs' reads
        // run after Redis confirmed them.
        self.wait_for_channels(&mut waits);
        let outcome = if ops.is_empty() {
            RoundOutcome::NotSent
        } else {
            self.round_trip(&ops, now_ms)
        };
        self.decide.finish_round(&pending, outcome, now_ms, fx);
        self.tell_listener();
        // Keep the buffers for the next round.
        self.round = Round {
            ops,
            pending,
            waits,
        };
        self.round.ops.clear();
        self.round.pending.clear();
        self.round.waits.clear();
    }

    /// Passes the shard's wishes (channels wanted, let go) to the listener.
    fn tell_listener(&mut self) {
        for w in self.decide.wishes.drain(..) {
            let _ = self.cfg.listener.send(w);
        }
    }

    /// Synchronous mode: waits, up to the timeout, for Redis to confirm the
    /// channels in `waits` (or the listener to say their master is down).
    fn wait_for_channels(&mut self, waits: &mut Vec<u64>) {
        let deadline = Instant::now() + self.cfg.timeout;
        waits.retain(|&id| !self.decide.channel_live(id));
        while !waits.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.cfg.events.1.recv_timeout(left) {
                Ok(RedisEvent::Channel(news)) => {
                    self.decide.on_channel(&news);
                    if let News::Lost(ids) = &news {
                        // Their master is down: not coming.
                        waits.retain(|w| ids.binary_search(w).is_err());
                    }
                    waits.retain(|&id| !self.decide.channel_live(id));
                }
                Ok(RedisEvent::Replies(..) | RedisEvent::Lane(..)) => {} // none in this mode
                Err(_) => return,
            }
        }
    }

    /// News of this shard's channels: rounds waiting for a confirmed channel
    /// go on (and the auction is read again, see
    /// [`Decisions::plan_recheck`]); when the listener lost channels (their
    /// master is down), the SUBSCRIBEs waiting for them are refused.
    fn on_channel(&mut self, news: News, fx: &mut Effects) {
        let fresh = self.decide.on_channel(&news);
        let mut waited = false;
        for r in &mut self.in_flight {
            let before = r.waits.len();
            match &news {
                News::Live(id) => r.waits.retain(|w| w != id),
                News::Lost(ids) => r.waits.retain(|w| ids.binary_search(w).is_err()),
            }
            waited |= r.waits.len() != before;
        }
        if let (News::Live(id), true, true) = (news, fresh, waited) {
            self.decide.plan_recheck(id, &mut self.round);
            self.dispatch(crate::clock::now_ms(), fx);
        }
        self.finish_ready(fx);
    }

    /// One synchronous round trip.
    fn round_trip(&mut self, ops: &[ROp], now_ms: u64) -> RoundOutcome {
        let t = Instant::now();
        let Some(conn) = self.connection() else {
            return RoundOutcome::NotSent;
        };
        let results = match conn.execute(ops, now_ms) {
            Ok(r) => RoundOutcome::Answered(r),
            Err(e) => {
                self.fail(&e);
                // The pipeline may have been sent, and run, in part.
                RoundOutcome::Lost
            }
        };
        self.metrics.redis_round_trips.inc();
        self.metrics
            .redis_seconds
            .observe(t.elapsed().as_micros() as u64);
        results
    }

    /// Pipelined mode keeps several rounds in flight: reader threads feed
    /// replies back, so Redis never idles while this shard turns a round's
    /// replies around. On a cluster a round is split by master, each part
    /// sent on that master's connection; the round is answered once every
    /// part is answered or its master failed, and rounds are answered in
    /// order.
    fn pipelined(&self) -> bool {
        self.pipelined
    }

    /// Pops the front round in flight.
    fn pop_front(&mut self) -> Option<InFlight> {
        let r = self.in_flight.pop_front()?;
        self.first_seq += 1;
        Some(r)
    }

    fn send_round(
        &mut self,
        ops: Vec<ROp>,
        pending: Vec<Pending>,
        mut waits: Vec<u64>,
        now_ms: u64,
        fx: &mut Effects,
    ) {
        waits.retain(|&id| !self.decide.channel_live(id));
        let mut round = InFlight {
            waits,
            pending,
            values: Vec::with_capacity(ops.len()),
            filled: 0,
            ops,
            sent: Instant::now(),
            now_ms,
            disconnects: Vec::new(),
        };
        if round.ops.is_empty() && self.in_flight.is_empty() {
            // Decided locally, nothing ahead of it: answer now.
            return self
                .decide
                .finish_round(&round.pending, RoundOutcome::NotSent, now_ms, fx);
        }
        if round.ops.is_empty() {
            // Waits for the rounds ahead of it, to keep order.
            return self.in_flight.push_back(round);
        }
        if self.lanes.is_empty() && !self.open_pipe() {
            // No slot map (no seed answered): nothing is in flight either.
            return self
                .decide
                .finish_round(&round.pending, RoundOutcome::NotSent, now_ms, fx);
        }
        if self.remap {
            self.read_slot_map();
        }
        self.revive();
        let window = self.cfg.idempotency_window.as_millis() as u64;
        let seq = self.first_seq + self.in_flight.len() as u64;
        for lane in &mut self.lanes {
            lane.out.clear();
        }
        for (i, op) in round.ops.iter().enumerate() {
            let lane = &mut self.lanes[lane_of(&self.slots, op)];
            if lane.ready() {
                gavel_redis::resp::encode(op, &self.shas, now_ms, window, &mut lane.out);
                lane.expect.push_back((seq, i));
                round.values.push(Got::Waiting);
            } else {
                // Its master is down: not sent, answered UNAVAILABLE.
                round.values.push(Got::NotSent);
                round.filled += 1;
            }
        }
        self.in_flight.push_back(round);
        // Every part is written before any reply is awaited: the masters
        // work in parallel.
        let mut broken = Vec::new();
        let mut sent = false;
        for (l, lane) in self.lanes.iter_mut().enumerate() {
            if let (false, LaneState::Up(sock)) = (lane.out.is_empty(), &mut lane.state) {
                sent = true;
                if let Err(e) = std::io::Write::write_all(sock, &lane.out) {
                    broken.push((l, format!("write: {e}")));
                }
            }
        }
        if sent {
            self.metrics.redis_round_trips.inc();
        }
        for (l, why) in broken {
            self.fail_lane(l, &why);
        }
        // All of it may have been answered already (its masters down).
        self.finish_ready(fx);
    }

    /// Opens the pipelined connections the first time: reads a cluster's
    /// slot map (from the first seed URL that answers), then connects to
    /// the node or to each master, loading the scripts, one after another.
    /// A master that does not answer starts out down (its slots are
    /// refused) and is retried with backoff like any lane that failed.
    fn open_pipe(&mut self) -> bool {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        if self.cfg.cluster {
            if !self.read_slot_map() {
                return false;
            }
        } else {
            let addr = plain_addr(&self.cfg.urls[0]).unwrap_or_default();
            self.lanes.push(Lane::new(addr));
        }
        for l in 0..self.lanes.len() {
            let addr = self.lanes[l].addr.clone();
            self.epoch += 1;
            self.lanes[l].epoch = self.epoch;
            let opened = open_lane(&addr, self.cfg.timeout, &self.shas);
            self.on_lane(self.epoch, l, opened);
        }
        true
    }

    /// Reads a cluster's slot map and routes each range to its master's
    /// lane (a master new to this shard gets a lane, connected by
    /// [`RedisShard::revive`]; a lane whose master serves nothing any more
    /// just gets no ops). On failure the map stays as it was and is read
    /// again after a backoff.
    fn read_slot_map(&mut self) -> bool {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        // Seeds first whose master answers now.
        let mut seeds: Vec<String> = self
            .lanes
            .iter()
            .filter(|l| l.ready())
            .map(|l| format!("redis://{}", l.addr))
            .collect();
        seeds.extend(self.cfg.urls.iter().cloned());
        let map = match RedisGavel::cluster_slots(&seeds, self.cfg.timeout) {
            Ok(map) => map,
            Err(e) if self.lanes.is_empty() => {
                self.fail(&e);
                return false;
            }
            Err(e) => {
                // The lanes go on with the map they have.
                tracing::warn!(error = %e, "cannot read the cluster's slot map");
                self.metrics.redis_errors.inc();
                self.retry_at = Some(self.backoff.next_attempt());
                return false;
            }
        };
        let mut slots = Vec::with_capacity(map.len());
        for (first, last, url) in map {
            let Some(addr) = plain_addr(&url) else {
                self.fail(&RedisError::Script(format!("master {url}")));
                return false;
            };
            let lane = match self.lanes.iter().position(|l| l.addr == addr) {
                Some(l) => l,
                None => {
                    self.lanes.push(Lane::new(addr));
                    self.lanes.len() - 1
                }
            };
            slots.push((first, last, lane));
        }
        self.slots = slots;
        self.remap = false;
        self.retry_at = None;
        self.backoff.reset();
        true
    }

    /// Starts a reconnect for every lane that is down and due: a thread
    /// connects and loads the scripts, reports ([`RedisEvent::Lane`]), then
    /// reads the connection's replies. The shard never waits for it.
    fn revive(&mut self) {
        let now = Instant::now();
        for (l, lane) in self.lanes.iter_mut().enumerate() {
            if !matches!(lane.state, LaneState::Down(at) if at <= now) {
                continue;
            }
            self.epoch += 1;
            lane.epoch = self.epoch;
            lane.state = LaneState::Connecting;
            let (epoch, addr, timeout) = (self.epoch, lane.addr.clone(), self.cfg.timeout);
            let (shas, tx) = (self.shas.clone(), self.cfg.events.0.clone());
            let spawned = std::thread::Builder::new()
                .name("gavel-redis-reader".into())
                .spawn(move || match open_lane(&addr, timeout, &shas) {
                    Ok(sock) => match sock.try_clone() {
                        Ok(reader) => {
                            if tx.send(RedisEvent::Lane(epoch, l, Ok(sock))).is_ok() {
                                read_replies(reader, epoch, l, &tx);
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(RedisEvent::Lane(epoch, l, Err(e.to_string())));
                        }
                    },
                    Err(e) => {
                        let _ = tx.send(RedisEvent::Lane(epoch, l, Err(e)));
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a redis connection thread");
                lane.state = LaneState::Down(lane.backoff.next_attempt());
            }
        }
    }

    /// A lane's (re)connect is done: up (with its reader thread started
    /// here if the connect was synchronous), or down until its backoff.
    fn on_lane(&mut self, epoch: u64, l: usize, opened: Result<TcpStream, String>) {
        let Some(lane) = self.lanes.get_mut(l) else {
            return;
        };
        if lane.epoch != epoch || !matches!(lane.state, LaneState::Connecting | LaneState::Down(_))
        {
            if let Ok(sock) = opened {
                let _ = sock.shutdown(std::net::Shutdown::Both);
            }
            return;
        }
        match opened {
            Ok(sock) => {
                if matches!(lane.state, LaneState::Down(_)) {
                    // Connected here (open_pipe): start its reader.
                    let reader = sock.try_clone();
                    let tx = self.cfg.events.0.clone();
                    let started = reader.and_then(|r| {
                        std::thread::Builder::new()
                            .name("gavel-redis-reader".into())
                            .spawn(move || read_replies(r, epoch, l, &tx))
                    });
                    if let Err(e) = started {
                        let _ = sock.shutdown(std::net::Shutdown::Both);
                        lane.state = LaneState::Down(lane.backoff.next_attempt());
                        tracing::error!(error = %e, "cannot start a redis reader thread");
                        return;
                    }
                }
                lane.state = LaneState::Up(sock);
                lane.reload = false;
                lane.backoff.reset();
                if lane.down_since.take().is_some() {
                    tracing::info!(master = %lane.addr, "redis is reachable again");
                }
            }
            Err(e) => {
                self.metrics.redis_errors.inc();
                lane.state = LaneState::Down(lane.backoff.next_attempt());
                if lane.down_since.is_none() {
                    lane.down_since = Some(Instant::now());
                    tracing::error!(master = %lane.addr, error = %e,
                        "redis unreachable; answering UNAVAILABLE for its slots until it is back");
                }
            }
        }
        self.note_up();
    }

    /// `gavel_redis_up`: 1 while some lane takes ops (on a cluster, the
    /// masters that answer keep their auctions served; a lost master shows
    /// in the log and in `gavel_redis_errors_total`).
    fn note_up(&self) {
        self.metrics.redis_up.set(self.is_up() as i64);
    }

    /// Replies from one lane's reader thread, in that lane's order.
    pub fn on_replies(
        &mut self,
        epoch: u64,
        lane: usize,
        vs: Result<Vec<Value>, String>,
        fx: &mut Effects,
    ) {
        let current = self
            .lanes
            .get(lane)
            .is_some_and(|l| l.epoch == epoch && matches!(l.state, LaneState::Up(_)));
        if !current {
            return; // from a connection already given up
        }
        let vs = match vs {
            Ok(vs) => vs,
            Err(e) => {
                self.fail_lane(lane, &e);
                return self.finish_ready(fx);
            }
        };
        for v in vs {
            let slot = self.lanes[lane].expect.pop_front();
            let round = slot.and_then(|(seq, i)| {
                let r = self
                    .in_flight
                    .get_mut(seq.checked_sub(self.first_seq)? as usize)?;
                Some((r, i))
            });
            let Some((round, i)) = round else {
                self.fail_lane(lane, "reply without a request");
                return self.finish_ready(fx);
            };
            if let Value::ServerError(e) = &v {
                match e.code() {
                    // Scripts were flushed: reload them by reconnecting
                    // this lane once its replies in flight are in.
                    "NOSCRIPT" => self.lanes[lane].reload = true,
                    // A slot moved: read the slot map again.
                    "MOVED" | "ASK" => self.remap = true,
                    _ => {}
                }
            }
            round.fill(i, Got::Reply(v));
        }
        let l = &self.lanes[lane];
        if l.reload && l.expect.is_empty() {
            self.drop_lane(lane);
            // Due now: a reload is no outage.
            self.lanes[lane].state = LaneState::Down(Instant::now());
            self.revive();
        }
        self.finish_ready(fx);
    }

    /// Answers completed rounds at the front, in order.
    fn finish_ready(&mut self, fx: &mut Effects) {
        while self.in_flight.front().is_some_and(InFlight::complete) {
            let mut r = self.pop_front().expect("checked");
            self.metrics
                .redis_seconds
                .observe(r.sent.elapsed().as_micros() as u64);
            let gone = std::mem::take(&mut r.disconnects);
            self.answer_round(r, fx);
            for c in gone {
                self.decide.disconnect(c);
            }
        }
    }

    /// Answers one complete round: per op, Redis's reply, or what became of
    /// it when its master failed (see [`OpOutcome`]).
    fn answer_round(&mut self, r: InFlight, fx: &mut Effects) {
        debug_assert_eq!(
            r.pending.iter().filter(|p| p.in_pipeline()).count(),
            r.ops.len(),
            "one op per pipelined request"
        );
        let mut outcomes = Vec::with_capacity(r.ops.len());
        for (op, got) in r.ops.iter().zip(r.values) {
            outcomes.push(match got {
                // None: refused by Redis (NOSCRIPT after a flush, MOVED, a
                // script error) — UNAVAILABLE, never a guess.
                Got::Reply(v) => match gavel_redis::scripts::decode(op, &v, r.now_ms) {
                    Some(gavel_redis::OpResult::Busy) => {
                        self.metrics.redis_errors.inc();
                        OpOutcome::Answered(gavel_redis::OpResult::Busy)
                    }
                    Some(res) => OpOutcome::Answered(res),
                    None => {
                        self.metrics.redis_errors.inc();
                        OpOutcome::NotRun
                    }
                },
                Got::Lost => OpOutcome::Lost,
                Got::NotSent | Got::Waiting => OpOutcome::NotRun,
            });
        }
        self.decide
            .finish_round(&r.pending, RoundOutcome::PerOp(outcomes), r.now_ms, fx);
    }

    /// Closes a lane's connection (its reader thread ends; anything it
    /// still sends carries an old epoch) and marks what it carried lost.
    fn drop_lane(&mut self, l: usize) {
        let lane = &mut self.lanes[l];
        if let LaneState::Up(sock) = &lane.state {
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
        lane.state = LaneState::Down(Instant::now());
        lane.reload = false;
        self.epoch += 1;
        lane.epoch = self.epoch;
        for (seq, i) in std::mem::take(&mut lane.expect) {
            if let Some(r) = seq
                .checked_sub(self.first_seq)
                .and_then(|k| self.in_flight.get_mut(k as usize))
            {
                // Written (in part, maybe): it may have run.
                r.fill(i, Got::Lost);
            }
        }
    }

    /// Gives one lane up: the ops it carried are lost (IN_DOUBT for writes,
    /// UNAVAILABLE for reads, once their rounds are answered), and it
    /// reconnects after a backoff. The other lanes go on.
    fn fail_lane(&mut self, l: usize, why: &str) {
        self.drop_lane(l);
        self.metrics.redis_errors.inc();
        let lane = &mut self.lanes[l];
        lane.state = LaneState::Down(lane.backoff.next_attempt());
        if lane.down_since.is_none() {
            lane.down_since = Some(Instant::now());
            tracing::error!(master = %lane.addr, error = %why,
                "redis failed; answering UNAVAILABLE for its slots until it is back");
        }
        self.note_up();
    }

    /// A lane whose oldest op waits longer than the timeout fails.
    fn check_timeouts(&mut self) {
        let timeout = self.cfg.timeout;
        for l in 0..self.lanes.len() {
            let Some(&(seq, _)) = self.lanes[l].expect.front() else {
                continue;
            };
            let late = seq
                .checked_sub(self.first_seq)
                .and_then(|k| self.in_flight.get(k as usize))
                .is_none_or(|r| r.sent.elapsed() > timeout);
            if late {
                self.fail_lane(l, "no reply within --redis-timeout");
            }
        }
    }
}

/// The lane of the master serving `op`'s slot (0 on a single node).
fn lane_of(slots: &[(u16, u16, usize)], op: &ROp) -> usize {
    if slots.is_empty() {
        return 0;
    }
    let slot = gavel_redis::scripts::slot(op);
    let i = slots.partition_point(|&(first, _, _)| first <= slot);
    match i.checked_sub(1).map(|i| slots[i]) {
        Some((_, last, lane)) if slot <= last => lane,
        // A slot no master serves: the first master answers MOVED or
        // CLUSTERDOWN, and the op is refused.
        _ => slots[0].2,
    }
}

impl Backend for RedisShard {
    type Event = RedisEvent;

    fn events(&self) -> Option<Receiver<RedisEvent>> {
        Some(self.cfg.events.1.clone())
    }

    /// At the in-flight cap the runner waits for replies only.
    fn accepts_commands(&self) -> bool {
        self.in_flight.len() < MAX_IN_FLIGHT
    }

    /// One shard round: what Redis must decide goes in one pipeline (in
    /// flight or synchronous); every request is answered in order.
    fn execute(&mut self, cmds: &[Command], now_ms: u64, fx: &mut Effects) {
        let live = self.cfg.updates_live.load(Ordering::Acquire);
        for c in cmds {
            self.decide.plan(c, now_ms, live, &mut self.round);
        }
        self.dispatch(now_ms, fx);
    }

    fn on_event(&mut self, e: RedisEvent, fx: &mut Effects) {
        match e {
            RedisEvent::Replies(epoch, lane, vs) => self.on_replies(epoch, lane, vs, fx),
            RedisEvent::Lane(epoch, lane, opened) => self.on_lane(epoch, lane, opened),
            RedisEvent::Channel(news) => self.on_channel(news, fx),
        }
        self.tell_listener();
    }

    fn on_remote(&mut self, pushes: Vec<Push>, fx: &mut Effects) {
        for push in pushes {
            self.decide.on_update(push, fx);
        }
    }

    fn disconnect(&mut self, conn: ConnRef) {
        match self.in_flight.back_mut() {
            Some(last) => last.disconnects.push(conn),
            None => self.decide.disconnect(conn),
        }
    }

    fn sizes(&self) -> Sizes {
        Sizes {
            subscriptions: self.decide.subscription_count(),
            ..Sizes::default()
        }
    }

    /// Drains replies that arrived meanwhile; a lane waiting longer than
    /// the timeout fails (never a hang), alone; lanes down and due start
    /// reconnecting.
    fn tick(&mut self, fx: &mut Effects) {
        while let Ok(e) = self.cfg.events.1.try_recv() {
            self.on_event(e, fx);
        }
        if self.pipelined {
            self.check_timeouts();
            self.revive();
        }
        if let Some(r) = self.in_flight.front_mut() {
            if !r.complete() && r.filled == r.ops.len() && r.sent.elapsed() > self.cfg.timeout {
                // Redis answered; a channel was not confirmed in time:
                // its SUBSCRIBEs are refused, the rest stands.
                r.waits.clear();
            }
        }
        self.finish_ready(fx);
        self.tell_listener();
    }

    /// Touches the watched auctions past their end.
    fn sweep(&mut self, now_ms: u64, fx: &mut Effects) {
        fx.unstamp();
        self.decide.plan_sweep(now_ms, &mut self.round);
        self.dispatch(now_ms, fx);
        self.tell_listener();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::command::{Op, Reply};
    use gavel_protocol::{BidRequest, ErrorCode, OpenAuctionRequest, Status};
    use gavel_testkit::redis::RedisCluster;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    const C: ConnRef = ConnRef {
        io: 0,
        slot: 1,
        gen: 1,
    };

    fn shard(urls: Vec<String>) -> RedisShard {
        shard_with(urls, Duration::from_secs(5))
    }

    fn shard_with(urls: Vec<String>, timeout: Duration) -> RedisShard {
        let cfg = RedisConfig {
            urls,
            cluster: true,
            timeout,
            idempotency_window: Duration::from_secs(86_400),
            outbid_filter: false,
            updates_live: Arc::new(AtomicBool::new(false)),
            max_subscriptions: 1_000,
            listener: crossbeam_channel::unbounded().0,
            events: crossbeam_channel::unbounded(),
        };
        RedisShard::new(cfg, Arc::new(Metrics::new(1)))
    }

    fn open(id: u64) -> Op {
        Op::OpenAuction(OpenAuctionRequest {
            auction_id: id,
            reserve: 0,
            min_increment: 1,
            ends_at_ms: 0,
        })
    }

    fn bid(id: u64, amount: u64) -> Op {
        Op::Bid(BidRequest {
            auction_id: id,
            bidder_id: 7,
            amount,
            bid_id: amount,
        })
    }

    type Answer = (u32, Result<(Status, bool), ErrorCode>);

    /// `host:port` of the master a bid on auction `id` goes to.
    fn master_of(s: &RedisShard, id: u64) -> String {
        let op = ROp::Bid(BidRequest {
            auction_id: id,
            bidder_id: 7,
            amount: 10,
            bid_id: 10,
        });
        s.lanes[lane_of(&s.slots, &op)].addr.clone()
    }

    /// Sends `rounds` back to back (several in flight), then waits for
    /// every answer; returns (request_id, (status, replayed) or error) in
    /// answer order.
    fn run(s: &mut RedisShard, rounds: &[Vec<Op>]) -> Vec<Answer> {
        let mut fx = Effects::new(1);
        let mut n = 0;
        for ops in rounds {
            let cmds: Vec<Command> = ops
                .iter()
                .map(|op| {
                    n += 1;
                    Command {
                        conn: C,
                        request_id: n,
                        op: *op,
                        t0_us: 0,
                        kind: 0,
                    }
                })
                .collect();
            s.execute(&cmds, 1, &mut fx);
        }
        let rx = s.events().expect("pipelined");
        let deadline = Instant::now() + Duration::from_secs(20);
        while fx.replies[0].len() < n as usize {
            assert!(Instant::now() < deadline, "answers missing");
            if let Ok(ev) = rx.recv_timeout(Duration::from_millis(50)) {
                s.on_event(ev, &mut fx);
            }
            s.tick(&mut fx);
        }
        fx.replies[0]
            .iter()
            .map(|o| match o.reply {
                Reply::Result {
                    request_id,
                    result,
                    flags,
                } => (
                    request_id,
                    Ok((result.status, flags & gavel_protocol::FLAG_REPLAYED != 0)),
                ),
                Reply::Error { request_id, code } => (request_id, Err(code)),
                r => panic!("{r:?}"),
            })
            .collect()
    }

    /// A cluster round is split by master and pipelined: several rounds in
    /// flight over the three masters' connections, every answer in request
    /// order.
    #[test]
    fn cluster_rounds_are_pipelined_and_answered_in_order() {
        let c = RedisCluster::start();
        let mut s = shard(c.urls());
        let ids: Vec<u64> = (1..=60).collect();
        let opened = run(&mut s, &[ids.iter().map(|&id| open(id)).collect()]);
        assert!(
            opened.iter().all(|(_, r)| *r == Ok((Status::Ok, false))),
            "{opened:?}"
        );
        assert_eq!(s.lanes.len(), 3, "one connection per master");
        let rounds: Vec<Vec<Op>> = (1..=4u64)
            .map(|k| ids.iter().map(|&id| bid(id, k * 10)).collect())
            .collect();
        let got = run(&mut s, &rounds);
        let want: Vec<_> = (1..=240).map(|n| (n, Ok((Status::Ok, false)))).collect();
        assert_eq!(got, want);
        assert!(s.in_flight.is_empty());
        assert!(s.lanes.iter().all(|l| l.expect.is_empty()));
    }

    /// A master that lost its scripts refuses its ops (UNAVAILABLE: they did
    /// not run, so a retry is no replay); the other masters' ops stand; the
    /// shard reconnects, reloads, and the retries run.
    #[test]
    fn a_master_without_the_scripts_refuses_only_its_part() {
        let c = RedisCluster::start();
        let urls = c.urls();
        let mut s = shard(urls.clone());
        let ids: Vec<u64> = (1..=60).collect();
        run(&mut s, &[ids.iter().map(|&id| open(id)).collect()]);
        let port = urls[0].rsplit(':').next().unwrap();
        let flushed = |id: u64| master_of(&s, id).ends_with(&format!(":{port}"));
        let flushed: Vec<bool> = ids.iter().map(|&id| flushed(id)).collect();
        let flushed = |id: u64| flushed[id as usize - 1];
        let reply =
            gavel_testkit::redis::raw_command(port.parse().unwrap(), "SCRIPT FLUSH").unwrap();
        assert!(reply.starts_with("+OK"), "{reply}");
        let got = run(&mut s, &[ids.iter().map(|&id| bid(id, 10)).collect()]);
        let mut refused = 0;
        for (&id, (_, r)) in ids.iter().zip(&got) {
            if flushed(id) {
                assert_eq!(*r, Err(ErrorCode::Unavailable), "auction {id}");
                refused += 1;
            } else {
                assert_eq!(*r, Ok((Status::Ok, false)), "auction {id}");
            }
        }
        assert!(refused > 0 && refused < ids.len(), "{refused} refused");
        // Back after the backoff: the refused bids run now (OK, not
        // replays), the others replay.
        let deadline = Instant::now() + Duration::from_secs(20);
        let again = loop {
            let again = run(&mut s, &[ids.iter().map(|&id| bid(id, 10)).collect()]);
            if again.iter().all(|(_, r)| r.is_ok()) {
                break again;
            }
            assert!(Instant::now() < deadline, "no recovery: {again:?}");
            std::thread::sleep(Duration::from_millis(100));
        };
        for (&id, (_, r)) in ids.iter().zip(&again) {
            assert_eq!(*r, Ok((Status::Ok, !flushed(id))), "auction {id}");
        }
    }

    /// One master stopped (SIGSTOP): the round it was part of is answered
    /// once its part times out — its bids IN_DOUBT (written, maybe run), the
    /// other masters' bids OK; the next rounds refuse its part at once
    /// (UNAVAILABLE, not sent) and serve the rest; once it runs again it is
    /// probed, reconnected, and serves its slots again.
    #[test]
    fn a_stopped_master_fails_only_its_part_and_comes_back() {
        let mut c = RedisCluster::start();
        let timeout = Duration::from_millis(500);
        let mut s = shard_with(c.urls(), timeout);
        let ids: Vec<u64> = (1..=60).collect();
        run(&mut s, &[ids.iter().map(|&id| open(id)).collect()]);
        let port = format!(":{}", c.ports()[0]);
        let paused: Vec<bool> = ids
            .iter()
            .map(|&id| master_of(&s, id).ends_with(&port))
            .collect();
        let n = paused.iter().filter(|p| **p).count();
        assert!(n > 0 && n < ids.len(), "{n} auctions on the stopped master");
        let bids = |amount: u64| vec![ids.iter().map(|&id| bid(id, amount)).collect::<Vec<_>>()];
        let check = |got: &[Answer], on_paused: Result<(Status, bool), ErrorCode>| {
            for (k, (_, r)) in got.iter().enumerate() {
                let want = if paused[k] {
                    on_paused
                } else {
                    Ok((Status::Ok, false))
                };
                assert_eq!(*r, want, "auction {}", ids[k]);
            }
        };
        c.pause(0);
        let t = Instant::now();
        let got = run(&mut s, &bids(10));
        check(&got, Err(ErrorCode::InDoubt));
        assert!(t.elapsed() >= timeout, "answered before the timeout");
        assert!(t.elapsed() < timeout * 4, "{:?}", t.elapsed());
        // Known down: refused at once, the rest served.
        let t = Instant::now();
        let got = run(&mut s, &bids(20));
        check(&got, Err(ErrorCode::Unavailable));
        assert!(t.elapsed() < timeout, "{:?}", t.elapsed());
        c.resume(0);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut amount = 100;
        loop {
            amount += 1;
            let got = run(&mut s, &bids(amount));
            if got.iter().all(|(_, r)| *r == Ok((Status::Ok, false))) {
                break;
            }
            check(&got, Err(ErrorCode::Unavailable));
            assert!(Instant::now() < deadline, "no recovery: {got:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The bids in doubt resolve on retry: a RESULT either way.
        let retried = run(&mut s, &bids(10));
        for (k, (_, r)) in retried.iter().enumerate() {
            match r {
                // Accepted then: replayed (on the other masters, always).
                Ok((Status::Ok, true)) => {}
                // Not run then (or rejected, no key kept): evaluated now.
                Ok((Status::Outbid, false)) => assert!(paused[k], "auction {}", ids[k]),
                other => panic!("auction {}: {other:?}", ids[k]),
            }
        }
    }
}
