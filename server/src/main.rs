//! `gavel-server`: wires the listener, event loops, shards and signals together.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use clap::Parser;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tracing_subscriber::EnvFilter;

use gavel_server::auth::AuthTokens;
use gavel_server::batch_writer::{self, StoreGate, WriterConfig};
use gavel_server::command::{shard_of, Op, ShardMsg};
use gavel_server::config::{AckMode, Config, LogFormat};
use gavel_server::event_loop::{EventLoop, Shared};
use gavel_server::listener;
use gavel_server::metrics::Metrics;
use gavel_server::metrics_http;
use gavel_server::redis_backend::{RedisConfig, RedisShard};
use gavel_server::shard::{self, LoopHandle, ShardBackends, ShardHandle, ShardState};
use gavel_server::store::{self, Snapshot};
use gavel_server::tls;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_logging(config.log_format);
    let shard_count = config.shard_count();
    let durable = config.ack == AckMode::Durable;
    let auth = AuthTokens::new(
        config.auth_token.as_deref(),
        config.auth_token_file.as_deref(),
    )
    .map_err(anyhow::Error::msg)?
    .map(Arc::new);
    let tls_config = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls::server_config(cert, key).map_err(anyhow::Error::msg)?),
        _ => None,
    };

    // Open the store and read back its state before serving anything.
    let store = store::open(&config.store, durable, config.store_timeout)
        .with_context(|| format!("cannot open store {}", config.store))?;
    let mut states: Vec<ShardState> = (0..shard_count)
        .map(|_| {
            ShardState::new(
                config.idempotency_window.as_millis() as u64,
                (config.idempotency_max_keys / shard_count).max(1),
            )
        })
        .collect();
    let redis = config.redis_urls();
    let mut store = match store {
        // In cross-node mode Redis holds the state; the store is a log.
        Some(s) if redis.is_some() => Some(s),
        Some(mut s) => {
            let since =
                shard::now_ms().saturating_sub(config.idempotency_window.as_millis() as u64);
            let snap = s
                .load(since)
                .with_context(|| format!("cannot load state from {}", config.store))?;
            restore(&mut states, &snap);
            tracing::info!(
                auctions = snap.auctions.len(),
                sales = snap.sales.len(),
                bids = snap.bids.len(),
                orders = snap.orders.len(),
                "state recovered from the store"
            );
            Some(s)
        }
        None => None,
    };
    let io_threads = config.io_threads.max(1);

    let std_listener = listener::bind(config.listen, config.backlog)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = std_listener.local_addr()?;

    // Event loops' polls and wakers exist before the shards that wake them.
    let mut polls = Vec::new();
    let mut loop_handles = Vec::new();
    let mut reply_rxs = Vec::new();
    for _ in 0..io_threads {
        let poll = mio::Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), EventLoop::waker_token())?);
        let (tx, rx) = crossbeam_channel::unbounded();
        polls.push(poll);
        loop_handles.push(LoopHandle { replies: tx, waker });
        reply_rxs.push(rx);
    }

    let metrics = Arc::new(Metrics::new(shard_count));
    let mut gate_for_metrics = None;
    let (writer, writer_thread) = match store.take() {
        Some(s) => {
            let gate = Arc::new(StoreGate::new(shard_count, config.writer_queue, durable));
            gate_for_metrics = Some(gate.clone());
            let (h, t) = batch_writer::spawn(
                s,
                gate,
                loop_handles.clone(),
                WriterConfig {
                    flush_interval: config.flush_interval,
                    batch_max: config.batch_max as usize,
                    store_timeout: config.store_timeout,
                },
                metrics.clone(),
            )?;
            (Some(h), Some(t))
        }
        None => (None, None),
    };

    // Set while this node's update listener is subscribed: a SUBSCRIBE is
    // answered OK only then, so an OK means updates will arrive.
    let updates_live = Arc::new(AtomicBool::new(false));
    let mut shard_handles = Vec::new();
    let mut shard_threads = Vec::new();
    for (i, state) in states.into_iter().enumerate() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let queued = Arc::new(AtomicUsize::new(0));
        shard_threads.push(shard::spawn(
            i,
            state,
            rx,
            queued.clone(),
            loop_handles.clone(),
            ShardBackends {
                sweep_interval: config.sweep_interval,
                writer: writer.clone(),
                redis: redis.as_ref().map(|(urls, cluster)| {
                    RedisShard::new(
                        RedisConfig {
                            urls: urls.clone(),
                            cluster: *cluster,
                            timeout: config.redis_timeout,
                            idempotency_window: config.idempotency_window,
                            outbid_filter: config.outbid_filter,
                            updates_live: updates_live.clone(),
                        },
                        metrics.clone(),
                    )
                }),
            },
        )?);
        shard_handles.push(ShardHandle { tx, queued });
    }

    let shutdown = Arc::new(AtomicBool::new(false));
    if let Some((urls, _)) = &redis {
        spawn_update_listener(
            urls[0].clone(),
            config.redis_timeout,
            shard_handles.iter().map(|h| h.tx.clone()).collect(),
            shutdown.clone(),
            updates_live.clone(),
        )?;
    }
    let shared = Arc::new(Shared {
        shards: shard_handles,
        shard_queue: config.shard_queue,
        auth: auth.clone(),
        max_payload: config.max_payload,
        max_in_flight: config.max_in_flight.max(1),
        output_cap: config.output_cap,
        subscriber_cap: config.subscriber_cap,
        send_buffer: config.send_buffer,
        max_connections: config.max_connections,
        max_connections_per_ip: config.max_connections_per_ip,
        per_ip: Mutex::new(HashMap::new()),
        refused_per_ip: AtomicU64::new(0),
        rate_per_conn: config.rate_per_conn,
        rate_per_bidder: config.rate_per_bidder,
        rate_max_bidders: config.rate_max_bidders,
        tls: tls_config,
        idle_timeout: config.idle_timeout,
        shutdown_grace: config.shutdown_grace,
        node_id: config.node_id,
        shutdown: shutdown.clone(),
        open_connections: AtomicUsize::new(0),
        metrics: metrics.clone(),
    });

    if let Some(addr) = config.metrics_listen {
        // Weak: the shard queues' senders live in `shared`, and shards only
        // exit once every sender is gone, so the metrics thread must not keep
        // it alive through shutdown.
        let live = Arc::downgrade(&shared);
        let gate = gate_for_metrics.clone();
        let refresh = Box::new(move |m: &Metrics| {
            let Some(live) = live.upgrade() else {
                return;
            };
            m.open_connections
                .set(live.open_connections.load(Ordering::Relaxed) as i64);
            for (i, s) in live.shards.iter().enumerate() {
                m.set_shard_queue(i, s.queued.load(Ordering::Relaxed));
            }
            m.sync_refused("per_ip", live.refused_per_ip.load(Ordering::Relaxed));
            if let Some(g) = &gate {
                m.writer_queue.set(g.queued() as i64);
                m.store_up.set(g.is_up() as i64);
            }
        });
        let gate = gate_for_metrics.clone();
        let redis_mode = redis.is_some();
        let (m, live) = (metrics.clone(), updates_live.clone());
        let ready = Box::new(move || match &gate {
            Some(g) if !g.is_up() => Err("the store is not accepting writes".to_string()),
            _ if redis_mode && m.redis_up.get() == 0 => {
                Err("redis is unreachable (answering UNAVAILABLE)".to_string())
            }
            _ if redis_mode && !live.load(Ordering::Acquire) => {
                Err("the redis update channel is not subscribed".to_string())
            }
            _ => Ok(()),
        });
        let bound = metrics_http::spawn(addr, metrics.clone(), refresh, ready)
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        tracing::info!(%bound, "metrics on http://{bound}/metrics");
        // Scripts and tests find the port here when they asked for port 0.
        eprintln!("metrics on {bound}");
    }

    let wakers: Vec<_> = loop_handles.iter().map(|l| l.waker.clone()).collect();
    drop(loop_handles);
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let flag = shutdown.clone();
    // Not `shared`: this thread outlives the loops, and holding the shard
    // queues would keep the shards from finishing.
    let for_reload = auth;
    std::thread::Builder::new()
        .name("gavel-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    // Rotate auth tokens; connections past HELLO are untouched.
                    match &for_reload {
                        Some(auth) if auth.has_file() => match auth.reload() {
                            Ok(n) => tracing::info!(tokens = n, "SIGHUP: auth tokens reloaded"),
                            Err(e) => tracing::error!(
                                error = %e,
                                "SIGHUP: auth token reload failed; the previous tokens stay in force"
                            ),
                        },
                        _ => tracing::info!("SIGHUP: nothing to reload (no --auth-token-file)"),
                    }
                    continue;
                }
                tracing::info!(signal = sig, "signal received");
                flag.store(true, Ordering::Release);
                for w in &wakers {
                    let _ = w.wake();
                }
            }
        })?;

    let mut loops = Vec::new();
    for (io, (poll, rx)) in polls.into_iter().zip(reply_rxs).enumerate() {
        let l = std_listener.try_clone()?;
        let ev = EventLoop::new(io as u16, poll, l, rx, shared.clone())?;
        loops.push(
            std::thread::Builder::new()
                .name(format!("gavel-io-{io}"))
                .spawn(move || ev.run())?,
        );
    }
    drop(std_listener);
    tracing::info!(
        %local,
        shards = shard_count,
        io_threads,
        store = %config.store,
        ack = ?config.ack,
        "gavel-server ready"
    );
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {local}")?;
        out.flush()?;
    }

    let mut failed = false;
    for l in loops {
        match l.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "event loop failed");
                failed = true;
            }
            Err(_) => failed = true,
        }
    }
    // Dropping the last handles to the shard queues lets shard threads finish.
    drop(shared);
    for t in shard_threads {
        let _ = t.join();
    }
    // The shards held the last writer handles: the writer commits what is
    // left, releases the replies and exits.
    drop(writer);
    if let Some(t) = writer_thread {
        let _ = t.join();
    }
    tracing::info!("gavel-server stopped");
    if failed {
        bail!("an event loop failed");
    }
    Ok(())
}

