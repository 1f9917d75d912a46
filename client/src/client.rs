//! [`Client`]: a cheaply cloneable handle to one multiplexed, self-healing
//! connection.
//!
//! Any number of tasks may hold clones and call it at once; their requests
//! share one connection ([`crate::conn`]) and each waits only for its own
//! reply. A **supervisor task** owns the connection's life: when it drops, the
//! supervisor reconnects with [backoff and jitter](crate::Backoff) for as long
//! as a handle lives, renews the subscriptions ([`crate::subscription`]), and
//! callers waiting for a connection proceed. Requests in flight when it
//! dropped are resent under the [retry policy](crate::RetryPolicy) with the
//! same idempotency keys, and [`Outcome::replayed`] says whether the outcome
//! finally returned is the stored one (`REPLAYED`).
//!
//! Dropping the last handle stops the supervisor and closes the connection;
//! open [`Subscription`]s end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gavel_protocol::client::Welcome;
use gavel_protocol::{
    AuctionInfo, BidRequest, BuyRequest, OpenAuctionRequest, OpenSaleRequest, Request, Response,
    ResultPayload, SaleInfo, Status,
};
use tokio::sync::watch;
use tokio::time::timeout_at;

use crate::config::Config;
use crate::conn::Conn;
use crate::error::Error;
use crate::subscription::{Registry, Subscription};

/// The outcome of a `RESULT`-answered request (BID, BUY, OPEN_*, CLOSE, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Status, `value` and `aux` as the server sent them.
    pub result: ResultPayload,
    /// The `REPLAYED` flag: this is the stored outcome of an earlier request
    /// with the same key (a retry whose first attempt had executed, or a
    /// key you reused).
    pub replayed: bool,
    /// Attempts it took (1 = answered the first time).
    pub attempts: u32,
}

impl Outcome {
    pub fn status(&self) -> Status {
        self.result.status
    }

    /// Status `OK`.
    pub fn is_ok(&self) -> bool {
        self.result.status == Status::Ok
    }
}

/// Any reply to [`Client::call`], with its flag and attempt count. Never an
/// `ERROR`: those are returned as [`Error::Server`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub response: Response,
    pub replayed: bool,
    pub attempts: u32,
}

/// What the supervisor publishes to callers.
#[derive(Clone)]
enum Slot {
    /// Reconnecting; `last_error` says why the last attempt failed.
    Down {
        last_error: Option<String>,
    },
    Up(Arc<Conn>),
    /// The client was shut down.
    Closed,
}

/// State shared by the handles, the supervisor and the subscriptions.
pub(crate) struct Shared {
    cfg: Config,
    slot: watch::Sender<Slot>,
    pub(crate) subs: Arc<Registry>,
    in_flight: AtomicUsize,
    reconnects: AtomicUsize,
}

impl Shared {
    /// Best-effort UNSUBSCRIBE when the last [`Subscription`] of an auction is
    /// dropped (needs a runtime; without one the server forgets it when the
    /// connection ends anyway).
    pub(crate) fn unsubscribe_in_background(self: &Arc<Self>, auction_id: u64) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Slot::Up(conn) = self.slot.borrow().clone() else {
            return;
        };
        rt.spawn(async move {
            if let Ok(p) = conn.send(Request::Unsubscribe { auction_id }).await {
                let _ = tokio::time::timeout(Duration::from_secs(5), p.wait()).await;
            }
        });
    }

    async fn wait_conn(&self, deadline: tokio::time::Instant) -> Result<Arc<Conn>, Error> {
        let mut rx = self.slot.subscribe();
        loop {
            let last_error = match &*rx.borrow_and_update() {
                Slot::Up(c) if !c.is_closed() => return Ok(c.clone()),
                Slot::Up(_) => None,
                Slot::Down { last_error } => last_error.clone(),
                Slot::Closed => return Err(Error::Closed),
            };
            match timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Closed),
                Err(_) => return Err(Error::NotConnected { last_error }),
            }
        }
    }

    /// One attempt: a connection, the request sent, its reply.
    async fn attempt(&self, req: &Request) -> Result<gavel_protocol::Frame<Response>, Error> {
        let t = self.cfg.request_timeout;
        let deadline = tokio::time::Instant::now() + t;
        let conn = self.wait_conn(deadline).await?;
        match timeout_at(deadline, async {
            conn.send(req.clone()).await?.wait().await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(t)),
        }
    }

    /// Sends `req`, retrying under the policy; see [`Client::call`].
    async fn call(&self, req: Request) -> Result<Reply, Error> {
        let policy = &self.cfg.retry;
        let covered = policy.covers(&req);
        let start = Instant::now();
        let mut attempts = 0u32;
        let mut in_doubt = false;
        loop {
            attempts += 1;
            let err = match self.attempt(&req).await {
                Ok(f) => match f.body {
                    Response::Error { code, message } => Error::Server { code, message },
                    response => {
                        return Ok(Reply {
                            replayed: f.flags & gavel_protocol::FLAG_REPLAYED != 0,
                            response,
                            attempts,
                        })
                    }
                },
                Err(e) => e,
            };
            in_doubt |= err.outcome_unknown();
            if !(covered && err.is_retryable()) {
                return Err(err);
            }
            let delay = policy.backoff.delay(attempts - 1);
            if attempts >= policy.max_attempts || start.elapsed() + delay > policy.max_elapsed {
                if attempts == 1 {
                    return Err(err);
                }
                return Err(Error::RetriesExhausted {
                    attempts,
                    in_doubt,
                    last: Box::new(err),
                });
            }
            tokio::time::sleep(delay).await;
        }
    }
}

