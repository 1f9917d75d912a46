//! Property tests: any message encodes and decodes back to itself, however the
//! byte stream is split; 10,000 frames in one buffer decode like one at a time;
//! random bytes never panic the decoder.

use bytes::{Bytes, BytesMut};
use gavel_protocol::{
    AuctionInfo, AuctionState, BidRequest, BuyRequest, Decoder, ErrorCode, Frame,
    OpenAuctionRequest, OpenSaleRequest, Push, Request, Response, ResultPayload, SaleInfo,
    ServerMessage, Status,
};
use proptest::prelude::*;

fn key() -> impl Strategy<Value = u64> {
    1..=u64::MAX
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..=255)
        )
            .prop_map(|(v, t)| {
                Request::Hello {
                    version: v,
                    token: Bytes::from(t),
                }
            }),
        proptest::collection::vec(any::<u8>(), 0..=1024).prop_map(|p| Request::Ping(p.into())),
        any::<[u64; 4]>().prop_map(|a| Request::OpenAuction(OpenAuctionRequest {
            auction_id: a[0],
            reserve: a[1],
            min_increment: a[2],
            ends_at_ms: a[3],
        })),
        (any::<[u64; 3]>(), key()).prop_map(|(a, k)| Request::Bid(BidRequest {
            auction_id: a[0],
            bidder_id: a[1],
            amount: a[2],
            bid_id: k,
        })),
        any::<u64>().prop_map(|auction_id| Request::CloseAuction { auction_id }),
        any::<u64>().prop_map(|auction_id| Request::GetAuction { auction_id }),
        (any::<[u64; 4]>(), any::<u32>()).prop_map(|(a, l)| Request::OpenSale(OpenSaleRequest {
            sku_id: a[0],
            stock: a[1],
            per_buyer_limit: l,
            starts_at_ms: a[2],
            ends_at_ms: a[3],
        })),
        (any::<[u64; 2]>(), any::<u32>(), key()).prop_map(|(a, q, k)| Request::Buy(BuyRequest {
            sku_id: a[0],
            buyer_id: a[1],
            quantity: q,
            order_id: k,
        })),
        any::<u64>().prop_map(|sku_id| Request::GetSale { sku_id }),
        any::<u64>().prop_map(|auction_id| Request::Subscribe { auction_id }),
        any::<u64>().prop_map(|auction_id| Request::Unsubscribe { auction_id }),
    ]
}

fn state() -> impl Strategy<Value = AuctionState> {
    prop_oneof![
        Just(AuctionState::Open),
        Just(AuctionState::Closed),
        Just(AuctionState::NotStarted)
    ]
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    use ServerMessage as S;
    prop_oneof![
        any::<[u16; 4]>().prop_map(|a| S::Response(Response::Welcome {
            version: a[0],
            node_id: a[1],
            shards: a[2],
            max_payload: a[3]
        })),
        proptest::collection::vec(any::<u8>(), 0..=2048)
            .prop_map(|p| S::Response(Response::Pong(p.into()))),
        (0usize..9, any::<u64>(), any::<u64>()).prop_map(|(s, v, a)| S::Response(
            Response::Result(ResultPayload::new(Status::ALL[s], v, a))
        )),
        (any::<[u64; 7]>(), state()).prop_map(|(a, st)| S::Response(Response::Auction(
            AuctionInfo {
                auction_id: a[0],
                state: st,
                high_bid: a[1],
                high_bidder: a[2],
                bid_count: a[3],
                reserve: a[4],
                min_increment: a[5],
                ends_at_ms: a[6],
            }
        ))),
        (any::<[u64; 5]>(), any::<u32>(), state()).prop_map(|(a, l, st)| S::Response(
            Response::Sale(SaleInfo {
                sku_id: a[0],
                state: st,
                stock: a[1],
                sold: a[2],
                per_buyer_limit: l,
                starts_at_ms: a[3],
                ends_at_ms: a[4],
            })
        )),
        (0usize..ErrorCode::ALL.len(), "\\PC{0,40}").prop_map(|(c, m)| S::Response(
            Response::Error {
                code: ErrorCode::ALL[c],
                message: m
            }
        )),
        any::<[u64; 4]>().prop_map(|a| S::Push(Push::BidUpdate {
            auction_id: a[0],
            high_bid: a[1],
            high_bidder: a[2],
            bid_count: a[3]
        })),
        any::<[u64; 3]>().prop_map(|a| S::Push(Push::AuctionClosed {
            auction_id: a[0],
            winning_bid: a[1],
            winner: a[2]
        })),
    ]
}

