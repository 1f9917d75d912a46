//! Wiring: builds every part from the [`Config`], chooses the shard backend
//! once, starts the threads, and tears them down in order at shutdown.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{bail, Context};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::clock::now_ms;
use crate::cluster::engine::RedisShard;
use crate::cluster::{updates, RedisConfig};
use crate::config::{AckMode, Config};
use crate::engine::idempotency::KeyBudget;
use crate::engine::state::ShardState;
use crate::metrics::Metrics;
use crate::metrics_http;
use crate::net::auth::AuthTokens;
use crate::net::event_loop::{EventLoop, Shared};
use crate::net::log_limit::LogLimiter;
use crate::net::rate_limit::SharedBuckets;
use crate::net::{listener, tls};
use crate::outbox::{self, Inbox, LoopHandle};
use crate::shard::local::{KeyLookups, LocalShard};
use crate::shard::runner::{self, ShardContext};
use crate::shard::{ShardHandle, SizeGauges, Sizes};
use crate::store::gate::StoreGate;
use crate::store::writer::{self, WriterConfig, WriterHandle};
use crate::store::{self, lookup, materializer, recovery, Journal};

/// Runs the server until a signal stops it.
pub fn run(config: Config) -> anyhow::Result<()> {
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
    let (states, store) = open_store(&config)?;
    let std_listener = listener::bind(config.listen, config.backlog)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = std_listener.local_addr()?;
    let metrics = Arc::new(Metrics::new(config.shard_count()));
    let io = IoLoops::new(config.io_thread_count(), config.reply_queue, &metrics)?;
    let writer = store
        .map(|s| start_writer(s, &config, &io.handles, &metrics))
        .transpose()?;
    let gate = writer.as_ref().map(|w| w.handle.gate.clone());
    let updates_live = Arc::new(AtomicBool::new(false));
    let writer_handle = writer.as_ref().map(|w| w.handle.clone());
    let key_lookups = match &writer {
        Some(w) if config.redis_urls().is_none() => {
            Some(start_key_lookups(&config, &w.handle.gate, &metrics)?)
        }
        _ => None,
    };
    let (shard_handles, shard_threads, links) = start_shards(
        &config,
        states,
        &io.handles,
        writer_handle,
        key_lookups,
        &metrics,
        &updates_live,
    )?;
    let shutdown = Arc::new(AtomicBool::new(false));
    if let (Some((urls, cluster)), Some((ctl_tx, ctl, news))) = (config.redis_urls(), links) {
        updates::spawn_listener(updates::Listener {
            urls,
            cluster,
            timeout: config.redis_timeout,
            shards: shard_handles.iter().map(|h| h.tx.clone()).collect(),
            news,
            ctl,
            ctl_tx,
            shutdown: shutdown.clone(),
            live: updates_live.clone(),
            received: metrics.cross_node_updates.clone(),
            masters_down: metrics.cross_node_update_masters_down.clone(),
        })?;
    }
    let shared = Arc::new(shared_state(
        &config,
        shard_handles,
        auth.clone(),
        tls_config,
        &shutdown,
        &metrics,
    ));
    if let Some(addr) = config.metrics_listen {
        serve_metrics(addr, &config, &shared, gate, &metrics, &updates_live)?;
    }
    let IoLoops {
        polls,
        handles,
        rxs,
    } = io;
    spawn_signal_thread(
        handles.iter().map(|l| l.waker.clone()).collect(),
        shutdown,
        auth,
    )?;
    drop(handles);
    let loops = start_loops(polls, rxs, &std_listener, &shared)?;
    drop(std_listener);
    announce(&config, local)?;
    let failed = join_loops(loops);
    stop(shared, shard_threads, writer);
    if failed {
        bail!("an event loop failed");
    }
    Ok(())
}

/// Opens the store and reads back its state before anything is served. In
/// cross-node mode Redis holds the state and the store is only a log.
/// A durable store after recovery: where the writer continues.
struct Recovered {
    journal: Box<dyn Journal>,
    tables: Box<dyn store::Tables>,
    last_seq: u64,
}

/// The shards' recovered states, and the store (none with `--store memory`).
type Opened = (Vec<ShardState>, Option<Recovered>);

