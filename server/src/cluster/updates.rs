//! Cross-node fan-out over per-auction channels. Every update is published
//! (`SPUBLISH`) on its auction's shard channel, `gavel:{a:ID}:updates`; this
//! node's listener subscribes (`SSUBSCRIBE`) only to the auctions its own
//! clients watch, on demand: a shard asks for a channel when a SUBSCRIBE
//! comes for an auction it does not follow yet, and answers that SUBSCRIBE
//! once Redis confirmed the channel; it lets the channel go when the last
//! local subscriber leaves or the auction closes. On a Redis Cluster a shard
//! channel lives on the master serving its slot, so the listener holds one
//! connection per master (a single node: one connection).
//!
//! One control thread owns the connections' write side and the set of wanted
//! channels; a reader thread per connection hands updates to the shard owning
//! their auction (one message per shard per read) and confirmations to the
//! shard that asked. Any connection lost ends the session: every shard is
//! told (`Down`), and after a backoff the listener reconnects to every
//! master and subscribes again to every wanted channel. `live` is set once
//! each connection has answered a PING written after those subscriptions:
//! the shards refuse SUBSCRIBE with UNAVAILABLE while it is not.
//!
//! Known gap: a slot moving to another master (resharding) is not followed
//! while the session lasts (the master drops the channel; a reconnect
//! rereads the slot map).

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use gavel_protocol::Push;
use gavel_redis::channels::{self, Event};
use prometheus_client::metrics::counter::Counter;

use super::pipe::RedisEvent;
use crate::backoff::Backoff;
use crate::engine::command::{shard_of, Op};
use crate::shard::ShardMsg;

/// What a shard asks of the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctl {
    /// Subscribe to this auction's channel (answered with [`News::Live`]).
    Want(u64),
    /// Unsubscribe from it.
    Drop(u64),
    /// (From a reader thread) the connection of this session failed.
    Lost(u64),
    /// (From a reader thread) a connection of this session answered its
    /// PING: the session may be live now.
    Ready,
}

/// What the listener tells a shard, on its event channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum News {
    /// Redis confirmed the auction's channel: its updates reach this node.
    Live(u64),
    /// The listener lost its connections: no channel is subscribed until
    /// the wanted ones are confirmed again.
    Down,
}

/// The shard owning an auction (as the event loops route it).
pub fn shard_of_auction(auction_id: u64, shards: usize) -> usize {
    shard_of(Op::GetAuction(auction_id).routing_key(), shards)
}

/// What the listener works with.
pub struct Listener {
    pub urls: Vec<String>,
    pub cluster: bool,
    pub timeout: Duration,
    /// The shards' queues (updates for their subscribers).
    pub shards: Vec<Sender<ShardMsg>>,
    /// The shards' event channels (news of their channels).
    pub news: Vec<Sender<RedisEvent>>,
    pub ctl: Receiver<Ctl>,
    /// For the reader threads to report a lost connection.
    pub ctl_tx: Sender<Ctl>,
    pub shutdown: Arc<AtomicBool>,
    pub live: Arc<AtomicBool>,
    /// Updates received (`gavel_cross_node_updates_received_total`).
    pub received: Counter,
}

/// Starts the listener. Reconnects with backoff; exits at shutdown (it and
/// its readers hold shard queue senders, so they must, for the shards to
/// finish). Pub/sub is fire-and-forget: updates published while it
/// reconnects are not replayed.
pub fn spawn_listener(l: Listener) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("gavel-redis-updates".into())
        .spawn(move || l.run())?;
    Ok(())
}

/// One connection of a session: its write side, the slots its master
/// serves, and what its reader saw.
struct Conn {
    sock: TcpStream,
    ranges: Vec<(u16, u16)>,
    /// Answered the PING written after the session's subscriptions.
    ready: Arc<AtomicBool>,
    /// When its reader last read anything (ms since the session began).
    last_rx: Arc<AtomicU64>,
    ping_at: Option<u64>,
}

/// The connections of one session, shut down when it ends (their readers
/// then end too).
struct Session(Vec<Conn>);

