//! Golden byte vectors: one test per message type checks the exact bytes the
//! encoder writes and that the decoder reads them back to the same value.

use bytes::{Bytes, BytesMut};
use gavel_protocol::{
    message::{encode_error, encode_result},
    AuctionInfo, AuctionState, BidRequest, BuyRequest, Decoder, ErrorCode, Frame,
    OpenAuctionRequest, OpenSaleRequest, Push, Request, Response, ResultPayload, SaleInfo,
    ServerMessage, Status,
};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn check_request(req: Request, request_id: u32, expected: &str) {
    let mut buf = BytesMut::new();
    req.encode(request_id, 0, &mut buf);
    assert_eq!(&buf[..], &hex(expected)[..], "encoding of {req:?}");
    let f = Decoder::new(65535)
        .decode_request(&mut buf)
        .unwrap()
        .unwrap();
    assert_eq!(f.request_id, request_id);
    assert_eq!(f.body, req);
    assert!(buf.is_empty());
}

fn check_server(msg: ServerMessage, request_id: u32, flags: u8, expected: &str) {
    let mut buf = BytesMut::new();
    msg.encode(request_id, flags, &mut buf);
    assert_eq!(&buf[..], &hex(expected)[..], "encoding of {msg:?}");
    let f = Decoder::new(65535)
        .decode_server(&mut buf)
        .unwrap()
        .unwrap();
    assert_eq!(
        f,
        Frame {
            request_id,
            flags,
            body: msg
        }
    );
    assert!(buf.is_empty());
}

#[test]
fn hello() {
    check_request(
        Request::Hello {
            version: 1,
            token: Bytes::from_static(b"abc"),
        },
        7,
        "01 00 0006 00000007  0001 03 616263",
    );
}

#[test]
fn ping() {
    check_request(
        Request::Ping(Bytes::from_static(&[0xde, 0xad])),
        1,
        "02 00 0002 00000001 dead",
    );
    check_request(Request::Ping(Bytes::new()), 2, "02 00 0000 00000002");
}

#[test]
fn open_auction() {
    check_request(
        Request::OpenAuction(OpenAuctionRequest {
            auction_id: 42,
            reserve: 1000,
            min_increment: 50,
            ends_at_ms: 0x0102030405060708,
        }),
        9,
        "10 00 0020 00000009
         000000000000002a 00000000000003e8 0000000000000032 0102030405060708",
    );
}

#[test]
fn bid() {
    check_request(
        Request::Bid(BidRequest {
            auction_id: 42,
            bidder_id: 7,
            amount: 1500,
            bid_id: 0x1001,
        }),
        0x01020304,
        "11 00 0020 01020304
         000000000000002a 0000000000000007 00000000000005dc 0000000000001001",
    );
}

#[test]
fn close_get_subscribe_unsubscribe_get_sale() {
    check_request(
        Request::CloseAuction { auction_id: 3 },
        1,
        "12 00 0008 00000001 0000000000000003",
    );
    check_request(
        Request::GetAuction { auction_id: 3 },
        1,
        "13 00 0008 00000001 0000000000000003",
    );
    check_request(
        Request::GetSale { sku_id: 4 },
        1,
        "22 00 0008 00000001 0000000000000004",
    );
    check_request(
        Request::Subscribe { auction_id: 5 },
        1,
        "30 00 0008 00000001 0000000000000005",
    );
    check_request(
        Request::Unsubscribe { auction_id: 5 },
        1,
        "31 00 0008 00000001 0000000000000005",
    );
}

#[test]
fn open_sale() {
    check_request(
        Request::OpenSale(OpenSaleRequest {
            sku_id: 11,
            stock: 100,
            per_buyer_limit: 2,
            starts_at_ms: 5,
            ends_at_ms: 6,
        }),
        3,
        "20 00 0024 00000003
         000000000000000b 0000000000000064 00000002 0000000000000005 0000000000000006",
    );
}

#[test]
fn buy() {
    check_request(
        Request::Buy(BuyRequest {
            sku_id: 11,
            buyer_id: 8,
            quantity: 2,
            order_id: 99,
        }),
        4,
        "21 00 001c 00000004
         000000000000000b 0000000000000008 00000002 0000000000000063",
    );
}

#[test]
fn welcome() {
    check_server(
        ServerMessage::Response(Response::Welcome {
            version: 1,
            node_id: 2,
            shards: 4,
            max_payload: 1024,
        }),
        7,
        0,
        "81 00 0008 00000007 0001 0002 0004 0400",
    );
}

#[test]
fn pong() {
    check_server(
        ServerMessage::Response(Response::Pong(Bytes::from_static(b"hi"))),
        1,
        0,
        "82 00 0002 00000001 6869",
    );
}

