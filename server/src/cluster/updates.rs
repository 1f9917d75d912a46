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
//! One control thread owns the connections' write side, the slot map and
//! the set of wanted channels; a reader thread per connection hands updates
//! to the shard owning their auction (one message per shard per read) and
//! confirmations to the shard that asked. Each master's connection fails
//! and comes back on its own: one that breaks, or stays silent past its
//! PING probe (2 s of silence, then `max(--redis-timeout, 2 s)` for the
//! answer), takes down only that master's channels: the shards owning
//! them are told ([`News::Lost`]; their SUBSCRIBEs waiting for one are
//! refused UNAVAILABLE), a channel of that master asked for meanwhile is
//! answered [`News::Lost`] at once (so is one of a slot no master serves),
//! and after a backoff of its own (50 ms–2 s, jitter) the listener rereads
//! the slot map, connects to that master again and subscribes to every
//! wanted channel it serves ([`News::Live`] for each as Redis confirms it).
//! Connecting and reading the slot map run on short-lived threads, so a
//! master that does not answer never holds up the others' subscriptions.
//! `live` (and `/readyz`) says whether at least one master's connection is
//! subscribed and answering (it answered a PING written after its
//! subscriptions).
//!
//! A slot map that changed (read before each reconnect) is followed master
//! by master: those whose address and slots are unchanged keep their
//! connection, the others are dropped (their channels lost) or connected.
//!
//! Known gap: a slot moving to another master (resharding) is not followed
//! while that master's connection lasts (the master drops the channel; the
//! next reconnect rereads the slot map).

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use gavel_protocol::Push;
use gavel_redis::channels::{self, Event};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::pipe::RedisEvent;
use crate::backoff::Backoff;
use crate::engine::command::{shard_of, Op};
use crate::shard::ShardMsg;

/// What a shard asks of the listener (and what its reader threads tell it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctl {
    /// Subscribe to this auction's channel (answered with [`News::Live`],
    /// or at once with [`News::Lost`] while its master's channels are down).
    Want(u64),
    /// Unsubscribe from it.
    Drop(u64),
    /// (From a reader thread) the connection of this attempt ended.
    Lost(u64),
    /// (From a reader thread) a connection answered its first PING.
    Ready,
}

/// What the listener tells a shard, on its event channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum News {
    /// Redis confirmed the auction's channel: its updates reach this node.
    Live(u64),
    /// These channels (sorted) are not subscribed: their master's update
    /// connection was lost, or is down (a channel asked for meanwhile), or
    /// no master serves their slot. Updates of those auctions do not reach
    /// this node until [`News::Live`] says so again (the listener
    /// resubscribes every wanted channel when the master is back).
    Lost(Vec<u64>),
}

/// The shard owning an auction (as the event loops route it).
pub fn shard_of_auction(auction_id: u64, shards: usize) -> usize {
    shard_of(Op::GetAuction(auction_id).routing_key(), shards)
}

/// The cluster slot of an auction's update channel (that of its keys).
fn channel_slot(auction_id: u64) -> u16 {
    redis::cluster_routing::get_slot(gavel_redis::keys::updates(auction_id).as_bytes())
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
    /// Whether at least one master's update channels are subscribed and
    /// answering (`/readyz`).
    pub live: Arc<AtomicBool>,
    /// Updates received (`gavel_cross_node_updates_received_total`).
    pub received: Counter,
    /// Masters of the slot map whose connection is not subscribed and
    /// answering (`gavel_cross_node_update_masters_down`).
    pub masters_down: Gauge,
}

/// Starts the listener. Reconnects each master with a backoff of its own;
/// exits at shutdown (it and its readers hold shard queue senders, so they
/// must, for the shards to finish). Pub/sub is
/// fire-and-forget: updates published while a master's connection is down
/// are not replayed.
pub fn spawn_listener(l: Listener) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("gavel-redis-updates".into())
        .spawn(move || Control::new(l).run())?;
    Ok(())
}

/// A slot map grouped by master: each master's address and the slot ranges
/// it serves, in the map's order.
type Grouped = Vec<(String, Vec<(u16, u16)>)>;

/// Groups `(first, last, url)` ranges by master.
fn group(map: Vec<(u16, u16, String)>) -> Grouped {
    let mut g: Grouped = Vec::new();
    for (first, last, url) in map {
        match g.iter_mut().find(|(u, _)| *u == url) {
            Some((_, r)) => r.push((first, last)),
            None => g.push((url, vec![(first, last)])),
        }
    }
    g
}