/// Opens the store and recovers before anything is served: the journal's
/// tail goes into the tables, then the tables' state into the shards. In
/// cross-node mode Redis holds the state and the store is only a log.
fn open_store(config: &Config) -> anyhow::Result<Opened> {
    let durable = config.ack == AckMode::Durable;
    let shard_count = config.shard_count();
    let window_ms = config.idempotency_window.as_millis() as u64;
    let store = store::open(&config.store, durable, config.store_timeout)
        .with_context(|| format!("cannot open store {}", config.store))?;
    let keys = KeyBudget {
        accepted: (config.idempotency_max_keys / shard_count).max(1),
        rejected: (config.idempotency_max_rejected_keys / shard_count).max(1),
    };
    let cap = config.shard_capacity();
    // With a durable store and the local engine, keys and closed auctions
    // may leave memory for the store (set before recovery: it restores
    // into that).
    let backed = store.is_some() && config.redis_urls().is_none();
    let passivate_after = Some(config.passivate_after.as_millis() as u64).filter(|&ms| ms > 0);
    let mut states: Vec<ShardState> = (0..shard_count)
        .map(|_| {
            let mut s = ShardState::new(window_ms, keys);
            s.set_capacity(cap);
            if backed {
                s.back_with_store(passivate_after);
                s.cap_key_filter((config.idempotency_max_filter_bytes / shard_count).max(1));
            }
            s
        })
        .collect();
    let Some(store::Opened {
        mut journal,
        mut tables,
    }) = store
    else {
        return Ok((states, None));
    };
    let last_seq = recovery::replay_journal(&mut *journal, &mut *tables)
        .with_context(|| format!("cannot replay the journal of {}", config.store))?;
    if config.redis_urls().is_none() {
        let snap = tables
            .load(now_ms().saturating_sub(window_ms))
            .with_context(|| format!("cannot load state from {}", config.store))?;
        recovery::restore(&mut states, &snap, now_ms());
        let quarantined = tables
            .quarantined_after(0)
            .with_context(|| format!("cannot read the quarantine of {}", config.store))?;
        if !quarantined.is_empty() {
            states.iter_mut().for_each(ShardState::hold_passivation);
        }
        tracing::info!(
            auctions = snap.auctions.len(),
            sales = snap.sales.len(),
            bids = snap.bids.len(),
            orders = snap.orders.len(),
            "state recovered from the store"
        );
    }
    let recovered = Recovered {
        journal,
        tables,
        last_seq,
    };
    Ok((states, Some(recovered)))
}

/// The event loops' polls, outboxes and reply channels, made before the
/// shards and the writer that deliver to them.
struct IoLoops {
    polls: Vec<mio::Poll>,
    handles: Vec<LoopHandle>,
    rxs: Vec<Inbox>,
}

impl IoLoops {
    fn new(n: usize, reply_queue: usize, metrics: &Metrics) -> std::io::Result<Self> {
        let mut io = IoLoops {
            polls: Vec::new(),
            handles: Vec::new(),
            rxs: Vec::new(),
        };
        for _ in 0..n {
            let poll = mio::Poll::new()?;
            let waker = Arc::new(mio::Waker::new(poll.registry(), EventLoop::waker_token())?);
            // Bounded: see crate::outbox for why a full one cannot deadlock.
            let (handle, rx) =
                outbox::channel(reply_queue, waker, metrics.bounds.reply_queue_full.clone());
            io.polls.push(poll);
            io.handles.push(handle);
            io.rxs.push(rx);
        }
        Ok(io)
    }
}

/// The journal writer and the materializer behind it.
struct Writer {
    handle: WriterHandle,
    thread: JoinHandle<()>,
    materializer: JoinHandle<()>,
}

