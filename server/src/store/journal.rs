//! The journal's record format: one record per writer commit, holding the
//! mutations of that commit in order.
//!
//! ```text
//! record   = version:u8 (1) · count:varint · mutation* · crc32:u32 LE
//! mutation = tag:u8 · fields as LEB128 varints
//! ```
//!
//! Varints because ids, amounts and counts are mostly small (a bid is ~20
//! bytes instead of 49). The CRC-32 covers everything before it, so a record
//! cut short or damaged is detected rather than half-applied. Decoding never
//! panics on any input.

use gavel_protocol::{OpenAuctionRequest, OpenSaleRequest};

use crate::engine::mutation::Mutation;

const VERSION: u8 = 1;

const AUCTION_OPENED: u8 = 1;
const BID_ACCEPTED: u8 = 2;
const AUCTION_CLOSED: u8 = 3;
const SALE_OPENED: u8 = 4;
const PURCHASE: u8 = 5;

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("journal record cut short")]
    Truncated,
    #[error("journal record checksum mismatch")]
    Checksum,
    #[error("journal record version {0} unknown")]
    Version(u8),
    #[error("journal record holds an unknown mutation tag {0}")]
    Tag(u8),
    #[error("journal record has bytes after its last mutation")]
    Trailing,
}

/// Encodes `mutations` as one record into `out` (cleared first).
pub fn encode(mutations: &[Mutation], out: &mut Vec<u8>) {
    out.clear();
    out.push(VERSION);
    put(out, mutations.len() as u64);
    for m in mutations {
        encode_one(m, out);
    }
    let crc = crc32fast::hash(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

fn encode_one(m: &Mutation, out: &mut Vec<u8>) {
    let (tag, fields): (u8, &[u64]) = match *m {
        Mutation::AuctionOpened { req, at_ms } => (
            AUCTION_OPENED,
            &[
                req.auction_id,
                req.reserve,
                req.min_increment,
                req.ends_at_ms,
                at_ms,
            ],
        ),
        Mutation::BidAccepted {
            auction_id,
            bidder_id,
            amount,
            bid_id,
            bid_count,
            at_ms,
        } => (
            BID_ACCEPTED,
            &[auction_id, bidder_id, amount, bid_id, bid_count, at_ms],
        ),
        Mutation::AuctionClosed { auction_id, at_ms } => (AUCTION_CLOSED, &[auction_id, at_ms]),
        Mutation::SaleOpened { req, at_ms } => (
            SALE_OPENED,
            &[
                req.sku_id,
                req.stock,
                req.per_buyer_limit as u64,
                req.starts_at_ms,
                req.ends_at_ms,
                at_ms,
            ],
        ),
        Mutation::Purchase {
            sku_id,
            buyer_id,
            quantity,
            order_id,
            sold_after,
            held_after,
            at_ms,
        } => (
            PURCHASE,
            &[
                sku_id,
                buyer_id,
                quantity as u64,
                order_id,
                sold_after,
                held_after,
                at_ms,
            ],
        ),
    };
    out.push(tag);
    for &f in fields {
        put(out, f);
    }
}

/// LEB128: 7 bits per byte, low first, high bit = more.
fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Decodes a record, appending its mutations to `into`.
pub fn decode(record: &[u8], into: &mut Vec<Mutation>) -> Result<(), RecordError> {
    let Some(body_len) = record.len().checked_sub(4) else {
        return Err(RecordError::Truncated);
    };
    let (body, crc) = record.split_at(body_len);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(RecordError::Checksum);
    }
    let mut r = Reader { buf: body, pos: 0 };
    match r.byte()? {
        VERSION => {}
        v => return Err(RecordError::Version(v)),
    }
    let count = r.varint()?;
    // Each mutation takes at least 3 bytes: a bad count cannot reserve much.
    into.reserve((count as usize).min(body.len() / 3));
    for _ in 0..count {
        into.push(r.mutation()?);
    }
    if r.pos != body.len() {
        return Err(RecordError::Trailing);
    }
    Ok(())
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, RecordError> {
        let b = *self.buf.get(self.pos).ok_or(RecordError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, RecordError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(RecordError::Truncated)
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        u32::try_from(self.varint()?).map_err(|_| RecordError::Truncated)
    }

    fn mutation(&mut self) -> Result<Mutation, RecordError> {
        Ok(match self.byte()? {
            AUCTION_OPENED => Mutation::AuctionOpened {
                req: OpenAuctionRequest {
                    auction_id: self.varint()?,
                    reserve: self.varint()?,
                    min_increment: self.varint()?,
                    ends_at_ms: self.varint()?,
                },
                at_ms: self.varint()?,
            },
            BID_ACCEPTED => Mutation::BidAccepted {
                auction_id: self.varint()?,
                bidder_id: self.varint()?,
                amount: self.varint()?,
                bid_id: self.varint()?,
                bid_count: self.varint()?,
                at_ms: self.varint()?,
            },
            AUCTION_CLOSED => Mutation::AuctionClosed {
                auction_id: self.varint()?,
                at_ms: self.varint()?,
            },
            SALE_OPENED => Mutation::SaleOpened {
                req: OpenSaleRequest {
                    sku_id: self.varint()?,
                    stock: self.varint()?,
                    per_buyer_limit: self.u32()?,
                    starts_at_ms: self.varint()?,
                    ends_at_ms: self.varint()?,
                },
                at_ms: self.varint()?,
            },
            PURCHASE => Mutation::Purchase {
                sku_id: self.varint()?,
                buyer_id: self.varint()?,
                quantity: self.u32()?,
                order_id: self.varint()?,
                sold_after: self.varint()?,
                held_after: self.varint()?,
                at_ms: self.varint()?,
            },
            t => return Err(RecordError::Tag(t)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mutation() -> impl Strategy<Value = Mutation> {
        let n = any::<u64>;
        prop_oneof![
            (n(), n(), n(), n(), n()).prop_map(|(a, r, i, e, t)| Mutation::AuctionOpened {
                req: OpenAuctionRequest {
                    auction_id: a,
                    reserve: r,
                    min_increment: i,
                    ends_at_ms: e
                },
                at_ms: t
            }),
            (n(), n(), n(), n(), n(), n()).prop_map(|(a, b, m, k, c, t)| {
                Mutation::BidAccepted {
                    auction_id: a,
                    bidder_id: b,
                    amount: m,
                    bid_id: k,
                    bid_count: c,
                    at_ms: t,
                }
            }),
            (n(), n()).prop_map(|(a, t)| Mutation::AuctionClosed {
                auction_id: a,
                at_ms: t
            }),
            (n(), n(), any::<u32>(), n(), n(), n()).prop_map(|(s, k, l, b, e, t)| {
                Mutation::SaleOpened {
                    req: OpenSaleRequest {
                        sku_id: s,
                        stock: k,
                        per_buyer_limit: l,
                        starts_at_ms: b,
                        ends_at_ms: e,
                    },
                    at_ms: t,
                }
            }),
            (n(), n(), any::<u32>(), n(), n(), n(), n()).prop_map(|(s, b, q, o, so, h, t)| {
                Mutation::Purchase {
                    sku_id: s,
                    buyer_id: b,
                    quantity: q,
                    order_id: o,
                    sold_after: so,
                    held_after: h,
                    at_ms: t,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn records_round_trip(ms in prop::collection::vec(mutation(), 0..50)) {
            let mut buf = Vec::new();
            encode(&ms, &mut buf);
            let mut back = Vec::new();
            decode(&buf, &mut back).unwrap();
            prop_assert_eq!(back, ms);
        }

        #[test]
        fn every_cut_or_flipped_record_is_refused(
            ms in prop::collection::vec(mutation(), 1..20),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut buf = Vec::new();
            encode(&ms, &mut buf);
            let mut out = Vec::new();
            let n = cut.index(buf.len());
            prop_assert!(decode(&buf[..n], &mut out).is_err(), "prefix of {} bytes", n);
            let i = flip.index(buf.len());
            buf[i] ^= 1 << bit;
            prop_assert!(decode(&buf, &mut out).is_err(), "bit {} of byte {}", bit, i);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes, &mut Vec::new());
        }
    }

    #[test]
    fn a_bid_takes_about_twenty_bytes() {
        let bid = Mutation::BidAccepted {
            auction_id: 9_999,
            bidder_id: 123_456,
            amount: 1_500_000,
            bid_id: 7_000_000,
            bid_count: 40,
            at_ms: 1_795_000_000_000,
        };
        let mut buf = Vec::new();
        encode(&[bid; 100], &mut buf);
        let per_bid = (buf.len() - 6) / 100;
        assert!(per_bid <= 22, "{per_bid} bytes per bid");
    }
}