/// For each master of a new slot map, the master of the old one it is
/// (same address, same slots: it keeps its connection), if any.
fn carried_over(old: &[(&str, &[(u16, u16)])], new: &Grouped) -> Vec<Option<usize>> {
    new.iter()
        .map(|(url, ranges)| {
            old.iter()
                .position(|(u, r)| u == url && *r == ranges.as_slice())
        })
        .collect()
}

/// Whether a master serving `ranges` holds the auction's channel.
fn serves(ranges: &[(u16, u16)], auction_id: u64) -> bool {
    let slot = channel_slot(auction_id);
    ranges.iter().any(|&(a, b)| (a..=b).contains(&slot))
}

/// The wanted channels a master serving `ranges` holds, per shard (each
/// sorted), as [`News::Lost`] carries them.
fn per_shard<'a>(
    wanted: impl IntoIterator<Item = &'a u64>,
    ranges: &[(u16, u16)],
    shards: usize,
) -> Vec<Vec<u64>> {
    let mut by = vec![Vec::new(); shards];
    for &id in wanted {
        if serves(ranges, id) {
            by[shard_of_auction(id, shards)].push(id);
        }
    }
    by.iter_mut().for_each(|ids| ids.sort_unstable());
    by
}

/// What a connection's liveness calls for (times in ms on one clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    /// Heard from lately, no PING out.
    Fine,
    /// Silent `probe_after`: write a PING.
    Ping,
    /// A PING is out, not answered yet, not for long.
    Waiting,
    /// The PING out was answered.
    Answered,
    /// A PING out for longer than `give_up_after`: the master is lost.
    Dead,
}

/// `heard`: when anything last came in (or the connection opened);
/// `pongs`: PINGs answered so far; `probe`: the PING out (its number among
/// those written, and when).
fn liveness(
    now: u64,
    heard: u64,
    pongs: u64,
    probe: Option<(u64, u64)>,
    probe_after: u64,
    give_up_after: u64,
) -> Liveness {
    match probe {
        Some((n, _)) if pongs >= n => Liveness::Answered,
        Some((_, at)) if now.saturating_sub(at) > give_up_after => Liveness::Dead,
        Some(_) => Liveness::Waiting,
        None if now.saturating_sub(heard) >= probe_after => Liveness::Ping,
        None => Liveness::Fine,
    }
}

/// Silence after which a connection is probed with PING (a half-open one,
/// where no RST ever comes, must not pass for live).
const PROBE_AFTER_MS: u64 = 2_000;

/// What connecting threads and readers tell the control thread.
enum Io {
    /// The slot map, read at start (or while no master is known).
    Map(Result<(Grouped, redis::RedisConnectionInfo), String>),
    /// A master's connection attempt (numbered): the slot map read before
    /// it (a reconnect), and the connection.
    Opened {
        attempt: u64,
        map: Option<Grouped>,
        sock: Result<TcpStream, String>,
    },
}

/// One master's update connection.
struct Master {
    url: String,
    ranges: Vec<(u16, u16)>,
    link: Link,
    backoff: Backoff,
    /// Lost since it was last up (logged once per outage).
    outage: bool,
}

enum Link {
    /// Not connected; the next attempt (rereading the map first if
    /// `reread`) is due at the instant.
    Down(Instant, bool),
    /// A thread connects (this attempt).
    Opening(u64),
    Open(Conn),
}

/// An open connection; shut down when dropped (its reader then ends).
struct Conn {
    attempt: u64,
    sock: TcpStream,
    /// Answered the PING written after its subscriptions: its master counts
    /// for `live`.
    ready: bool,
    opened_ms: u64,
    /// PINGs written, PINGs answered (counted by the reader).
    pings: u64,
    pongs: Arc<AtomicU64>,
    /// When its reader last read anything (ms since the listener began).
    last_rx: Arc<AtomicU64>,
    /// The PING out: its number and when it was written.
    probe: Option<(u64, u64)>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

/// The control thread's state.
struct Control {
    l: Listener,
    began: Instant,
    masters: Vec<Master>,
    creds: Option<redis::RedisConnectionInfo>,
    wanted: HashSet<u64>,
    /// Numbers connection attempts (and their connections).
    attempts: u64,
    /// Reading the slot map while no master is known: in flight, or when
    /// next due.
    map_reading: bool,
    map_at: Instant,
    map_backoff: Backoff,
    io: (Sender<Io>, Receiver<Io>),
}

impl Control {
    fn new(l: Listener) -> Self {
        let now = Instant::now();
        Control {
            l,
            began: now,
            masters: Vec::new(),
            creds: None,
            wanted: HashSet::new(),
            attempts: 0,
            map_reading: false,
            map_at: now,
            map_backoff: Backoff::new(),
            io: crossbeam_channel::unbounded(),
        }
    }