/// Feeds `bytes` to the decoder in chunks cut at `cuts` and collects frames.
fn decode_in_chunks<T>(
    bytes: &[u8],
    cuts: &[usize],
    mut decode: impl FnMut(&mut BytesMut) -> Option<T>,
) -> Vec<T> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for w in points.windows(2) {
        buf.extend_from_slice(&bytes[w[0]..w[1]]);
        while let Some(f) = decode(&mut buf) {
            out.push(f);
        }
    }
    assert!(buf.is_empty());
    out
}

proptest! {
    #[test]
    fn requests_round_trip_whatever_the_split(
        reqs in proptest::collection::vec((request(), any::<u32>()), 1..20),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut wire = BytesMut::new();
        for (r, id) in &reqs {
            r.encode(*id, 0, &mut wire);
        }
        let d = Decoder::new(65535);
        let got = decode_in_chunks(&wire, &cuts, |b| d.decode_request(b).unwrap());
        let want: Vec<_> = reqs.into_iter().map(|(r, id)| Frame::new(id, r)).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn server_messages_round_trip_whatever_the_split(
        msgs in proptest::collection::vec((server_message(), any::<u32>(), 0u8..2), 1..20),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut wire = BytesMut::new();
        let mut want = Vec::new();
        for (m, id, flags) in msgs {
            let id = if matches!(m, ServerMessage::Push(_)) { 0 } else { id };
            let flags = if matches!(m, ServerMessage::Push(_)) { 0 } else { flags };
            m.encode(id, flags, &mut wire);
            want.push(Frame { request_id: id, flags, body: m });
        }
        let d = Decoder::new(65535);
        let got = decode_in_chunks(&wire, &cuts, |b| d.decode_server(b).unwrap());
        prop_assert_eq!(got, want);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let d = Decoder::new(1024);
        let mut buf = BytesMut::from(&bytes[..]);
        for _ in 0..bytes.len() + 1 {
            match d.decode_request(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) if e.is_fatal() => break,
                Err(_) => {}
            }
        }
        let mut buf = BytesMut::from(&bytes[..]);
        for _ in 0..bytes.len() + 1 {
            match d.decode_server(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) if e.is_fatal() => break,
                Err(_) => {}
            }
        }
    }
}

#[test]
fn one_byte_at_a_time_equals_ten_thousand_in_one_buffer() {
    let mut wire = BytesMut::new();
    let mut want = Vec::new();
    for i in 0..10_000u64 {
        let r = if i % 3 == 0 {
            Request::Ping(Bytes::from(i.to_be_bytes().to_vec()))
        } else {
            Request::Bid(BidRequest {
                auction_id: i % 7,
                bidder_id: i,
                amount: i * 10,
                bid_id: i + 1,
            })
        };
        r.encode(i as u32, 0, &mut wire);
        want.push(Frame::new(i as u32, r));
    }
    let d = Decoder::default();

    let mut all = BytesMut::from(&wire[..]);
    let mut bulk = Vec::new();
    while let Some(f) = d.decode_request(&mut all).unwrap() {
        bulk.push(f);
    }
    assert_eq!(bulk, want);

    let mut buf = BytesMut::new();
    let mut trickle = Vec::new();
    for b in wire.iter() {
        buf.extend_from_slice(&[*b]);
        while let Some(f) = d.decode_request(&mut buf).unwrap() {
            trickle.push(f);
        }
    }
    assert_eq!(trickle, want);
}
