//! How `gavel-cli` prints replies and pushes: readable text or JSON.

use gavel_protocol::{ErrorCode, Frame, Push, Response};
use serde_json::{json, Value};

/// One reply as text. AUCTION and SALE print their type, then one key=value
/// line per field.
pub fn response_text(f: &Frame<Response>) -> String {
    let replayed = if f.replayed() { " (replayed)" } else { "" };
    match &f.body {
        Response::Result(r) => format!(
            "RESULT {} value={} aux={}{replayed}",
            r.status.name(),
            r.value,
            r.aux
        ),
        Response::Welcome {
            version,
            node_id,
            shards,
            max_payload,
        } => format!(
            "WELCOME version={version} node_id={node_id} shards={shards} max_payload={max_payload}"
        ),
        Response::Pong(p) => format!(
            "PONG len={} payload={:?}",
            p.len(),
            String::from_utf8_lossy(p)
        ),
        Response::Auction(a) => format!(
            "AUCTION\nauction_id={}\nstate={}\nhigh_bid={}\nhigh_bidder={}\nbid_count={}\nreserve={}\nmin_increment={}\nends_at_ms={}",
            a.auction_id,
            a.state.name(),
            a.high_bid,
            a.high_bidder,
            a.bid_count,
            a.reserve,
            a.min_increment,
            a.ends_at_ms
        ),
        Response::Sale(s) => format!(
            "SALE\nsku_id={}\nstate={}\nstock={}\nsold={}\nper_buyer_limit={}\nstarts_at_ms={}\nends_at_ms={}",
            s.sku_id,
            s.state.name(),
            s.stock,
            s.sold,
            s.per_buyer_limit,
            s.starts_at_ms,
            s.ends_at_ms
        ),
        Response::Error { code, message } => format!("ERROR {}: {message}", code.name()),
    }
}

/// What to do after an ERROR whose code alone does not say it, printed on
/// stderr under the error.
pub fn error_hint(code: ErrorCode) -> Option<&'static str> {
    match code {
        ErrorCode::InDoubt => Some(
            "the request may have been applied (its commit was not confirmed in time); \
             send it again with the same --bid-id / --order-id to learn its outcome",
        ),
        _ => None,
    }
}

/// One reply as a JSON object.
pub fn response_json(f: &Frame<Response>) -> Value {
    let rid = f.request_id;
    match &f.body {
        Response::Result(r) => json!({
            "type": "RESULT",
            "request_id": rid,
            "status": r.status.name(),
            "value": r.value,
            "aux": r.aux,
            "replayed": f.replayed(),
        }),
        Response::Welcome {
            version,
            node_id,
            shards,
            max_payload,
        } => json!({
            "type": "WELCOME",
            "request_id": rid,
            "version": version,
            "node_id": node_id,
            "shards": shards,
            "max_payload": max_payload,
        }),
        Response::Pong(p) => json!({
            "type": "PONG",
            "request_id": rid,
            "len": p.len(),
            "payload": String::from_utf8_lossy(p),
        }),
        Response::Auction(a) => json!({
            "type": "AUCTION",
            "request_id": rid,
            "auction_id": a.auction_id,
            "state": a.state.name(),
            "high_bid": a.high_bid,
            "high_bidder": a.high_bidder,
            "bid_count": a.bid_count,
            "reserve": a.reserve,
            "min_increment": a.min_increment,
            "ends_at_ms": a.ends_at_ms,
        }),
        Response::Sale(s) => json!({
            "type": "SALE",
            "request_id": rid,
            "sku_id": s.sku_id,
            "state": s.state.name(),
            "stock": s.stock,
            "sold": s.sold,
            "per_buyer_limit": s.per_buyer_limit,
            "starts_at_ms": s.starts_at_ms,
            "ends_at_ms": s.ends_at_ms,
        }),
        Response::Error { code, message } => json!({
            "type": "ERROR",
            "request_id": rid,
            "code": code.name(),
            "code_num": *code as u16,
            "message": message,
        }),
    }
}

