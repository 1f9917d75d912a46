//! The Redis engine's I/O: the connections to Redis (synchronous client, or
//! pipelined sockets with their reader threads: one to a single node, one to
//! each master of a cluster), rounds in flight, and reconnecting with
//! backoff. What to send and how to answer is decided in [`super::decide`];
//! this file only moves bytes and keeps order.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use gavel_protocol::Push;
use gavel_redis::{Op as ROp, OpResult, RedisError, RedisGavel};
use redis::Value;

use super::decide::{Decisions, Pending, Round, RoundOutcome};
use super::pipe::{plain_addr, read_replies, RedisEvent};
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
    /// The synchronous client (cluster mode, password URLs, script loading).
    conn: Option<RedisGavel>,
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// The round being planned.
    round: Round,
    metrics: Arc<Metrics>,
    /// Pipelined mode: one lane per connection (the node, or each master of
    /// a cluster; none while down), the channel their reader threads answer
    /// on, rounds in flight (`first_seq` numbers the front one), and an
    /// epoch that tells replies of abandoned connections apart.
    lanes: Vec<Lane>,
    /// A cluster's slot ranges and the lane of the master serving each,
    /// sorted by first slot (empty on a single node).
    slots: Vec<(u16, u16, usize)>,
    pipelined: bool,
    in_flight: VecDeque<InFlight>,
    first_seq: u64,
    epoch: u64,
    shas: [String; gavel_redis::scripts::SCRIPTS],
}

/// One pipelined connection: its socket's write side, where its replies go
/// (round number and op index, in the order sent: Redis answers in order),
/// and the bytes of the round being sent.
struct Lane {
    sock: std::net::TcpStream,
    expect: VecDeque<(u64, usize)>,
    out: Vec<u8>,
}