/// Stops the supervisor when the last [`Client`] handle is dropped.
struct Lifeline {
    _stop: watch::Sender<()>,
}

/// An async Gavel client over one multiplexed connection. Clone it freely:
/// clones share the connection.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    _life: Arc<Lifeline>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.shared.cfg.addr)
            .field("connected", &self.is_connected())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Client {
    /// Connects with `cfg` and returns once the first connection is up
    /// (HELLO answered). A failure of this first attempt is returned as is,
    /// so a wrong address or token shows at once; later losses are healed
    /// in the background. Must be called inside a tokio runtime.
    pub async fn connect(cfg: Config) -> Result<Client, Error> {
        let subs = Arc::new(Registry::default());
        let conn = Conn::open(&cfg, subs.clone()).await?;
        let shared = Arc::new(Shared {
            cfg,
            slot: watch::Sender::new(Slot::Up(conn.clone())),
            subs,
            in_flight: AtomicUsize::new(0),
            reconnects: AtomicUsize::new(0),
        });
        let (stop_tx, stop_rx) = watch::channel(());
        tokio::spawn(supervise(shared.clone(), conn, stop_rx));
        Ok(Client {
            shared,
            _life: Arc::new(Lifeline { _stop: stop_tx }),
        })
    }

    /// [`Client::connect`] with the defaults of [`Config::new`].
    pub async fn connect_to(addr: impl Into<String>) -> Result<Client, Error> {
        Client::connect(Config::new(addr)).await
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &Config {
        &self.shared.cfg
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        matches!(&*self.shared.slot.borrow(), Slot::Up(c) if !c.is_closed())
    }

    /// The `WELCOME` of the current connection (`None` while reconnecting).
    pub fn welcome(&self) -> Option<Welcome> {
        match &*self.shared.slot.borrow() {
            Slot::Up(c) => Some(c.welcome()),
            _ => None,
        }
    }

    /// Requests this handle's callers are waiting on (all clones together).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Requests in flight on the current connection, as the connection
    /// counts them.
    pub fn in_flight_on_connection(&self) -> usize {
        match &*self.shared.slot.borrow() {
            Slot::Up(c) => c.in_flight(),
            _ => 0,
        }
    }

    /// How many times the connection was re-established.
    pub fn reconnects(&self) -> usize {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// Sends any request and returns its reply, retrying under the
    /// [`RetryPolicy`](crate::RetryPolicy). An `ERROR` reply is returned as
    /// [`Error::Server`]. Cancel-safe: dropping the future forgets the
    /// request (a late reply is discarded; it may still execute).
    pub async fn call(&self, req: Request) -> Result<Reply, Error> {
        self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        struct Dec<'a>(&'a AtomicUsize);
        impl Drop for Dec<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _dec = Dec(&self.shared.in_flight);
        self.shared.call(req).await
    }

    async fn call_result(&self, req: Request) -> Result<Outcome, Error> {
        let r = self.call(req).await?;
        match r.response {
            Response::Result(result) => Ok(Outcome {
                result,
                replayed: r.replayed,
                attempts: r.attempts,
            }),
            other => Err(Error::Unexpected(format!("{other:?}"))),
        }
    }

    /// `PING`: the server echoes the bytes.
    pub async fn ping(&self, payload: impl Into<Bytes>) -> Result<Bytes, Error> {
        match self.call(Request::Ping(payload.into())).await?.response {
            Response::Pong(b) => Ok(b),
            other => Err(Error::Unexpected(format!("{other:?}"))),
        }
    }

    /// `OPEN_AUCTION`: `OK`, `OK` + replayed for an identical existing one,
    /// or `ALREADY_EXISTS`.
    pub async fn open_auction(&self, req: OpenAuctionRequest) -> Result<Outcome, Error> {
        self.call_result(Request::OpenAuction(req)).await
    }

    /// `BID`, keyed by `bid_id`: retried with the same key; `value`/`aux` of
    /// the outcome are the high bid and bidder after it (PROTOCOL.md §4.2).
    pub async fn bid(&self, req: BidRequest) -> Result<Outcome, Error> {
        self.call_result(Request::Bid(req)).await
    }

    /// `CLOSE_AUCTION`: winning bid and winner in `value`/`aux`. A retry of
    /// a close that had executed answers `CLOSED` with the same winner.
    pub async fn close_auction(&self, auction_id: u64) -> Result<Outcome, Error> {
        self.call_result(Request::CloseAuction { auction_id }).await
    }

    /// `GET_AUCTION`; `None` for `NOT_FOUND`.
    pub async fn get_auction(&self, auction_id: u64) -> Result<Option<AuctionInfo>, Error> {
        match self
            .call(Request::GetAuction { auction_id })
            .await?
            .response
        {
            Response::Auction(a) => Ok(Some(a)),
            Response::Result(r) if r.status == Status::NotFound => Ok(None),
            other => Err(Error::Unexpected(format!("{other:?}"))),
        }
    }

    /// `OPEN_SALE`.
    pub async fn open_sale(&self, req: OpenSaleRequest) -> Result<Outcome, Error> {
        self.call_result(Request::OpenSale(req)).await
    }

    /// `BUY`, keyed by `order_id`: retried with the same key; `value` is the
    /// stock left, `aux` what this buyer holds (PROTOCOL.md §4.2).
    pub async fn buy(&self, req: BuyRequest) -> Result<Outcome, Error> {
        self.call_result(Request::Buy(req)).await
    }

    /// `GET_SALE`; `None` for `NOT_FOUND`.
    pub async fn get_sale(&self, sku_id: u64) -> Result<Option<SaleInfo>, Error> {
        match self.call(Request::GetSale { sku_id }).await?.response {
            Response::Sale(s) => Ok(Some(s)),
            Response::Result(r) if r.status == Status::NotFound => Ok(None),
            other => Err(Error::Unexpected(format!("{other:?}"))),
        }
    }

    /// `SUBSCRIBE`: a stream of the auction's pushes, renewed after every
    /// reconnect (pushes during the gap are lost: see [`crate::subscription`]).
    /// A `CLOSED` or `NOT_FOUND` answer is [`Error::Refused`].
    pub async fn subscribe(&self, auction_id: u64) -> Result<Subscription, Error> {
        // Registered before SUBSCRIBE is sent, so no push after the OK is missed.
        let queue = self
            .shared
            .subs
            .add(auction_id, self.shared.cfg.push_buffer);
        let mut sub = Subscription::new(queue, self.shared.clone());
        match self.call_result(Request::Subscribe { auction_id }).await {
            Ok(o) if o.is_ok() => Ok(sub),
            Ok(o) => {
                sub.active = false;
                Err(Error::Refused(o.result))
            }
            Err(e) => Err(e),
        }
    }
}

/// Owns the connection's life: waits for it to close, reconnects with
/// backoff, renews subscriptions; stops when every handle is gone.
async fn supervise(shared: Arc<Shared>, mut conn: Arc<Conn>, mut stop: watch::Receiver<()>) {
    let cfg = &shared.cfg;
    loop {
        tokio::select! {
            _ = conn.closed() => {}
            _ = stop.changed() => break,
        }
        shared.slot.send_replace(Slot::Down { last_error: None });
        let mut n = 0u32;
        let next = loop {
            let delay = cfg.reconnect.delay(n);
            n = n.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => break None,
            }
            let opened = tokio::select! {
                r = Conn::open(cfg, shared.subs.clone()) => r,
                _ = stop.changed() => break None,
            };
            match opened {
                Ok(c) => break Some(c),
                Err(e) => {
                    shared.slot.send_replace(Slot::Down {
                        last_error: Some(e.to_string()),
                    });
                }
            }
        };
        let Some(next) = next else { break };
        conn = next;
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
        shared.slot.send_replace(Slot::Up(conn.clone()));
        tokio::spawn(resubscribe(shared.clone(), conn.clone()));
    }
    conn.close();
    shared.slot.send_replace(Slot::Closed);
    shared.subs.finish_all();
}

