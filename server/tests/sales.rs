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
