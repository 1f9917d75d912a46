//! The contract's flash-sale rows, over the wire against the real binary.

mod common;

use common::{now_ms, Server};
use gavel_protocol::{AuctionState, ClientError, ErrorCode, ResultPayload, Status};

fn r(status: Status, value: u64, aux: u64) -> ResultPayload {
    ResultPayload::new(status, value, aux)
}

#[test]
fn stock_limits_and_no_partial_fills() {
    let s = Server::start(&[]);
    let mut c = s.client();
    assert_eq!(
        c.open_sale(1, 5, 3, 0, 0).unwrap().result,
        r(Status::Ok, 0, 0)
    );
    assert_eq!(c.buy(1, 10, 3, 1).unwrap().result, r(Status::Ok, 2, 3));
    assert_eq!(
        c.buy(1, 10, 1, 2).unwrap().result,
        r(Status::LimitExceeded, 2, 3)
    );
    assert_eq!(c.buy(1, 11, 3, 3).unwrap().result, r(Status::SoldOut, 2, 0));
    assert_eq!(c.buy(1, 11, 2, 4).unwrap().result, r(Status::Ok, 0, 2));
    assert_eq!(c.buy(1, 12, 1, 5).unwrap().result, r(Status::SoldOut, 0, 0));
    let sale = c.get_sale(1).unwrap().unwrap();
    assert_eq!(
        (sale.state, sale.stock, sale.sold, sale.per_buyer_limit),
        (AuctionState::Open, 5, 5, 3)
    );
    assert_eq!(
        c.buy(2, 12, 1, 6).unwrap().result,
        r(Status::NotFound, 0, 0)
    );
    assert_eq!(c.get_sale(2).unwrap(), None);
}

#[test]
fn zero_limit_means_unlimited() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.open_sale(1, 100, 0, 0, 0).unwrap();
    assert_eq!(c.buy(1, 1, 100, 1).unwrap().result, r(Status::Ok, 0, 100));
}

#[test]
fn not_started_and_ended() {
    let s = Server::start(&[]);
    let mut c = s.client();
    let now = now_ms();
    c.open_sale(1, 5, 0, now + 3_600_000, 0).unwrap();
    assert_eq!(
        c.buy(1, 1, 1, 1).unwrap().result,
        r(Status::NotStarted, 5, 0)
    );
    assert_eq!(
        c.get_sale(1).unwrap().unwrap().state,
        AuctionState::NotStarted
    );
    c.open_sale(2, 5, 0, 0, now.saturating_sub(1)).unwrap();
    assert_eq!(c.buy(2, 1, 1, 2).unwrap().result, r(Status::Closed, 5, 0));
    assert_eq!(c.get_sale(2).unwrap().unwrap().state, AuctionState::Closed);
}

#[test]
fn open_sale_twice() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.open_sale(1, 5, 1, 0, 0).unwrap();
    let again = c.open_sale(1, 5, 1, 0, 0).unwrap();
    assert_eq!((again.result.status, again.replayed), (Status::Ok, true));
    assert_eq!(
        c.open_sale(1, 6, 1, 0, 0).unwrap().result.status,
        Status::AlreadyExists
    );
}

#[test]
fn order_replay_and_conflict_across_connections() {
    let s = Server::start(&[]);
    let mut a = s.client();
    a.open_sale(1, 10, 0, 0, 0).unwrap();
    let first = a.buy(1, 5, 2, 77).unwrap();
    assert_eq!(first.result, r(Status::Ok, 8, 2));
    drop(a);
    let mut b = s.client();
    b.buy(1, 6, 3, 78).unwrap();
    let again = b.buy(1, 5, 2, 77).unwrap();
    assert_eq!((again.result, again.replayed), (r(Status::Ok, 8, 2), true));
    assert_eq!(
        b.get_sale(1).unwrap().unwrap().sold,
        5,
        "a replay sells nothing"
    );
    match b.buy(1, 5, 1, 77) {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::IdempotencyConflict),
        other => panic!("expected IDEMPOTENCY_CONFLICT, got {other:?}"),
    }
}