fn start_writer(
    store: Recovered,
    config: &Config,
    loops: &[LoopHandle],
    metrics: &Arc<Metrics>,
) -> std::io::Result<Writer> {
    let durable = config.ack == AckMode::Durable;
    let gate = Arc::new(StoreGate::new(
        config.shard_count(),
        config.writer_queue,
        config.materializer_max_lag,
        durable,
    ));
    gate.start_at(store.last_seq);
    let (to_tables, materializer) = materializer::spawn(
        store.tables,
        gate.clone(),
        metrics.clone(),
        config.materializer_pause,
    )?;
    let cfg = WriterConfig {
        flush_interval: config.flush_interval,
        batch_max: config.batch_max as usize,
        store_timeout: config.store_timeout,
        next_seq: store.last_seq + 1,
    };
    let (handle, thread) = writer::spawn(
        store.journal,
        gate,
        loops.to_vec(),
        cfg,
        metrics.clone(),
        to_tables,
    )?;
    Ok(Writer {
        handle,
        thread,
        materializer,
    })
}

/// With a durable store and the local engine: the thread that looks up
/// idempotency keys that left memory, on its own connection to the tables,
/// and each shard's link to it.
fn start_key_lookups(
    config: &Config,
    gate: &Arc<StoreGate>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Vec<KeyLookups>> {
    let durable = config.ack == AckMode::Durable;
    let tables = store::open_tables(&config.store, durable, config.store_timeout)
        .with_context(|| format!("cannot open {} for key lookups", config.store))?
        .context("key lookups need a store")?;
    let (answers, rxs): (Vec<_>, Vec<_>) = (0..config.shard_count())
        .map(|_| crossbeam_channel::unbounded())
        .unzip();
    let window_ms = config.idempotency_window.as_millis() as u64;
    // Detached: it ends when the shards drop their request senders.
    let (requests, _thread) = lookup::spawn(tables, answers, window_ms, metrics.clone())?;
    Ok(rxs
        .into_iter()
        .enumerate()
        .map(|(shard, answers)| KeyLookups {
            shard,
            gate: gate.clone(),
            requests: requests.clone(),
            answers,
        })
        .collect())
}

/// The update listener's ends of its links to the Redis shards: where the
/// shards' wishes arrive (and a sender for its readers), each shard's events.
type ListenerLinks = (
    crossbeam_channel::Sender<updates::Ctl>,
    crossbeam_channel::Receiver<updates::Ctl>,
    Vec<crossbeam_channel::Sender<crate::cluster::pipe::RedisEvent>>,
);

/// The shards' handles and threads, and the listener's links (Redis mode).
type StartedShards = (Vec<ShardHandle>, Vec<JoinHandle<()>>, Option<ListenerLinks>);

/// Starts one thread per shard, running the local engine or, in cross-node
/// mode, the Redis engine — chosen here, once (then also the update
/// listener's links to the shards).
fn start_shards(
    config: &Config,
    states: Vec<ShardState>,
    loops: &[LoopHandle],
    writer: Option<WriterHandle>,
    key_lookups: Option<Vec<KeyLookups>>,
    metrics: &Arc<Metrics>,
    updates_live: &Arc<AtomicBool>,
) -> std::io::Result<StartedShards> {
    let redis = config.redis_urls();
    let (mut handles, mut threads) = (Vec::new(), Vec::new());
    let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
    let mut news = Vec::new();
    let mut key_lookups = key_lookups.map(Vec::into_iter);
    for (index, state) in states.into_iter().enumerate() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let queued = Arc::new(AtomicUsize::new(0));
        let sizes = Arc::new(SizeGauges::default());
        let ctx = ShardContext {
            index,
            rx,
            queued: queued.clone(),
            sizes: sizes.clone(),
            loops: loops.to_vec(),
            sweep_interval: config.sweep_interval,
            writer: writer.clone(),
        };
        let thread = match &redis {
            Some((urls, cluster)) => {
                let cfg = RedisConfig {
                    urls: urls.clone(),
                    cluster: *cluster,
                    timeout: config.redis_timeout,
                    idempotency_window: config.idempotency_window,
                    outbid_filter: config.outbid_filter,
                    updates_live: updates_live.clone(),
                    max_subscriptions: config.shard_capacity().subscriptions,
                    listener: ctl_tx.clone(),
                    events: crossbeam_channel::unbounded(),
                };
                news.push(cfg.events.0.clone());
                runner::spawn(ctx, RedisShard::new(cfg, metrics.clone()))?
            }
            None => {
                let lookups = key_lookups.as_mut().and_then(Iterator::next);
                runner::spawn(ctx, LocalShard::new(state, lookups))?
            }
        };
        threads.push(thread);
        handles.push(ShardHandle { tx, queued, sizes });
    }
    let links = redis.is_some().then_some((ctl_tx, ctl_rx, news));
    Ok((handles, threads, links))
}

