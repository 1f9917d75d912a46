//! The load of the fault harness: client threads that bid (rising amounts)
//! and buy, close the auctions scheduled to be closed by request (and now
//! and then close one again, or read one with GET_AUCTION), one request at
//! a time each, and retry every request with the same key until it gets a
//! RESULT — after BUSY, UNAVAILABLE, IN_DOUBT,
//! SHUTTING_DOWN, a timeout or a lost connection (reconnecting). While the
//! nemesis says so, they also drop their connection right after sending.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gavel_protocol::{AuctionState, Client, ClientError, Request, Response};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::history::{misuse, Answer, AuctionView, Op, OpKind, Reply};

/// What the client threads share with the nemesis and each other.
pub struct Shared {
    pub addr: SocketAddr,
    pub epoch: Instant,
    /// No new requests once set; the one in progress is still resolved.
    pub stop: AtomicBool,
    /// After this (ms since epoch), give up resolving (0 = no limit yet).
    pub give_up_at_ms: AtomicU64,
    /// Until this (ms since epoch), drop connections mid-request.
    pub drop_until_ms: AtomicU64,
    /// Next bid amount step, per auction (index = auction id - 1).
    pub auction_steps: Vec<AtomicU64>,
    /// First SKU index of the window buys go to.
    pub sku_window: AtomicUsize,
    /// Auctions to close with CLOSE_AUCTION, in order.
    pub closes: Vec<u64>,
    /// How many of `closes` may be closed now (raised by the nemesis).
    pub close_due: AtomicUsize,
    /// How many of `closes` a client has taken on.
    pub close_next: AtomicUsize,
    pub next_key: AtomicU64,
    /// Bumped by the nemesis before it stops and after it starts
    /// gavel-server (or Redis): see [`super::history::Attempt::gen_sent`].
    pub generation: AtomicU64,
    pub params: LoadParams,
}

/// The shape of the load.
#[derive(Debug, Clone, Copy)]
pub struct LoadParams {
    pub auctions: u64,
    pub skus: u64,
    /// How many consecutive SKUs are bought at a time.
    pub sku_window: u64,
    pub bidders: u64,
    pub buyers: u64,
    pub max_qty: u32,
    pub reserve: u64,
    pub first_amount: u64,
    /// Between consecutive amounts of one auction (below the increment, so
    /// racing bids lose).
    pub amount_step: u64,
    /// Percent of requests that are bids (the rest are buys, closes and
    /// reads).
    pub bid_percent: u32,
    /// Per mille of requests that are GET_AUCTIONs.
    pub get_permille: u32,
    /// Per mille of requests that close again an auction already closed.
    pub reclose_permille: u32,
    pub read_timeout: Duration,
    pub connect_timeout: Duration,
    /// Percent of requests dropped mid-request while drops are on.
    pub drop_percent: u32,
}

impl Shared {
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// One client thread's connection and history.
pub struct Worker {
    id: u32,
    shared: Arc<Shared>,
    rng: SmallRng,
    conn: Option<Client>,
    pub ops: Vec<Op>,
}

impl Worker {
    pub fn new(id: u32, shared: Arc<Shared>, seed: u64) -> Worker {
        Worker {
            id,
            shared,
            rng: SmallRng::seed_from_u64(seed ^ (u64::from(id) << 32)),
            conn: None,
            ops: Vec::new(),
        }
    }

    /// Runs until `stop`, then resolves the request in progress.
    pub fn run(mut self) -> Vec<Op> {
        while !self.shared.stop.load(Ordering::Relaxed) {
            let kind = self.next_op();
            let mut op = Op::new(kind, self.id);
            op.sent_ms = self.shared.now_ms();
            self.ops.push(op);
            let idx = self.ops.len() - 1;
            self.resolve(idx);
            // A little think time keeps the history (and memory) bounded.
            let pause = self.rng.gen_range(0..1500);
            std::thread::sleep(Duration::from_micros(pause));
        }
        self.ops
    }

    fn next_op(&mut self) -> OpKind {
        let p = self.shared.params;
        let due = self.shared.close_due.load(Ordering::Relaxed);
        let next = self.shared.close_next.load(Ordering::Relaxed);
        if next < due.min(self.shared.closes.len())
            && self
                .shared
                .close_next
                .compare_exchange(next, next + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return OpKind::Close {
                auction: self.shared.closes[next],
            };
        }
        let roll = self.rng.gen_range(0..1000);
        if roll < p.get_permille {
            return OpKind::Get {
                auction: self.rng.gen_range(1..=p.auctions),
            };
        }
        if roll < p.get_permille + p.reclose_permille && next > 0 {
            return OpKind::Close {
                auction: self.shared.closes[self.rng.gen_range(0..next)],
            };
        }
        let key = self.shared.next_key.fetch_add(1, Ordering::Relaxed);
        if self.rng.gen_range(0..100) < p.bid_percent {
            let auction = self.rng.gen_range(1..=p.auctions);
            let bidder = self.rng.gen_range(1..=p.bidders);
            // Rarely a bid below the reserve; otherwise the auction's next
            // amount, unique per auction, so the high bid names its bid.
            let amount = if self.rng.gen_range(0..100) == 0 {
                self.rng.gen_range(1..p.reserve)
            } else {
                let n = self.shared.auction_steps[(auction - 1) as usize]
                    .fetch_add(1, Ordering::Relaxed);
                p.first_amount + n * p.amount_step
            };
            OpKind::Bid {
                auction,
                bidder,
                amount,
                bid_id: key,
            }
        } else {
            let first = self.shared.sku_window.load(Ordering::Relaxed) as u64;
            let sku = 1 + (first + self.rng.gen_range(0..p.sku_window.max(1))).min(p.skus - 1);
            OpKind::Buy {
                sku,
                buyer: self.rng.gen_range(1..=p.buyers),
                qty: self.rng.gen_range(1..=p.max_qty),
                order_id: key,
            }
        }
    }