    fn ms(&self) -> u64 {
        self.began.elapsed().as_millis() as u64
    }

    fn give_up_after(&self) -> u64 {
        (self.l.timeout.as_millis() as u64).max(PROBE_AFTER_MS)
    }

    fn run(mut self) {
        let io_rx = self.io.1.clone();
        while !self.l.shutdown.load(Ordering::Acquire) {
            let now = Instant::now();
            self.start_due(now);
            self.check_conns();
            let wait = self
                .next_due()
                .map_or(Duration::from_millis(200), |t| {
                    t.saturating_duration_since(now)
                })
                .min(Duration::from_millis(200));
            crossbeam_channel::select! {
                recv(self.l.ctl) -> c => match c {
                    Ok(c) => self.wish(c),
                    Err(_) => break, // (it holds a sender itself)
                },
                recv(io_rx) -> e => {
                    if let Ok(e) = e {
                        self.on_io(e);
                    }
                }
                default(wait) => {}
            }
        }
        // The connections close (their readers end).
        self.masters.clear();
        self.l.live.store(false, Ordering::Release);
    }

    /// When the next attempt (a map read or a master's reconnect) is due.
    fn next_due(&self) -> Option<Instant> {
        let map = (self.masters.is_empty() && !self.map_reading).then_some(self.map_at);
        self.masters
            .iter()
            .filter_map(|m| match m.link {
                Link::Down(at, _) => Some(at),
                _ => None,
            })
            .chain(map)
            .min()
    }

    /// Starts the attempts due: the slot map while no master is known, each
    /// master down whose backoff is over.
    fn start_due(&mut self, now: Instant) {
        if self.masters.is_empty() && !self.map_reading && now >= self.map_at {
            self.map_reading = true;
            let (urls, cluster, timeout) = (self.l.urls.clone(), self.l.cluster, self.l.timeout);
            let tx = self.io.0.clone();
            let spawned = std::thread::Builder::new()
                .name("gavel-redis-updates-map".into())
                .spawn(move || {
                    let _ = tx.send(Io::Map(read_map(&urls, cluster, timeout)));
                });
            if let Err(e) = spawned {
                self.on_io(Io::Map(Err(e.to_string())));
            }
        }
        for i in 0..self.masters.len() {
            let Link::Down(at, reread) = self.masters[i].link else {
                continue;
            };
            if now < at {
                continue;
            }
            self.attempts += 1;
            let attempt = self.attempts;
            self.masters[i].link = Link::Opening(attempt);
            let (urls, cluster, timeout) = (self.l.urls.clone(), self.l.cluster, self.l.timeout);
            let url = self.masters[i].url.clone();
            let creds = self.creds.clone().unwrap_or_default();
            let tx = self.io.0.clone();
            let spawned = std::thread::Builder::new()
                .name("gavel-redis-updates-connect".into())
                .spawn(move || {
                    let (map, sock) = open(&urls, cluster, timeout, &url, &creds, reread);
                    let _ = tx.send(Io::Opened { attempt, map, sock });
                });
            if let Err(e) = spawned {
                self.failed(i, e.to_string());
            }
        }
    }

    /// Probes silent connections, gives up on those that do not answer,
    /// and marks up those that answered their first PING.
    fn check_conns(&mut self) {
        let now = self.ms();
        let give_up_after = self.give_up_after();
        for i in 0..self.masters.len() {
            let Link::Open(c) = &mut self.masters[i].link else {
                continue;
            };
            let pongs = c.pongs.load(Ordering::Acquire);
            let heard = c.last_rx.load(Ordering::Acquire).max(c.opened_ms);
            let failure = match liveness(now, heard, pongs, c.probe, PROBE_AFTER_MS, give_up_after)
            {
                Liveness::Fine | Liveness::Waiting => None,
                Liveness::Answered => {
                    c.probe = None;
                    None
                }
                Liveness::Ping => {
                    let mut out = Vec::new();
                    channels::ping(&mut out);
                    match c.sock.write_all(&out) {
                        Ok(()) => {
                            c.pings += 1;
                            c.probe = Some((c.pings, now));
                            None
                        }
                        Err(e) => Some(format!("PING: {e}")),
                    }
                }
                Liveness::Dead => Some(format!("no answer to PING within {give_up_after} ms")),
            };
            let now_ready = failure.is_none() && !c.ready && pongs >= 1;
            c.ready |= now_ready;
            if let Some(why) = failure {
                self.lose(i, why);
            } else if now_ready {
                let m = &mut self.masters[i];
                m.backoff.reset();
                if std::mem::take(&mut m.outage) {
                    tracing::info!(master = %m.url, "redis update channels subscribed again");
                }
                self.sync_live();
            }
        }
    }