pub fn push_text(p: &Push) -> String {
    match *p {
        Push::BidUpdate {
            auction_id,
            high_bid,
            high_bidder,
            bid_count,
        } => format!(
            "BID_UPDATE auction_id={auction_id} high_bid={high_bid} high_bidder={high_bidder} bid_count={bid_count}"
        ),
        Push::AuctionClosed {
            auction_id,
            winning_bid,
            winner,
        } => format!(
            "AUCTION_CLOSED auction_id={auction_id} winning_bid={winning_bid} winner={winner}"
        ),
    }
}

pub fn push_json(p: &Push) -> Value {
    match *p {
        Push::BidUpdate {
            auction_id,
            high_bid,
            high_bidder,
            bid_count,
        } => json!({
            "type": "BID_UPDATE",
            "auction_id": auction_id,
            "high_bid": high_bid,
            "high_bidder": high_bidder,
            "bid_count": bid_count,
        }),
        Push::AuctionClosed {
            auction_id,
            winning_bid,
            winner,
        } => json!({
            "type": "AUCTION_CLOSED",
            "auction_id": auction_id,
            "winning_bid": winning_bid,
            "winner": winner,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use gavel_protocol::{AuctionInfo, AuctionState, ResultPayload, Status, FLAG_REPLAYED};

    #[test]
    fn results() {
        let mut f = Frame::new(3, Response::Result(ResultPayload::new(Status::Ok, 1500, 7)));
        assert_eq!(response_text(&f), "RESULT OK value=1500 aux=7");
        f.flags = FLAG_REPLAYED;
        assert_eq!(response_text(&f), "RESULT OK value=1500 aux=7 (replayed)");
        let j = response_json(&f);
        assert_eq!(j["status"], "OK");
        assert_eq!(j["value"], 1500);
        assert_eq!(j["replayed"], true);
    }

    #[test]
    fn records_errors_and_pushes() {
        let a = Frame::new(
            1,
            Response::Auction(AuctionInfo {
                auction_id: 9,
                state: AuctionState::Closed,
                high_bid: 10,
                high_bidder: 2,
                bid_count: 3,
                reserve: 0,
                min_increment: 1,
                ends_at_ms: 0,
            }),
        );
        let t = response_text(&a);
        assert!(t.starts_with("AUCTION\n"));
        assert!(t.contains("\nstate=CLOSED\n") && t.contains("\nbid_count=3\n"));
        assert_eq!(response_json(&a)["high_bid"], 10);
        let e = Frame::new(
            1,
            Response::Error {
                code: ErrorCode::Malformed,
                message: "bad".into(),
            },
        );
        assert_eq!(response_text(&e), "ERROR MALFORMED: bad");
        assert_eq!(response_json(&e)["code"], "MALFORMED");
        assert_eq!(error_hint(ErrorCode::Malformed), None);
        let d = Frame::new(
            4,
            Response::Error {
                code: ErrorCode::InDoubt,
                message: "commit not confirmed".into(),
            },
        );
        assert_eq!(response_text(&d), "ERROR IN_DOUBT: commit not confirmed");
        assert_eq!(response_json(&d)["code"], "IN_DOUBT");
        assert_eq!(response_json(&d)["code_num"], 11);
        assert!(error_hint(ErrorCode::InDoubt)
            .unwrap()
            .contains("same --bid-id"));
        let p = Frame::new(1, Response::Pong(Bytes::from_static(b"hi")));
        assert_eq!(response_text(&p), "PONG len=2 payload=\"hi\"");
        let push = Push::AuctionClosed {
            auction_id: 1,
            winning_bid: 5,
            winner: 2,
        };
        assert_eq!(
            push_text(&push),
            "AUCTION_CLOSED auction_id=1 winning_bid=5 winner=2"
        );
        assert_eq!(push_json(&push)["type"], "AUCTION_CLOSED");
    }
}
