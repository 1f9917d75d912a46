//! The setup phase: opening the auctions and sales a run uses.
//!
//! Runs on its own blocking connection before the load starts. Auctions are
//! opened with reserve 0, min_increment 1 and no end; sales with `--stock`
//! units, no per-buyer limit, open now and without end. Requests are pipelined
//! in batches. `OK` (fresh or `REPLAYED`, i.e. already open with the same
//! parameters) is accepted; anything else aborts the run.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context as _};
use gavel_protocol::{Client, OpenAuctionRequest, OpenSaleRequest, Request, Response, Status};

use crate::config::Plan;
use crate::driver::resolve;

/// Requests sent before reading their replies.
const BATCH: u32 = 256;

/// What setup did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetupReport {
    pub auctions_opened: u64,
    pub sales_opened: u64,
    /// Of those, how many already existed with the same parameters.
    pub already_open: u64,
}

/// A blocking client to the plan's server, authenticated if a token is set.
pub fn connect(plan: &Plan) -> anyhow::Result<Client> {
    let addr = resolve(&plan.addr)?;
    let stream = std::net::TcpStream::connect_timeout(&addr, plan.timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    let mut client = match &plan.tls {
        None => Client::from_stream(stream)?,
        Some(tls) => {
            stream.set_read_timeout(Some(plan.timeout.max(Duration::from_secs(1))))?;
            let name = tls.server_name.to_str();
            Client::from_stream_tls(stream, &name, tls.config.clone())
                .with_context(|| format!("TLS handshake with {addr} failed"))?
        }
    };
    client.set_timeout(Some(plan.timeout.max(Duration::from_secs(1))))?;
    if let Some(token) = &plan.auth_token {
        client.hello(token).context("HELLO failed")?;
    }
    Ok(client)
}

/// How long `--target redis` asks the scripts to remember idempotency keys.
const REDIS_WINDOW: Duration = Duration::from_millis(crate::target_redis::WINDOW_MS);

/// `--target redis`: a gavel-redis client to the plan's Redis. Connecting
/// loads the scripts (`SCRIPT LOAD`), which the load phase's `EVALSHA`s need.
pub fn connect_redis(plan: &Plan) -> anyhow::Result<gavel_redis::RedisGavel> {
    let r = plan
        .redis
        .as_ref()
        .context("--target redis without a Redis URL")?;
    let timeout = plan.timeout.max(Duration::from_secs(1));
    gavel_redis::RedisGavel::connect(std::slice::from_ref(&r.url), false, timeout, REDIS_WINDOW)
        .with_context(|| format!("cannot connect to Redis at {}", r.addr))
}

/// Milliseconds since the epoch, the scripts' clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Opens everything the plan's workload uses.
pub fn open_all(plan: &Plan) -> anyhow::Result<SetupReport> {
    if plan.redis.is_some() {
        return open_all_redis(plan);
    }
    let mut client = connect(plan)?;
    let mut report = SetupReport::default();
    if plan.workload.uses_auctions() {
        let (n, replayed) = open_batched(&mut client, plan.auctions, "auction", |i| {
            Request::OpenAuction(OpenAuctionRequest {
                auction_id: plan.auction_id(i),
                reserve: 0,
                min_increment: 1,
                ends_at_ms: 0,
            })
        })?;
        report.auctions_opened = n;
        report.already_open += replayed;
    }
    if plan.workload.uses_sales() {
        let (n, replayed) = open_batched(&mut client, plan.skus, "sale", |i| {
            Request::OpenSale(OpenSaleRequest {
                sku_id: plan.sku_id(i),
                stock: plan.stock,
                per_buyer_limit: 0,
                starts_at_ms: 0,
                ends_at_ms: 0,
            })
        })?;
        report.sales_opened = n;
        report.already_open += replayed;
    }
    let _ = client.shutdown_write();
    Ok(report)
}

/// `open_all` on Redis: the same auctions and sales, through the
/// `open_auction.lua` / `open_sale.lua` scripts, [`BATCH`] per round trip.
fn open_all_redis(plan: &Plan) -> anyhow::Result<SetupReport> {
    use gavel_redis::{Op, OpResult};
    let mut g = connect_redis(plan)?;
    let mut report = SetupReport::default();
    let mut run = |what: &str, count: u32, op: &dyn Fn(u32) -> (u64, Op)| -> anyhow::Result<u64> {
        let mut replayed = 0;
        let all: Vec<(u64, Op)> = (0..count).map(op).collect();
        for chunk in all.chunks(BATCH as usize) {
            let ops: Vec<Op> = chunk.iter().map(|(_, o)| *o).collect();
            let res = g
                .execute(&ops, now_ms())
                .with_context(|| format!("opening {what}s on Redis"))?;
            for ((id, _), r) in chunk.iter().zip(res) {
                match r {
                    OpResult::Outcome {
                        result,
                        replayed: rp,
                        ..
                    } if result.status == Status::Ok => replayed += u64::from(rp),
                    OpResult::Outcome { result, .. } if result.status == Status::AlreadyExists => {
                        bail!(
                            "{what} {id} already exists with different parameters; \
                             choose another --id-base"
                        )
                    }
                    other => bail!("opening {what} {id}: unexpected outcome {other:?}"),
                }
            }
        }
        Ok(replayed)
    };
    if plan.workload.uses_auctions() {
        report.already_open += run("auction", plan.auctions, &|i| {
            let auction_id = plan.auction_id(i);
            let op = Op::OpenAuction(OpenAuctionRequest {
                auction_id,
                reserve: 0,
                min_increment: 1,
                ends_at_ms: 0,
            });
            (auction_id, op)
        })?;
        report.auctions_opened = u64::from(plan.auctions);
    }
    if plan.workload.uses_sales() {
        report.already_open += run("sale", plan.skus, &|i| {
            let sku_id = plan.sku_id(i);
            let op = Op::OpenSale(OpenSaleRequest {
                sku_id,
                stock: plan.stock,
                per_buyer_limit: 0,
                starts_at_ms: 0,
                ends_at_ms: 0,
            });
            (sku_id, op)
        })?;
        report.sales_opened = u64::from(plan.skus);
    }
    Ok(report)
}

fn open_batched(
    client: &mut Client,
    count: u32,
    what: &str,
    request: impl Fn(u32) -> Request,
) -> anyhow::Result<(u64, u64)> {
    let mut replayed = 0;
    let mut start = 0;
    while start < count {
        let end = count.min(start + BATCH);
        let mut ids = HashMap::new();
        for i in start..end {
            ids.insert(client.send(&request(i)), i);
        }
        client.flush()?;
        for _ in start..end {
            let f = client
                .recv()
                .with_context(|| format!("no reply while opening {what}s"))?;
            let Some(i) = ids.remove(&f.request_id) else {
                bail!(
                    "reply to unknown request {} while opening {what}s",
                    f.request_id
                );
            };
            let id = match request(i) {
                Request::OpenAuction(o) => o.auction_id,
                Request::OpenSale(s) => s.sku_id,
                _ => u64::from(i),
            };
            match f.body {
                Response::Result(r) if r.status == Status::Ok => replayed += f.replayed() as u64,
                Response::Result(r) if r.status == Status::AlreadyExists => bail!(
                    "{what} {id} already exists with different parameters; \
                     choose another --id-base"
                ),
                Response::Result(r) => bail!("opening {what} {id}: {}", r.status.name()),
                Response::Error { code, message } => {
                    bail!("opening {what} {id}: ERROR {} {message}", code.name())
                }
                other => bail!("opening {what} {id}: unexpected reply {other:?}"),
            }
        }
        start = end;
    }
    Ok((u64::from(count), replayed))
}