/// SUBSCRIBE again to every followed auction on a fresh connection, then
/// GET_AUCTION each and tell its subscribers where things stand. A failure
/// here means this connection died too; the next one tries again.
async fn resubscribe(shared: Arc<Shared>, conn: Arc<Conn>) {
    let auctions = shared.subs.auctions();
    let t = shared.cfg.request_timeout;
    let ask = |req: Request| {
        let conn = conn.clone();
        async move {
            let p = conn.send(req).await?;
            tokio::time::timeout(t, p.wait())
                .await
                .map_err(|_| Error::Timeout(t))?
        }
    };
    // Pipelined: every SUBSCRIBE, then every GET_AUCTION.
    let mut subs = tokio::task::JoinSet::new();
    for &a in &auctions {
        subs.spawn(ask(Request::Subscribe { auction_id: a }));
    }
    while subs.join_next().await.is_some() {}
    let mut gets = tokio::task::JoinSet::new();
    for &a in &auctions {
        let get = ask(Request::GetAuction { auction_id: a });
        gets.spawn(async move { (a, get.await) });
    }
    while let Some(Ok((a, r))) = gets.join_next().await {
        match r.map(|f| f.body) {
            Ok(Response::Auction(info)) => shared.subs.resubscribed(a, Some(info)),
            Ok(Response::Result(r)) if r.status == Status::NotFound => {
                shared.subs.resubscribed(a, None)
            }
            // Lost again, or an error: the next connection retries.
            _ => {}
        }
    }
}

/// Shared with the pool: current load of a client.
pub(crate) fn load(c: &Client) -> (bool, usize) {
    (c.is_connected(), c.in_flight())
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Client>();
    is::<Subscription>();
    is::<Mutex<()>>();
}