impl Drop for Session {
    fn drop(&mut self) {
        for c in &self.0 {
            let _ = c.sock.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Listener {
    fn run(self) {
        let mut wanted = HashSet::new();
        let mut backoff = Backoff::new();
        let mut epoch = 0u64;
        while !self.shutdown.load(Ordering::Acquire) {
            epoch += 1;
            let r = self.session(epoch, &mut wanted, &mut backoff);
            self.live.store(false, Ordering::Release);
            for tx in &self.news {
                let _ = tx.send(RedisEvent::Channel(News::Down));
            }
            let Err(e) = r else { continue };
            tracing::warn!(error = %e, "redis update channels lost; resubscribing");
            // Back off, still taking the shards' wishes.
            let until = Instant::now() + backoff.next_delay();
            while !self.shutdown.load(Ordering::Acquire) {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match self.ctl.recv_timeout(left.min(Duration::from_millis(200))) {
                    Ok(c) => apply(&mut wanted, c),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    }

    /// Connects to every master, subscribes to the wanted channels, then
    /// serves the shards' wishes until a connection fails or the server
    /// stops (`Ok`).
    fn session(
        &self,
        epoch: u64,
        wanted: &mut HashSet<u64>,
        backoff: &mut Backoff,
    ) -> Result<(), String> {
        let (masters, creds) =
            channels::masters(&self.urls, self.cluster, self.timeout).map_err(|e| e.to_string())?;
        let began = Instant::now();
        let mut urls: Vec<String> = Vec::new();
        let mut ranges: Vec<Vec<(u16, u16)>> = Vec::new();
        for (first, last, url) in masters {
            match urls.iter().position(|u| *u == url) {
                Some(i) => ranges[i].push((first, last)),
                None => {
                    urls.push(url);
                    ranges.push(vec![(first, last)]);
                }
            }
        }
        let mut session = Session(Vec::new());
        for (url, ranges) in urls.iter().zip(ranges) {
            let sock = channels::connect(url, &creds, self.timeout).map_err(|e| e.to_string())?;
            let err = |e: std::io::Error| format!("{url}: {e}");
            sock.set_read_timeout(None).map_err(err)?;
            let conn = Conn {
                sock: sock.try_clone().map_err(err)?,
                ranges,
                ready: Arc::new(AtomicBool::new(false)),
                last_rx: Arc::new(AtomicU64::new(0)),
                ping_at: None,
            };
            let reader = Reader {
                epoch,
                began,
                shards: self.shards.clone(),
                news: self.news.clone(),
                ctl: self.ctl_tx.clone(),
                ready: conn.ready.clone(),
                last_rx: conn.last_rx.clone(),
                received: self.received.clone(),
            };
            std::thread::Builder::new()
                .name("gavel-redis-updates-reader".into())
                .spawn(move || reader.run(sock))
                .map_err(err)?;
            session.0.push(conn);
        }
        let mut out = Vec::new();
        for conn in &mut session.0 {
            out.clear();
            for &id in wanted.iter() {
                if serves(&conn.ranges, id) {
                    channels::ssubscribe(id, &mut out);
                }
            }
            // Answered once every subscription above is: then it is live.
            channels::ping(&mut out);
            conn.sock.write_all(&out).map_err(|e| e.to_string())?;
        }
        let probe_after = 2_000u64;
        let give_up_after = (self.timeout.as_millis() as u64).max(probe_after);
        loop {
            if self.shutdown.load(Ordering::Acquire) {
                return Ok(());
            }
            if !self.live.load(Ordering::Acquire)
                && session.0.iter().all(|c| c.ready.load(Ordering::Acquire))
            {
                self.live.store(true, Ordering::Release);
                backoff.reset();
            }
            // A silent connection is probed with PING: a half-open one
            // (no RST ever comes) must not pass for live.
            let now = began.elapsed().as_millis() as u64;
            for c in &mut session.0 {
                let rx = c.last_rx.load(Ordering::Acquire);
                match c.ping_at {
                    Some(at) if rx >= at => c.ping_at = None,
                    Some(at) if now - at > give_up_after => {
                        return Err("an update connection did not answer PING".into());
                    }
                    Some(_) => {}
                    None if now.saturating_sub(rx) >= probe_after => {
                        out.clear();
                        channels::ping(&mut out);
                        c.sock.write_all(&out).map_err(|e| e.to_string())?;
                        c.ping_at = Some(now);
                    }
                    None => {}
                }
            }
            let wish = match self.ctl.recv_timeout(Duration::from_millis(200)) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            out.clear();
            let id = match wish {
                Ctl::Lost(e) if e == epoch => return Err("an update connection failed".into()),
                Ctl::Lost(_) | Ctl::Ready => continue,
                Ctl::Want(id) => {
                    wanted.insert(id);
                    channels::ssubscribe(id, &mut out);
                    id
                }
                Ctl::Drop(id) if wanted.remove(&id) => {
                    channels::sunsubscribe(id, &mut out);
                    id
                }
                Ctl::Drop(_) => continue,
            };
            // A SSUBSCRIBE of a channel already subscribed is confirmed
            // again: the shard that asked hears of it either way.
            if let Some(c) = session.0.iter_mut().find(|c| serves(&c.ranges, id)) {
                c.sock.write_all(&out).map_err(|e| e.to_string())?;
            }
        }
    }
}

/// Whether a master serving `ranges` holds the auction's channel.
fn serves(ranges: &[(u16, u16)], auction_id: u64) -> bool {
    let slot = redis::cluster_routing::get_slot(gavel_redis::keys::updates(auction_id).as_bytes());
    ranges.iter().any(|&(a, b)| (a..=b).contains(&slot))
}

/// A connection's read side.
struct Reader {
    epoch: u64,
    began: Instant,
    shards: Vec<Sender<ShardMsg>>,
    news: Vec<Sender<RedisEvent>>,
    ctl: Sender<Ctl>,
    ready: Arc<AtomicBool>,
    last_rx: Arc<AtomicU64>,
    received: Counter,
}

impl Reader {
    /// Reads until the connection ends (the session shut it down, or it
    /// failed: then the control thread hears of it).
    fn run(self, mut sock: TcpStream) {
        use std::io::Read;
        let mut per_shard: Vec<Vec<Push>> = vec![Vec::new(); self.shards.len()];
        let mut buf = vec![0u8; 64 * 1024];
        let (mut start, mut end) = (0, 0);
        let lost = loop {
            if start == end {
                (start, end) = (0, 0);
            } else if end == buf.len() {
                buf.copy_within(start..end, 0);
                (start, end) = (0, end - start);
                if end == buf.len() {
                    let n = buf.len() * 2;
                    buf.resize(n, 0);
                }
            }
            let n = match sock.read(&mut buf[end..]) {
                Ok(0) => break "closed".to_string(),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => break e.to_string(),
            };
            end += n;
            self.last_rx
                .store(self.began.elapsed().as_millis() as u64, Ordering::Release);
            if let Err(e) = self.handle(&buf[..end], &mut start, &mut per_shard) {
                break e;
            }
            for (tx, pushes) in self.shards.iter().zip(&mut per_shard) {
                if !pushes.is_empty() {
                    let _ = tx.send(ShardMsg::Remote(std::mem::take(pushes)));
                }
            }
        };
        tracing::debug!(error = %lost, "update connection ended");
        let _ = self.ctl.send(Ctl::Lost(self.epoch));
    }

    /// Every complete reply in `buf[*start..]`.
    fn handle(
        &self,
        buf: &[u8],
        start: &mut usize,
        per_shard: &mut [Vec<Push>],
    ) -> Result<(), String> {
        let n = self.shards.len();
        loop {
            let (v, used) = match gavel_redis::resp::parse(&buf[*start..]) {
                Ok(Some(x)) => x,
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("update channel: {e}")),
            };
            *start += used;
            match channels::event(&v).map_err(|e| e.to_string())? {
                Event::Update(u) => {
                    self.received.inc();
                    per_shard[shard_of_auction(u.auction_id(), n)].push(Push::from(u));
                }
                Event::Subscribed(id) => {
                    let _ = self.news[shard_of_auction(id, n)]
                        .send(RedisEvent::Channel(News::Live(id)));
                }
                Event::Pong => {
                    if !self.ready.swap(true, Ordering::AcqRel) {
                        let _ = self.ctl.send(Ctl::Ready);
                    }
                }
                Event::Unsubscribed(_) | Event::Ok => {}
            }
        }
    }
}

/// Takes a shard's wish into the wanted set.
fn apply(wanted: &mut HashSet<u64>, c: Ctl) {
    match c {
        Ctl::Want(id) => {
            wanted.insert(id);
        }
        Ctl::Drop(id) => {
            wanted.remove(&id);
        }
        Ctl::Lost(_) | Ctl::Ready => {}
    }
}