#[test]
fn zero_quantity_is_malformed() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.open_sale(1, 10, 0, 0, 0).unwrap();
    match c.buy(1, 5, 0, 1) {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::Malformed),
        other => panic!("expected MALFORMED, got {other:?}"),
    }
    assert_eq!(c.get_sale(1).unwrap().unwrap().sold, 0);
}

/// An accepted key is never forgotten inside the window: at the cap, new
/// orders are refused with BUSY (not executed), and every accepted order's
/// retry still replays — the sale never sells twice. (Before: the oldest
/// keys were evicted, and retries of early orders bought again.)
#[test]
fn accepted_orders_are_never_forgotten_at_the_key_cap() {
    let s = Server::start(&["--shards", "1", "--idempotency-max-keys", "64"]);
    let mut c = s.client();
    c.open_sale(1, 1_000_000, 0, 0, 0).unwrap();
    let (mut accepted, mut busy) = (Vec::new(), 0);
    for order in 1..=2_000u64 {
        match c.buy(1, order, 1, order) {
            Ok(o) => {
                assert_eq!(o.result.status, Status::Ok);
                accepted.push((order, o.result));
            }
            Err(ClientError::Server {
                code: ErrorCode::Busy,
                ..
            }) => busy += 1,
            Err(e) => panic!("order {order}: {e}"),
        }
    }
    assert_eq!(
        accepted.len(),
        64,
        "the cap holds exactly the accepted keys"
    );
    assert_eq!(busy, 2_000 - 64);
    for (order, first) in &accepted {
        let again = c.buy(1, *order, 1, *order).unwrap();
        assert!(again.replayed, "order {order} replays");
        assert_eq!(again.result, *first, "order {order}: original outcome");
    }
    let sale = c.get_sale(1).unwrap().unwrap();
    assert_eq!(sale.sold, 64, "nothing sold twice, nothing refused sold");
}

/// Rejected outcomes have their own budget: a flood of them (here SOLD_OUT)
/// never pushes an accepted key out.
#[test]
fn rejected_orders_do_not_evict_accepted_keys() {
    let s = Server::start(&[
        "--shards",
        "1",
        "--idempotency-max-keys",
        "8",
        "--idempotency-max-rejected-keys",
        "16",
    ]);
    let mut c = s.client();
    c.open_sale(1, 2, 0, 0, 0).unwrap();
    let first = c.buy(1, 1, 2, 1).unwrap().result;
    assert_eq!(first.status, Status::Ok);
    for order in 2..500u64 {
        let r = c.buy(1, order, 1, order).unwrap().result;
        assert_eq!(r.status, Status::SoldOut);
    }
    let again = c.buy(1, 1, 2, 1).unwrap();
    assert!(again.replayed);
    assert_eq!(again.result, first);
}

/// `--max-holdings`: past it a buyer new to a sale is refused BUSY with
/// its message (not executed: the same order_id is refused again, not
/// replayed), while a buyer who holds some still buys.
#[test]
fn holdings_stop_at_max_holdings() {
    let s = Server::start(&["--shards", "1", "--max-holdings", "2"]);
    let mut c = s.client();
    c.open_sale(1, 100, 0, 0, 0).unwrap();
    assert_eq!(c.buy(1, 10, 1, 1).unwrap().result, r(Status::Ok, 99, 1));
    assert_eq!(c.buy(1, 11, 1, 2).unwrap().result, r(Status::Ok, 98, 1));
    for _ in 0..2 {
        match c.buy(1, 12, 1, 3) {
            Err(ClientError::Server { code, message }) => {
                assert_eq!(code, ErrorCode::Busy);
                assert!(message.contains("holding limit reached"), "{message}");
            }
            other => panic!("a third buyer at --max-holdings 2: {other:?}"),
        }
    }
    assert_eq!(c.buy(1, 10, 2, 4).unwrap().result, r(Status::Ok, 96, 3));
    let sale = c.get_sale(1).unwrap().unwrap();
    assert_eq!(sale.sold, 4);
}