/// Cross-node fan-out: listens on the Redis update channel and hands each
/// update to the shard owning its auction, which pushes it to this node's
/// subscribers. Reconnects with backoff; exits at shutdown (it holds shard
/// queue senders, so it must, for the shards to finish). Pub/sub is
/// fire-and-forget: updates published while this listener reconnects are
/// not replayed; `live` tells the shards when it is subscribed (they refuse
/// SUBSCRIBE with UNAVAILABLE otherwise).
fn spawn_update_listener(
    url: String,
    timeout: std::time::Duration,
    shards: Vec<crossbeam_channel::Sender<ShardMsg>>,
    shutdown: Arc<AtomicBool>,
    live: Arc<AtomicBool>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("gavel-redis-updates".into())
        .spawn(move || {
            let mut backoff = std::time::Duration::from_millis(50);
            while !shutdown.load(Ordering::Acquire) {
                // One message per shard per read, not one per update.
                let mut per_shard: Vec<Vec<gavel_protocol::Push>> = vec![Vec::new(); shards.len()];
                let r = gavel_redis::subscribe_updates(&url, timeout, |us| {
                    // Called once Redis confirmed the subscription, then per read.
                    live.store(true, Ordering::Release);
                    backoff = std::time::Duration::from_millis(50);
                    for u in us {
                        let shard =
                            shard_of(Op::GetAuction(u.auction_id()).routing_key(), shards.len());
                        per_shard[shard].push(gavel_protocol::Push::from(*u));
                    }
                    for (tx, pushes) in shards.iter().zip(&mut per_shard) {
                        if !pushes.is_empty() {
                            let _ = tx.send(ShardMsg::Remote(std::mem::take(pushes)));
                        }
                    }
                    !shutdown.load(Ordering::Acquire)
                });
                live.store(false, Ordering::Release);
                if let Err(e) = r {
                    tracing::warn!(error = %e, "redis update channel lost; resubscribing");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                }
            }
        })?;
    Ok(())
}

/// Hands each shard the rows it owns.
fn restore(states: &mut [ShardState], snap: &Snapshot) {
    let n = states.len();
    for a in &snap.auctions {
        states[shard_of(Op::GetAuction(a.id).routing_key(), n)].restore_auction(a);
    }
    for s in &snap.sales {
        states[shard_of(Op::GetSale(s.id).routing_key(), n)].restore_sale(s);
    }
    for &(sku, buyer, held) in &snap.holdings {
        states[shard_of(Op::GetSale(sku).routing_key(), n)].restore_holding(sku, buyer, held);
    }
    for b in &snap.bids {
        states[shard_of(Op::GetAuction(b.auction_id).routing_key(), n)].restore_bid(b);
    }
    for o in &snap.orders {
        states[shard_of(Op::GetSale(o.sku_id).routing_key(), n)].restore_order(o);
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