    /// `live` and the gauge, from the masters' states.
    fn sync_live(&self) {
        let ready = |m: &&Master| matches!(&m.link, Link::Open(c) if c.ready);
        let up = self.masters.iter().filter(ready).count();
        self.l.live.store(up > 0, Ordering::Release);
        self.l.masters_down.set((self.masters.len() - up) as i64);
    }

    /// The master serving the auction's channel.
    fn master_of(&self, id: u64) -> Option<usize> {
        self.masters.iter().position(|m| serves(&m.ranges, id))
    }

    fn wish(&mut self, c: Ctl) {
        let mut out = Vec::new();
        let id = match c {
            Ctl::Want(id) => {
                self.wanted.insert(id);
                channels::ssubscribe(id, &mut out);
                id
            }
            Ctl::Drop(id) if self.wanted.remove(&id) => {
                channels::sunsubscribe(id, &mut out);
                id
            }
            Ctl::Drop(_) => return,
            Ctl::Lost(attempt) => {
                let found = self
                    .masters
                    .iter()
                    .position(|m| matches!(&m.link, Link::Open(c) if c.attempt == attempt));
                if let Some(i) = found {
                    self.lose(i, "the connection ended".into());
                }
                return;
            }
            // The loop's next turn marks the master up.
            Ctl::Ready => return,
        };
        // A SSUBSCRIBE of a channel already subscribed is confirmed again:
        // the shard that asked hears of it either way. A channel whose
        // master is not connected is not (it is, once the master is back).
        let sent = match self.master_of(id) {
            Some(i) => match &mut self.masters[i].link {
                Link::Open(conn) => match conn.sock.write_all(&out) {
                    Ok(()) => true,
                    Err(e) => {
                        self.lose(i, format!("write: {e}"));
                        false
                    }
                },
                _ => false,
            },
            None => false,
        };
        if !sent && matches!(c, Ctl::Want(_)) {
            let shard = shard_of_auction(id, self.l.news.len());
            let _ = self.l.news[shard].send(RedisEvent::Channel(News::Lost(vec![id])));
        }
    }

    fn on_io(&mut self, e: Io) {
        match e {
            Io::Map(r) => {
                self.map_reading = false;
                match r {
                    Ok((map, _)) if map.is_empty() => {
                        tracing::warn!("redis update channels: no master serves a slot");
                        self.map_at = Instant::now() + self.map_backoff.next_delay();
                    }
                    Ok((map, creds)) => {
                        self.map_backoff.reset();
                        self.creds = Some(creds);
                        self.follow(map, false);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "redis update channels: cannot read the slot map");
                        self.map_at = Instant::now() + self.map_backoff.next_delay();
                    }
                }
            }
            Io::Opened { attempt, map, sock } => {
                if let Some(map) = map {
                    self.follow(map, true);
                }
                let found = self
                    .masters
                    .iter()
                    .position(|m| matches!(m.link, Link::Opening(a) if a == attempt));
                // Else the map no longer has that master: `sock` closes.
                if let Some(i) = found {
                    match sock {
                        Ok(sock) => self.opened(i, attempt, sock),
                        Err(e) => self.failed(i, e),
                    }
                }
            }
        }
    }

    /// Follows a slot map: masters unchanged keep their state, the others
    /// are dropped (their channels lost) or added (connecting at once).
    fn follow(&mut self, map: Grouped, reread: bool) {
        let old: Vec<(&str, &[(u16, u16)])> = self
            .masters
            .iter()
            .map(|m| (m.url.as_str(), m.ranges.as_slice()))
            .collect();
        let carried = carried_over(&old, &map);
        if carried.iter().all(Option::is_some) && map.len() == old.len() {
            return;
        }
        tracing::info!(
            masters = map.len(),
            "redis update channels: slot map changed"
        );
        let mut old: Vec<Option<Master>> = self.masters.drain(..).map(Some).collect();
        for ((url, ranges), from) in map.into_iter().zip(carried) {
            let m = from.and_then(|i| old[i].take()).unwrap_or(Master {
                url,
                ranges,
                link: Link::Down(Instant::now(), reread),
                backoff: Backoff::new(),
                outage: false,
            });
            self.masters.push(m);
        }
        for m in old.into_iter().flatten() {
            self.tell_lost(&m.ranges);
        }
        self.sync_live();
    }

