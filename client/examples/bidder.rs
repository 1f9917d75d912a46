//! A bidder that reacts to pushes: it bids, follows the auction's
//! BID_UPDATE pushes, raises whenever someone else leads (up to its budget),
//! and stops when outbid beyond it; the auction ends by time and the
//! AUCTION_CLOSED push names the winner. A rival with a smaller budget runs
//! alongside, over the same connection, so the example needs nothing but a
//! server:
//!
//! ```text
//! gavel-server --store memory &
//! cargo run -p gavel-client --example bidder -- [ADDR]   # default 127.0.0.1:7070
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gavel_client::{Client, Error, Event};
use gavel_protocol::{BidRequest, OpenAuctionRequest, Push, Status};

const RESERVE: u64 = 100;
const INCREMENT: u64 = 10;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Bids on `auction_id` as `me` until it wins or is outbid beyond `budget`,
/// then watches until the auction closes.
async fn bidder(
    name: &'static str,
    client: Client,
    auction_id: u64,
    me: u64,
    budget: u64,
) -> Result<(), Error> {
    // Subscribe first, so no update after our first bid is missed.
    let mut pushes = client.subscribe(auction_id).await?;
    let mut next_amount = RESERVE;
    let mut gave_up = false;
    let bid = |amount: u64| {
        let client = client.clone();
        async move {
            // The key: one per (bidder, amount). A retry after a lost
            // connection reuses it, so the bid counts at most once.
            let bid_id = me << 32 | amount;
            let o = client
                .bid(BidRequest {
                    auction_id,
                    bidder_id: me,
                    amount,
                    bid_id,
                })
                .await?;
            println!(
                "{name:>6}: bid {amount:>4} -> {}{}{}",
                o.status().name(),
                if o.replayed { " (replayed)" } else { "" },
                if o.attempts > 1 {
                    format!(" after {} attempts", o.attempts)
                } else {
                    String::new()
                }
            );
            Ok::<_, Error>(o)
        }
    };

    let first = bid(next_amount).await?;
    if first.status() == Status::Outbid {
        next_amount = first.result.value + INCREMENT;
    }
    while let Some(ev) = pushes.next().await {
        match ev {
            Event::Push(Push::BidUpdate {
                high_bid,
                high_bidder,
                bid_count,
                ..
            }) => {
                if high_bidder == me || gave_up {
                    continue;
                }
                next_amount = next_amount.max(high_bid + INCREMENT);
                if next_amount > budget {
                    println!(
                        "{name:>6}: outbid at {high_bid} (bid #{bid_count}); {next_amount} is over my budget of {budget}, stopping"
                    );
                    gave_up = true;
                    continue;
                }
                let o = bid(next_amount).await?;
                if o.status() == Status::Outbid {
                    // Someone got in first; the push for their bid follows.
                    next_amount = o.result.value + INCREMENT;
                }
            }
            Event::Push(Push::AuctionClosed {
                winning_bid,
                winner,
                ..
            }) => {
                let verdict = if winner == me { "I won" } else { "I lost" };
                println!("{name:>6}: auction closed, winner {winner} at {winning_bid}: {verdict}");
            }
            Event::Lagged { missed } => println!("{name:>6}: missed {missed} updates"),
            Event::Resubscribed { auction } => {
                println!("{name:>6}: reconnected; auction now {auction:?}")
            }
            _ => {}
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7070".into());
    let client = Client::connect_to(addr).await?;
    let w = client.welcome().unwrap();
    println!(
        "connected: node {}, {} shards, max payload {}",
        w.node_id, w.shards, w.max_payload
    );
    let auction_id = now_ms();
    let ends_at_ms = now_ms() + 1_500;
    client
        .open_auction(OpenAuctionRequest {
            auction_id,
            reserve: RESERVE,
            min_increment: INCREMENT,
            ends_at_ms,
        })
        .await?;
    println!(
        "opened auction {auction_id}: reserve {RESERVE}, increment {INCREMENT}, ends in 1.5 s"
    );

    // Two bidders share the one connection (clones of one client).
    let alice = tokio::spawn(bidder("alice", client.clone(), auction_id, 1, 600));
    let bob = tokio::spawn(bidder("bob", client.clone(), auction_id, 2, 450));
    let (a, b) = tokio::join!(alice, bob);
    a.unwrap()?;
    b.unwrap()?;

    tokio::time::sleep(Duration::from_millis(10)).await;
    let info = client.get_auction(auction_id).await?.unwrap();
    println!(
        "final: {} after {} accepted bids, high bid {} by bidder {}",
        info.state.name(),
        info.bid_count,
        info.high_bid,
        info.high_bidder
    );
    Ok(())
}