#[test]
fn result_plain_and_replayed() {
    let r = ResultPayload::new(Status::Ok, 1500, 7);
    check_server(
        ServerMessage::Response(Response::Result(r)),
        0x01020304,
        0,
        "90 00 0011 01020304 00 00000000000005dc 0000000000000007",
    );
    check_server(
        ServerMessage::Response(Response::Result(ResultPayload::new(Status::Outbid, 2, 3))),
        5,
        1,
        "90 01 0011 00000005 01 0000000000000002 0000000000000003",
    );
    let mut buf = BytesMut::new();
    encode_result(&mut buf, 5, 1, &ResultPayload::new(Status::Outbid, 2, 3));
    assert_eq!(
        &buf[..],
        &hex("90 01 0011 00000005 01 0000000000000002 0000000000000003")[..]
    );
}

#[test]
fn every_status_code() {
    for (i, s) in Status::ALL.iter().enumerate() {
        assert_eq!(*s as u8, i as u8);
        assert_eq!(Status::from_u8(i as u8), Some(*s));
    }
    assert_eq!(Status::from_u8(9), None);
}

#[test]
fn every_error_code() {
    for (i, c) in ErrorCode::ALL.iter().enumerate() {
        assert_eq!(*c as u16, i as u16 + 1);
        assert_eq!(ErrorCode::from_u16(i as u16 + 1), Some(*c));
    }
    assert_eq!(ErrorCode::from_u16(0), None);
    assert_eq!(ErrorCode::from_u16(11), Some(ErrorCode::InDoubt));
    assert_eq!(ErrorCode::from_u16(12), None);
    let names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.name()).collect();
    assert_eq!(
        names,
        [
            "MALFORMED",
            "UNKNOWN_TYPE",
            "FRAME_TOO_LARGE",
            "UNAUTHORIZED",
            "BUSY",
            "RATE_LIMITED",
            "UNAVAILABLE",
            "IDEMPOTENCY_CONFLICT",
            "UNSUPPORTED_VERSION",
            "SHUTTING_DOWN",
            "IN_DOUBT",
        ]
    );
    let closing: Vec<_> = ErrorCode::ALL
        .iter()
        .filter(|c| c.closes_connection())
        .map(|c| *c as u16)
        .collect();
    assert_eq!(closing, vec![3, 4, 9, 10]);
}

#[test]
fn auction() {
    check_server(
        ServerMessage::Response(Response::Auction(AuctionInfo {
            auction_id: 42,
            state: AuctionState::Closed,
            high_bid: 1500,
            high_bidder: 7,
            bid_count: 3,
            reserve: 1000,
            min_increment: 50,
            ends_at_ms: 0,
        })),
        2,
        0,
        "93 00 0039 00000002 000000000000002a 01 00000000000005dc 0000000000000007
         0000000000000003 00000000000003e8 0000000000000032 0000000000000000",
    );
}

#[test]
fn sale() {
    check_server(
        ServerMessage::Response(Response::Sale(SaleInfo {
            sku_id: 11,
            state: AuctionState::NotStarted,
            stock: 100,
            sold: 4,
            per_buyer_limit: 2,
            starts_at_ms: 5,
            ends_at_ms: 6,
        })),
        2,
        0,
        "a2 00 002d 00000002 000000000000000b 02 0000000000000064 0000000000000004
         00000002 0000000000000005 0000000000000006",
    );
}

#[test]
fn error() {
    check_server(
        ServerMessage::Response(Response::Error {
            code: ErrorCode::Busy,
            message: "busy".into(),
        }),
        6,
        0,
        "bf 00 0008 00000006 0005 0004 62757379",
    );
    let mut buf = BytesMut::new();
    encode_error(&mut buf, 1, ErrorCode::Malformed, "");
    assert_eq!(&buf[..], &hex("bf 00 0004 00000001 0001 0000")[..]);
}

/// ERROR 11 IN_DOUBT: the request may have executed; the connection stays open.
#[test]
fn error_in_doubt() {
    check_server(
        ServerMessage::Response(Response::Error {
            code: ErrorCode::InDoubt,
            message: "retry".into(),
        }),
        9,
        0,
        "bf 00 0009 00000009 000b 0005 7265747279",
    );
    let mut buf = BytesMut::new();
    encode_error(&mut buf, 0x01020304, ErrorCode::InDoubt, "");
    assert_eq!(&buf[..], &hex("bf 00 0004 01020304 000b 0000")[..]);
    assert!(!ErrorCode::InDoubt.closes_connection());
}

#[test]
fn bid_update_push() {
    check_server(
        ServerMessage::Push(Push::BidUpdate {
            auction_id: 42,
            high_bid: 1500,
            high_bidder: 7,
            bid_count: 3,
        }),
        0,
        0,
        "c0 00 0020 00000000 000000000000002a 00000000000005dc 0000000000000007 0000000000000003",
    );
}

#[test]
fn auction_closed_push() {
    check_server(
        ServerMessage::Push(Push::AuctionClosed {
            auction_id: 42,
            winning_bid: 1500,
            winner: 7,
        }),
        0,
        0,
        "c1 00 0018 00000000 000000000000002a 00000000000005dc 0000000000000007",
    );
}