struct InFlight {
    pending: Vec<Pending>,
    ops: Vec<ROp>,
    /// One reply per op, filled as the lanes answer (in any order between
    /// lanes); `filled` counts them.
    values: Vec<Option<Value>>,
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
            pipelined,
            in_flight: VecDeque::new(),
            first_seq: 0,
            epoch: 0,
            shas: gavel_redis::scripts::script_shas(),
        }
    }

    pub fn is_up(&self) -> bool {
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
    /// channels in `waits` (or the listener to go down).
    fn wait_for_channels(&mut self, waits: &mut Vec<u64>) {
        let deadline = Instant::now() + self.cfg.timeout;
        waits.retain(|&id| !self.decide.channel_live(id));
        while !waits.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.cfg.events.1.recv_timeout(left) {
                Ok(RedisEvent::Channel(news)) => {
                    self.decide.on_channel(news);
                    if news == News::Down {
                        return;
                    }
                    waits.retain(|&id| !self.decide.channel_live(id));
                }
                Ok(RedisEvent::Replies(..)) => {} // none in this mode
                Err(_) => return,
            }
        }
    }

    /// News of this shard's channels: rounds waiting for a confirmed channel
    /// go on (and the auction is read again, see
    /// [`Decisions::plan_recheck`]); when the listener went down, the
    /// waiting SUBSCRIBEs are refused.
    fn on_channel(&mut self, news: News, fx: &mut Effects) {
        let fresh = self.decide.on_channel(news);
        let mut waited = false;
        for r in &mut self.in_flight {
            let before = r.waits.len();
            match news {
                News::Live(id) => r.waits.retain(|&w| w != id),
                News::Down => r.waits.clear(),
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
    /// part is, and rounds are answered in order.
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
        let round = InFlight {
            waits,
            pending,
            values: vec![None; ops.len()],
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
            // Down: nothing is in flight (a failure answers all of it).
            return self
                .decide
                .finish_round(&round.pending, RoundOutcome::NotSent, now_ms, fx);
        }
        let window = self.cfg.idempotency_window.as_millis() as u64;
        let seq = self.first_seq + self.in_flight.len() as u64;
        for lane in &mut self.lanes {
            lane.out.clear();
        }
        for (i, op) in round.ops.iter().enumerate() {
            let lane = &mut self.lanes[lane_of(&self.slots, op)];
            gavel_redis::resp::encode(op, &self.shas, now_ms, window, &mut lane.out);
            lane.expect.push_back((seq, i));
        }
        self.in_flight.push_back(round);
        // Every part is written before any reply is awaited: the masters
        // work in parallel.
        let mut written = Ok(());
        for lane in &mut self.lanes {
            if !lane.out.is_empty() {
                written = std::io::Write::write_all(&mut lane.sock, &lane.out);
                if written.is_err() {
                    break;
                }
            }
        }
        match written {
            Ok(()) => {
                self.metrics.redis_round_trips.inc();
            }
            Err(e) => self.fail_pipe(&format!("write: {e}"), fx),
        }
    }

    /// Connects the pipelined sockets, one to the node or one to each master
    /// of the cluster (scripts are loaded, and a cluster's slot map read,
    /// through the synchronous client first), and starts their reader
    /// threads.
    fn open_pipe(&mut self) -> bool {
        let Some(conn) = self.connection() else {
            return false;
        };
        let map = conn.slot_map();
        let mut addrs: Vec<String> = Vec::new();
        self.slots.clear();
        match map {
            None => addrs.push(plain_addr(&self.cfg.urls[0]).unwrap_or_default()),
            Some(map) => {
                for (first, last, url) in map {
                    let Some(addr) = plain_addr(&url) else {
                        self.fail(&RedisError::Script(format!("master {url}")));
                        return false;
                    };
                    let lane = match addrs.iter().position(|a| *a == addr) {
                        Some(l) => l,
                        None => {
                            addrs.push(addr);
                            addrs.len() - 1
                        }
                    };
                    self.slots.push((first, last, lane));
                }
            }
        }
        self.epoch += 1;
        let epoch = self.epoch;
        let tx = self.cfg.events.0.clone();
        let mut lanes = Vec::with_capacity(addrs.len());
        for (i, addr) in addrs.iter().enumerate() {
            let opened = connect(addr, self.cfg.timeout).and_then(|stream| {
                let reader = stream.try_clone()?;
                let tx = tx.clone();
                std::thread::Builder::new()
                    .name("gavel-redis-reader".into())
                    .spawn(move || read_replies(reader, epoch, i, &tx))?;
                Ok(stream)
            });
            match opened {
                Ok(sock) => lanes.push(Lane {
                    sock,
                    expect: VecDeque::new(),
                    out: Vec::new(),
                }),
                Err(e) => {
                    for l in lanes {
                        let _ = l.sock.shutdown(std::net::Shutdown::Both);
                    }
                    self.fail(&RedisError::Script(format!(
                        "pipelined connect to {addr}: {e}"
                    )));
                    return false;
                }
            }
        }
        self.lanes = lanes;
        true
    }

    /// Replies from one lane's reader thread, in that lane's order.
    pub fn on_replies(
        &mut self,
        epoch: u64,
        lane: usize,
        vs: Result<Vec<Value>, String>,
        fx: &mut Effects,
    ) {
        if epoch != self.epoch {
            return; // from a connection already given up
        }
        let vs = match vs {
            Ok(vs) => vs,
            Err(e) => return self.fail_pipe(&e, fx),
        };
        for v in vs {
            let slot = self.lanes.get_mut(lane).and_then(|l| l.expect.pop_front());
            let round = slot.and_then(|(seq, i)| {
                let r = self
                    .in_flight
                    .get_mut(seq.checked_sub(self.first_seq)? as usize)?;
                Some((r, i))
            });
            let Some((round, i)) = round else {
                return self.fail_pipe("reply without a request", fx);
            };
            round.values[i] = Some(v);
            round.filled += 1;
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
            let lost = self.answer_round(r, fx);
            for c in gone {
                self.decide.disconnect(c);
            }
            if let Some(why) = lost {
                // Scripts were flushed, or a slot moved: reload them, or the
                // slot map, by reconnecting both clients.
                self.conn = None;
                self.fail_pipe(why, fx);
            }
        }
    }

    /// Answers one complete round; `Some` if Redis had lost the scripts
    /// (`NOSCRIPT`) or a cluster's slot map changed (`MOVED`, `ASK`): the
    /// ops so refused did not run.
    fn answer_round(&mut self, r: InFlight, fx: &mut Effects) -> Option<&'static str> {
        debug_assert_eq!(
            r.pending.iter().filter(|p| p.in_pipeline()).count(),
            r.ops.len(),
            "one op per pipelined request"
        );
        let mut lost = None;
        let mut values = r.ops.iter().zip(&r.values);
        for p in &r.pending {
            // None: refused by Redis (NOSCRIPT after a flush, MOVED, a
            // script error) — UNAVAILABLE, never a guess; the others stand.
            let res = match p.in_pipeline().then(|| values.next()).flatten() {
                None => None,
                Some((op, v)) => {
                    let v = v.as_ref().expect("a complete round");
                    let res = gavel_redis::scripts::decode(op, v, r.now_ms);
                    if let (None, Value::ServerError(e)) = (&res, v) {
                        match e.code() {
                            "NOSCRIPT" => lost = Some("NOSCRIPT"),
                            "MOVED" | "ASK" => lost = Some("a cluster slot moved"),
                            _ => {}
                        }
                    }
                    if matches!(res, None | Some(OpResult::Busy)) {
                        self.metrics.redis_errors.inc();
                    }
                    res
                }
            };
            self.decide.answer_one(p, res, false, r.now_ms, fx);
        }
        lost
    }

    /// Gives the pipelined connection up: every round in flight is answered
    /// (IN_DOUBT for writes that were sent, UNAVAILABLE for what else needed
    /// Redis), and the shard backs off.
    fn fail_pipe(&mut self, why: &str, fx: &mut Effects) {
        for lane in self.lanes.drain(..) {
            let _ = lane.sock.shutdown(std::net::Shutdown::Both);
        }
        self.epoch += 1;
        self.fail(&RedisError::Script(why.to_string()));
        while let Some(r) = self.pop_front() {
            // A round holding only local answers was never sent.
            let outcome = if r.ops.is_empty() {
                RoundOutcome::NotSent
            } else {
                RoundOutcome::Lost
            };
            self.decide.finish_round(&r.pending, outcome, r.now_ms, fx);
            for c in r.disconnects {
                self.decide.disconnect(c);
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
        _ => 0,
    }
}

/// Connects a TCP stream for the pipeline: no Nagle, bounded writes.
fn connect(addr: &str, timeout: std::time::Duration) -> std::io::Result<std::net::TcpStream> {
    let a = std::net::ToSocketAddrs::to_socket_addrs(addr)?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let s = std::net::TcpStream::connect_timeout(&a, timeout)?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
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

    /// Drains replies that arrived meanwhile; a round waiting longer than
    /// the timeout fails the connection (never a hang).
    fn tick(&mut self, fx: &mut Effects) {
        while let Ok(e) = self.cfg.events.1.try_recv() {
            self.on_event(e, fx);
        }
        if let Some(r) = self.in_flight.front_mut() {
            if !r.complete() && r.sent.elapsed() > self.cfg.timeout {
                if r.filled == r.ops.len() {
                    // Redis answered; a channel was not confirmed in time:
                    // its SUBSCRIBEs are refused, the rest stands.
                    r.waits.clear();
                } else {
                    self.fail_pipe("no reply within --redis-timeout", fx);
                }
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
        let cfg = RedisConfig {
            urls,
            cluster: true,
            timeout: Duration::from_secs(5),
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
        let map = s.conn.as_ref().unwrap().slot_map().unwrap();
        let flushed = |id: u64| {
            let slot = gavel_redis::scripts::slot(&ROp::Bid(BidRequest {
                auction_id: id,
                bidder_id: 7,
                amount: 10,
                bid_id: 10,
            }));
            map.iter()
                .any(|(a, b, url)| (*a..=*b).contains(&slot) && url.ends_with(&format!(":{port}")))
        };
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
}