    /// A master's connection is open: subscribe to its wanted channels,
    /// then PING (answered once they all are: then its slots are up).
    fn opened(&mut self, i: usize, attempt: u64, sock: TcpStream) {
        let mut out = Vec::new();
        for &id in &self.wanted {
            if serves(&self.masters[i].ranges, id) {
                channels::ssubscribe(id, &mut out);
            }
        }
        channels::ping(&mut out);
        let now = self.ms();
        let conn = Conn {
            attempt,
            sock,
            ready: false,
            opened_ms: now,
            pings: 1,
            pongs: Arc::new(AtomicU64::new(0)),
            last_rx: Arc::new(AtomicU64::new(0)),
            probe: Some((1, now)),
        };
        let reader = Reader {
            attempt,
            began: self.began,
            shards: self.l.shards.clone(),
            news: self.l.news.clone(),
            ctl: self.l.ctl_tx.clone(),
            pongs: conn.pongs.clone(),
            last_rx: conn.last_rx.clone(),
            received: self.l.received.clone(),
        };
        let started = (|| {
            conn.sock.set_read_timeout(None)?;
            let rx = conn.sock.try_clone()?;
            std::thread::Builder::new()
                .name("gavel-redis-updates-reader".into())
                .spawn(move || reader.run(rx))?;
            (&conn.sock).write_all(&out)
        })();
        // Open even if that failed: `lose` then closes it, so its reader
        // (if started) ends.
        self.masters[i].link = Link::Open(conn);
        if let Err(e) = started {
            self.lose(i, e.to_string());
        }
    }

    /// A connection attempt failed: try again after the master's backoff.
    fn failed(&mut self, i: usize, why: String) {
        let m = &mut self.masters[i];
        if !std::mem::replace(&mut m.outage, true) {
            tracing::warn!(master = %m.url, error = %why,
                "redis update channels of this master down; SUBSCRIBE on its auctions is UNAVAILABLE until it is back");
        } else {
            tracing::debug!(master = %m.url, error = %why, "redis update channels: reconnect failed");
        }
        m.link = Link::Down(Instant::now() + m.backoff.next_delay(), true);
        self.sync_live();
    }

    /// A master's connection is lost: its slots go down, the shards owning
    /// its channels are told, and it reconnects after its backoff.
    fn lose(&mut self, i: usize, why: String) {
        let m = &mut self.masters[i];
        m.link = Link::Down(Instant::now(), true); // closes the connection
        let ranges = m.ranges.clone();
        self.tell_lost(&ranges);
        self.failed(i, why);
    }

    /// Tells each shard which of its channels a master serving `ranges`
    /// held.
    fn tell_lost(&self, ranges: &[(u16, u16)]) {
        let by = per_shard(&self.wanted, ranges, self.l.news.len());
        for (tx, ids) in self.l.news.iter().zip(by) {
            if !ids.is_empty() {
                let _ = tx.send(RedisEvent::Channel(News::Lost(ids)));
            }
        }
    }
}

/// The slot map grouped by master, and the credentials.
fn read_map(
    urls: &[String],
    cluster: bool,
    timeout: Duration,
) -> Result<(Grouped, redis::RedisConnectionInfo), String> {
    let (map, creds) = channels::masters(urls, cluster, timeout).map_err(|e| e.to_string())?;
    Ok((group(map), creds))
}

/// A connection attempt to `url` (a thread of its own: it may wait up to
/// `timeout` or longer), the slot map read first if `reread`.
fn open(
    urls: &[String],
    cluster: bool,
    timeout: Duration,
    url: &str,
    creds: &redis::RedisConnectionInfo,
    reread: bool,
) -> (Option<Grouped>, Result<TcpStream, String>) {
    let map = if reread && cluster {
        match read_map(urls, cluster, timeout) {
            Ok((g, _)) => Some(g),
            Err(e) => return (None, Err(format!("slot map: {e}"))),
        }
    } else {
        None
    };
    if map
        .as_ref()
        .is_some_and(|g| !g.iter().any(|(u, _)| u == url))
    {
        return (map, Err(format!("{url} is no longer a master")));
    }
    let sock = channels::connect(url, creds, timeout).map_err(|e| format!("{url}: {e}"));
    (map, sock)
}

