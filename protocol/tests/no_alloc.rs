//! Decoding fixed-layout requests allocates nothing: a counting global
//! allocator (this test binary only) watches a decode loop over a buffer that
//! already holds the frames.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use gavel_protocol::{BidRequest, BuyRequest, Decoder, OpenAuctionRequest, Request};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn fixed_layout_decode_allocates_nothing() {
    let mut buf = BytesMut::with_capacity(1 << 20);
    for i in 0..3000u64 {
        let r = match i % 4 {
            0 => Request::Bid(BidRequest {
                auction_id: i,
                bidder_id: i,
                amount: i,
                bid_id: i + 1,
            }),
            1 => Request::Buy(BuyRequest {
                sku_id: i,
                buyer_id: i,
                quantity: 1,
                order_id: i + 1,
            }),
            2 => Request::OpenAuction(OpenAuctionRequest {
                auction_id: i,
                reserve: 0,
                min_increment: 1,
                ends_at_ms: 0,
            }),
            _ => Request::GetAuction { auction_id: i },
        };
        r.encode(i as u32, 0, &mut buf);
    }
    let d = Decoder::default();
    let before = ALLOCS.load(Ordering::Relaxed);
    let mut n = 0;
    while let Some(f) = d.decode_request(&mut buf).unwrap() {
        n += 1;
        std::hint::black_box(f);
    }
    let after = ALLOCS.load(Ordering::Relaxed);
    assert_eq!(n, 3000);
    assert_eq!(after - before, 0, "decoding fixed-layout frames allocated");
}