/// What every event loop shares: the shards, limits and counters.
fn shared_state(
    config: &Config,
    shards: Vec<ShardHandle>,
    auth: Option<Arc<AuthTokens>>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: &Arc<AtomicBool>,
    metrics: &Arc<Metrics>,
) -> Shared {
    Shared {
        shards,
        shard_queue: config.shard_queue,
        auth,
        max_payload: config.max_payload,
        max_in_flight: config.max_in_flight.max(1),
        output_cap: config.output_cap,
        output_budget: config.output_budget,
        unsent_total: AtomicUsize::new(0),
        subscriber_cap: config.subscriber_cap,
        max_subscriptions_per_conn: config.max_subscriptions_per_conn,
        send_buffer: config.send_buffer,
        max_connections: config.max_connections,
        max_connections_per_ip: config.max_connections_per_ip,
        per_ip: Mutex::new(HashMap::new()),
        refused_per_ip: AtomicU64::new(0),
        rate_per_conn: config.rate_per_conn,
        bidders: config
            .rate_per_bidder
            .map(|r| SharedBuckets::new(r, config.rate_max_bidders)),
        epoch: std::time::Instant::now(),
        tls,
        idle_timeout: config.idle_timeout,
        logs: LogLimiter::new(config.log_summary_interval),
        shutdown_grace: config.shutdown_grace,
        node_id: config.node_id,
        shutdown: shutdown.clone(),
        open_connections: AtomicUsize::new(0),
        lingering: AtomicUsize::new(0),
        metrics: metrics.clone(),
    }
}

/// `--metrics-listen`: /metrics, /healthz and /readyz.
fn serve_metrics(
    addr: std::net::SocketAddr,
    config: &Config,
    shared: &Arc<Shared>,
    gate: Option<Arc<StoreGate>>,
    metrics: &Arc<Metrics>,
    updates_live: &Arc<AtomicBool>,
) -> anyhow::Result<()> {
    // Weak: the shard queues' senders live in `shared`, and shards only
    // exit once every sender is gone, so the metrics thread must not keep
    // it alive through shutdown.
    let live = Arc::downgrade(shared);
    let refresh_gate = gate.clone();
    let refresh = Box::new(move |m: &Metrics| {
        let Some(live) = live.upgrade() else {
            return;
        };
        m.open_connections
            .set(live.open_connections.load(Ordering::Relaxed) as i64);
        m.bounds
            .unsent_bytes
            .set(live.unsent_total.load(Ordering::Relaxed) as i64);
        let mut held = Sizes::default();
        for (i, s) in live.shards.iter().enumerate() {
            m.set_shard_queue(i, s.queued.load(Ordering::Relaxed));
            held.add(s.sizes.load());
        }
        m.bounds.auctions.set(held.auctions as i64);
        m.bounds.sales.set(held.sales as i64);
        m.bounds.holdings.set(held.holdings as i64);
        m.bounds.subscriptions.set(held.subscriptions as i64);
        m.keys.in_memory.set(held.keys as i64);
        m.keys.spilled.set(held.spilled_keys as i64);
        m.keys.filter_bytes.set(held.filter_bytes as i64);
        m.keys.parked.set(held.parked as i64);
        m.bounds.passivated.set(held.passivated as i64);
        m.bounds.passivated_sales.set(held.passivated_sales as i64);
        m.sync_refused("per_ip", live.refused_per_ip.load(Ordering::Relaxed));
        match &refresh_gate {
            Some(g) => {
                m.store.writer_queue.set(g.queued() as i64);
                m.store.lag_mutations.set(g.lag() as i64);
                m.store.store_up.set(g.is_up() as i64);
            }
            // --store memory takes every write: up, as /readyz says.
            None => {
                m.store.store_up.set(1);
            }
        }
    });
    let redis_mode = config.redis_urls().is_some();
    let (m, subscribed) = (metrics.clone(), updates_live.clone());
    let ready = Box::new(move || match &gate {
        Some(g) if !g.is_up() => Err("the store is not accepting writes".to_string()),
        _ if redis_mode && m.redis_up.get() == 0 => {
            Err("redis is unreachable (answering UNAVAILABLE)".to_string())
        }
        _ if redis_mode && !subscribed.load(Ordering::Acquire) => {
            Err("the redis update channel is not subscribed".to_string())
        }
        _ => Ok(()),
    });
    let bound = metrics_http::spawn(addr, metrics.clone(), refresh, ready)
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    tracing::info!(%bound, "metrics on http://{bound}/metrics");
    // Scripts and tests find the port here when they asked for port 0.
    eprintln!("metrics on {bound}");
    Ok(())
}

