//! A flash sale: 100 units, at most 2 per buyer, and 2,000 buyers arriving at
//! once — every order a task, all of them over one connection. Each buyer
//! orders 1 unit; one in ten fires three orders at once (the third is over
//! the limit while stock lasts: LIMIT_EXCEEDED). Then a few buyers resend an
//! order with the same `order_id`, as they would after a timeout: the server
//! replays the stored outcome and sells nothing twice.
//!
//! ```text
//! gavel-server --store memory &
//! cargo run -p gavel-client --example flash_sale -- [ADDR]   # default 127.0.0.1:7070
//! ```

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use gavel_client::{Client, Error};
use gavel_protocol::{BuyRequest, OpenSaleRequest, Status};

const STOCK: u64 = 100;
const LIMIT: u32 = 2;
const BUYERS: u64 = 2_000;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7070".into());
    let client = Client::connect_to(addr).await?;
    let sku_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    client
        .open_sale(OpenSaleRequest {
            sku_id,
            stock: STOCK,
            per_buyer_limit: LIMIT,
            starts_at_ms: 0,
            ends_at_ms: 0,
        })
        .await?;
    println!("sale {sku_id}: {STOCK} units, at most {LIMIT} per buyer, {BUYERS} buyers");

    let order = move |buyer_id: u64, n: u64| BuyRequest {
        sku_id,
        buyer_id,
        quantity: 1,
        order_id: buyer_id * 10 + n,
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for buyer in 1..=BUYERS {
        // A greedy buyer fires three orders at once; the third is over the limit.
        let orders = if buyer % 10 == 0 { 3 } else { 1 };
        for n in 1..=orders {
            let c = client.clone();
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let o = c.buy(order(buyer, n)).await?;
                Ok::<_, Error>((buyer, n, o, t.elapsed()))
            }));
        }
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap()?);
    }
    let elapsed = started.elapsed();

    let mut by_status: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, _, o, _) in &results {
        *by_status.entry(o.status().name()).or_default() += 1;
    }
    let mut lat: Vec<_> = results.iter().map(|r| r.3).collect();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    println!(
        "{} orders in {elapsed:.2?} ({:.0} orders/s over one connection); latency p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        results.len(),
        results.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        lat[lat.len() - 1]
    );
    for (status, n) in &by_status {
        println!("  {status:<15} {n}");
    }

    // Resend a few orders with the same key, as after a timeout.
    let winners: Vec<_> = results
        .iter()
        .filter(|r| r.2.status() == Status::Ok)
        .take(3)
        .collect();
    for (buyer, n, first, _) in winners {
        let again = client.buy(order(*buyer, *n)).await?;
        println!(
            "  resent order {} of buyer {buyer}: {} (replayed: {}), units left then: {}",
            order(*buyer, *n).order_id,
            again.status().name(),
            again.replayed,
            again.result.value
        );
        assert_eq!(again.result, first.result);
    }

    let sale = client.get_sale(sku_id).await?.unwrap();
    println!(
        "sale {sku_id}: sold {} of {}, state {}",
        sale.sold,
        sale.stock,
        sale.state.name()
    );
    assert_eq!(sale.sold, by_status.get("OK").copied().unwrap_or(0));
    Ok(())
}
