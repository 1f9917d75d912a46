//! Encode and decode throughput of BID frames, in frames per second.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gavel_protocol::{BidRequest, Decoder, Request};

const N: usize = 1024;

fn bids() -> BytesMut {
    let mut buf = BytesMut::with_capacity(N * 40);
    for i in 0..N as u64 {
        Request::Bid(BidRequest {
            auction_id: i % 17,
            bidder_id: i,
            amount: 1000 + i,
            bid_id: i + 1,
        })
        .encode(i as u32, 0, &mut buf);
    }
    buf
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("bid_frames");
    g.throughput(Throughput::Elements(N as u64));
    let encoded = bids();
    let decoder = Decoder::default();
    g.bench_function("decode", |b| {
        let mut buf = BytesMut::with_capacity(encoded.len());
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(&encoded);
            let mut n = 0;
            while let Some(f) = decoder.decode_request(&mut buf).unwrap() {
                n += f.request_id as usize & 1;
            }
            n
        })
    });
    g.bench_function("encode", |b| {
        let mut buf = BytesMut::with_capacity(encoded.len());
        b.iter(|| {
            buf.clear();
            for i in 0..N as u64 {
                Request::Bid(BidRequest {
                    auction_id: i,
                    bidder_id: i,
                    amount: i,
                    bid_id: i + 1,
                })
                .encode(i as u32, 0, &mut buf);
            }
            buf.len()
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