/// SIGINT/SIGTERM start a graceful shutdown; SIGHUP reloads auth tokens.
/// Holds no shard queue (it outlives the loops; holding one would keep the
/// shards from finishing).
fn spawn_signal_thread(
    wakers: Vec<Arc<mio::Waker>>,
    shutdown: Arc<AtomicBool>,
    auth: Option<Arc<AuthTokens>>,
) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("gavel-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    reload_auth(auth.as_deref());
                    continue;
                }
                tracing::info!(signal = sig, "signal received");
                shutdown.store(true, Ordering::Release);
                for w in &wakers {
                    let _ = w.wake();
                }
            }
        })?;
    Ok(())
}

/// Rotates auth tokens; connections past HELLO are untouched.
fn reload_auth(auth: Option<&AuthTokens>) {
    match auth {
        Some(auth) if auth.has_file() => match auth.reload() {
            Ok(n) => tracing::info!(tokens = n, "SIGHUP: auth tokens reloaded"),
            Err(e) => tracing::error!(
                error = %e,
                "SIGHUP: auth token reload failed; the previous tokens stay in force"
            ),
        },
        _ => tracing::info!("SIGHUP: nothing to reload (no --auth-token-file)"),
    }
}

fn start_loops(
    polls: Vec<mio::Poll>,
    rxs: Vec<Inbox>,
    listener: &std::net::TcpListener,
    shared: &Arc<Shared>,
) -> std::io::Result<Vec<JoinHandle<std::io::Result<()>>>> {
    let mut loops = Vec::new();
    for (io, (poll, rx)) in polls.into_iter().zip(rxs).enumerate() {
        let ev = EventLoop::new(io as u16, poll, listener.try_clone()?, rx, shared.clone())?;
        loops.push(
            std::thread::Builder::new()
                .name(format!("gavel-io-{io}"))
                .spawn(move || ev.run())?,
        );
    }
    Ok(loops)
}

/// Logs readiness and prints the bound address on stdout (scripts and tests
/// read it when they asked for port 0).
fn announce(config: &Config, local: std::net::SocketAddr) -> std::io::Result<()> {
    tracing::info!(
        %local,
        shards = config.shard_count(),
        io_threads = config.io_thread_count(),
        store = %config.store,
        ack = ?config.ack,
        "gavel-server ready"
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {local}")?;
    out.flush()
}

/// Waits for the event loops (they return at shutdown); true if one failed.
fn join_loops(loops: Vec<JoinHandle<std::io::Result<()>>>) -> bool {
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
    failed
}

/// Stops what is left, in dependency order: dropping the last shard queue
/// handles lets the shards finish; the shards held the last writer handles,
/// so the writer then commits what is left, releases the replies and exits;
/// then the materializer applies what the writer handed it.
fn stop(shared: Arc<Shared>, shard_threads: Vec<JoinHandle<()>>, writer: Option<Writer>) {
    drop(shared);
    for t in shard_threads {
        let _ = t.join();
    }
    if let Some(w) = writer {
        drop(w.handle);
        let _ = w.thread.join();
        // The writer held the materializer's queue: it finishes what is left.
        let _ = w.materializer.join();
    }
    tracing::info!("gavel-server stopped");
}
