//! Accepted idempotency keys past `--idempotency-max-keys` leave memory for
//! the durable store instead of being refused BUSY or forgotten: retries
//! are answered from the store, before and after a restart. (Before, the
//! cap was a wall: past it every new BID/BUY got BUSY until keys expired.)

mod common;

use common::crash::temp_dir;
use common::spill::{accept_past_the_cap, args, check_replays};
use common::Server;

#[test]
fn sqlite_keeps_accepted_keys_past_the_cap_and_across_a_restart() {
    let dir = temp_dir("spill");
    let store = format!("sqlite:{}/gavel.db", dir.display());
    let argv = args(&store);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut s = Server::start(&argv);
    let (orders, bids) = accept_past_the_cap(&s);
    assert!(s.terminate().success());
    let s = Server::start(&argv);
    check_replays(&s, &orders, &bids);
}