    /// Sends `ops[idx]` until it gets a RESULT (or the give-up time passes).
    fn resolve(&mut self, idx: usize) {
        let req = self.ops[idx].kind.request();
        let mut backoff_ms = 10u64;
        loop {
            let give_up = self.shared.give_up_at_ms.load(Ordering::Relaxed);
            if give_up != 0 && self.shared.now_ms() >= give_up {
                return;
            }
            let gen_sent = self.shared.generation.load(Ordering::SeqCst);
            let Some(answer) = self.attempt(&req) else {
                // Not connected: nothing was sent.
                self.sleep_ms(backoff_ms);
                backoff_ms = (backoff_ms * 2).min(200);
                continue;
            };
            let gen_answered = self.shared.generation.load(Ordering::SeqCst);
            let at = self.shared.now_ms();
            self.ops[idx].push_gen(at, answer, gen_sent, gen_answered);
            match answer {
                Answer::Result(_) | Answer::Auction(_) => return,
                Answer::Error(code) if misuse(code) => {
                    // A retry cannot change that: record it and move on.
                    return;
                }
                Answer::Error(_) => {
                    self.sleep_ms(backoff_ms);
                    backoff_ms = (backoff_ms * 2).min(400);
                }
                _ => {
                    let ms = self.rng.gen_range(5..30);
                    self.sleep_ms(ms);
                }
            }
        }
    }

    fn sleep_ms(&mut self, ms: u64) {
        let jitter = self.rng.gen_range(0..=ms / 2);
        std::thread::sleep(Duration::from_millis(ms + jitter));
    }

    fn connect(&mut self) -> Option<&mut Client> {
        if self.conn.is_none() {
            let p = self.shared.params;
            let stream = TcpStream::connect_timeout(&self.shared.addr, p.connect_timeout).ok()?;
            let _ = stream.set_write_timeout(Some(p.read_timeout));
            let client = Client::from_stream(stream).ok()?;
            client.set_timeout(Some(p.read_timeout)).ok()?;
            self.conn = Some(client);
        }
        self.conn.as_mut()
    }

    /// One attempt; `None` when no connection could be made (not sent).
    fn attempt(&mut self, req: &Request) -> Option<Answer> {
        let drop_now = self.shared.now_ms() < self.shared.drop_until_ms.load(Ordering::Relaxed)
            && self.rng.gen_range(0..100) < self.shared.params.drop_percent;
        let linger_reset = self.rng.gen_bool(0.5);
        let drop_delay_us = self.rng.gen_range(0..3000);
        let client = self.connect()?;
        let rid = client.send(req);
        if client.flush().is_err() {
            self.conn = None;
            return Some(Answer::Lost);
        }
        if drop_now {
            std::thread::sleep(Duration::from_micros(drop_delay_us));
            if let Some(c) = self.conn.take() {
                close_abruptly(c.stream(), linger_reset);
            }
            return Some(Answer::Dropped);
        }
        let answer = match client.recv_for(rid) {
            Ok(frame) => {
                let replayed = frame.replayed();
                match frame.body {
                    Response::Result(r) => {
                        Answer::Result(Reply::new(r.status, r.value, r.aux, replayed))
                    }
                    Response::Auction(i) => Answer::Auction(AuctionView {
                        closed: i.state == AuctionState::Closed,
                        high_bid: i.high_bid,
                        high_bidder: i.high_bidder,
                    }),
                    Response::Error { code, .. } => {
                        if code.closes_connection() {
                            self.conn = None;
                        }
                        Answer::Error(code as u16)
                    }
                    _ => {
                        self.conn = None;
                        Answer::Garbled
                    }
                }
            }
            Err(ClientError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                self.conn = None;
                Answer::Timeout
            }
            Err(ClientError::Decode(_)) | Err(ClientError::Unexpected(_)) => {
                self.conn = None;
                Answer::Garbled
            }
            Err(_) => {
                self.conn = None;
                Answer::Lost
            }
        };
        Some(answer)
    }
}

/// Closes a socket at once (the caller drops it next): with a RST
/// (SO_LINGER 0, then close) or a plain FIN.
fn close_abruptly(stream: &TcpStream, reset: bool) {
    if reset {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid fd and a properly sized, initialised option value.
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    } else {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
}