/// A connection's read side.
struct Reader {
    attempt: u64,
    began: Instant,
    shards: Vec<Sender<ShardMsg>>,
    news: Vec<Sender<RedisEvent>>,
    ctl: Sender<Ctl>,
    pongs: Arc<AtomicU64>,
    last_rx: Arc<AtomicU64>,
    received: Counter,
}

impl Reader {
    /// Reads until the connection ends (the control thread shut it down,
    /// or it failed: then the control thread hears of it).
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
        let _ = self.ctl.send(Ctl::Lost(self.attempt));
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
                    if self.pongs.fetch_add(1, Ordering::AcqRel) == 0 {
                        let _ = self.ctl.send(Ctl::Ready);
                    }
                }
                Event::Unsubscribed(_) | Event::Ok => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the auction's channel is in slots `a..=b`.
    fn within(a: u16, b: u16) -> impl Fn(&u64) -> bool {
        move |&id| (a..=b).contains(&channel_slot(id))
    }

    #[test]
    fn a_lost_master_names_its_channels_to_their_shards_only() {
        let wanted: HashSet<u64> = (1..300).collect();
        let ranges = [(10923u16, 16383u16)];
        let by = per_shard(&wanted, &ranges, 4);
        let mut all: Vec<u64> = by.iter().flatten().copied().collect();
        all.sort_unstable();
        let want: Vec<u64> = (1..300).filter(within(10923, 16383)).collect();
        assert!(!want.is_empty() && want.len() < 299);
        assert_eq!(all, want, "exactly that master's channels");
        for (shard, ids) in by.iter().enumerate() {
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "sorted");
            assert!(ids.iter().all(|&id| shard_of_auction(id, 4) == shard));
        }
    }

    #[test]
    fn a_changed_map_keeps_only_the_masters_it_did_not_change() {
        let g = group(vec![
            (0, 100, "redis://a".into()),
            (101, 200, "redis://b".into()),
            (201, 300, "redis://a".into()),
            (301, 16383, "redis://c".into()),
        ]);
        assert_eq!(
            g,
            vec![
                ("redis://a".to_string(), vec![(0, 100), (201, 300)]),
                ("redis://b".to_string(), vec![(101, 200)]),
                ("redis://c".to_string(), vec![(301, 16383)]),
            ]
        );
        let old: Vec<(&str, &[(u16, u16)])> =
            g.iter().map(|(u, r)| (u.as_str(), r.as_slice())).collect();
        assert_eq!(carried_over(&old, &g), [Some(0), Some(1), Some(2)]);
        // b failed over to d; c gave slots 301..400 to a.
        let new = group(vec![
            (0, 100, "redis://a".into()),
            (101, 200, "redis://d".into()),
            (201, 400, "redis://a".into()),
            (401, 16383, "redis://c".into()),
        ]);
        assert_eq!(carried_over(&old, &new), [None, None, None]);
        let new = group(vec![
            (0, 100, "redis://a".into()),
            (101, 200, "redis://d".into()),
            (201, 300, "redis://a".into()),
            (301, 16383, "redis://c".into()),
        ]);
        assert_eq!(carried_over(&old, &new), [Some(0), None, Some(2)]);
    }

    #[test]
    fn a_silent_connection_is_probed_then_given_up() {
        let (p, g) = (2_000, 3_000);
        assert_eq!(liveness(1_000, 500, 0, None, p, g), Liveness::Fine);
        assert_eq!(liveness(2_500, 500, 0, None, p, g), Liveness::Ping);
        // PING number 3 written at 2500: two answered so far.
        assert_eq!(
            liveness(4_000, 500, 2, Some((3, 2_500)), p, g),
            Liveness::Waiting
        );
        assert_eq!(
            liveness(5_500, 500, 2, Some((3, 2_500)), p, g),
            Liveness::Waiting
        );
        assert_eq!(
            liveness(5_501, 500, 2, Some((3, 2_500)), p, g),
            Liveness::Dead
        );
        assert_eq!(
            liveness(9_000, 5_000, 3, Some((3, 2_500)), p, g),
            Liveness::Answered,
            "answered, however late the check"
        );
        // A new connection's first PING (number 1) is its probe: not
        // answered within the give-up time, it is dead.
        assert_eq!(liveness(3_001, 0, 0, Some((1, 0)), p, g), Liveness::Dead);
        assert_eq!(liveness(100, 0, 1, Some((1, 0)), p, g), Liveness::Answered);
    }
}
