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

/// Opens everything the plan's workload uses.
pub fn open_all(plan: &Plan) -> anyhow::Result<SetupReport> {
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
