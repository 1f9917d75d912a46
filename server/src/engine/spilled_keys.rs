//! Which accepted idempotency keys left memory for the store: a compact,
//! time-sliced Bloom filter.
//!
//! A shard keeps recent accepted keys in memory; once its share is full,
//! the oldest keys whose records the tables already hold leave memory and
//! are added here. A new keyed request that memory does not know is
//! checked against this filter: "no" (the common case) means the key was
//! never accepted inside the window and it executes at once; "maybe" means
//! it must be looked up in the store first. A Bloom filter never says "no"
//! for a key it holds, so no accepted key is forgotten; a false "maybe"
//! costs one point lookup.
//!
//! The window is cut into [`SLICES`] slices by the keys' acceptance time;
//! each slice has its own filters, and a slice is dropped whole once every
//! key in it is older than the window. A slice grows by adding a filter
//! (four times the capacity of what it holds), sized from the slice before it so
//! that a steady rate needs one filter per slice.
//!
//! Each filter is *blocked*: every key sets and tests bits in one 64-byte
//! block (one cache line), so a probe costs one cache miss per filter.
//! Sized for 12 bits per key, ~1% false "maybe" per filter; a slice that
//! grows in a burst holds up to ~5× that (measured 24.6 bits per key after
//! 2.5M keys spilled in one burst).

use std::collections::VecDeque;

use super::idempotency::Key;

/// Slices per window: a slice is dropped up to 1/SLICES of a window late.
pub const SLICES: u64 = 8;
/// Bits per key a filter is sized for.
const BITS_PER_KEY: usize = 12;
/// Bits set per key (inside its block).
const HASHES: u32 = 8;
/// Smallest filter, in keys.
const MIN_CAPACITY: usize = 4096;

type Block = [u64; 8];

/// One blocked Bloom filter of fixed capacity.
struct Bloom {
    blocks: Box<[Block]>,
    capacity: usize,
    len: usize,
}

impl Bloom {
    fn with_capacity(capacity: usize) -> Self {
        let blocks = (capacity * BITS_PER_KEY).div_ceil(512).max(1);
        Bloom {
            blocks: vec![[0u64; 8]; blocks].into_boxed_slice(),
            capacity,
            len: 0,
        }
    }

    /// The block a hash falls in, and the bits it sets there.
    #[inline]
    fn probe(&self, h: u64) -> (usize, Block) {
        let n = self.blocks.len() as u64;
        let block = ((u128::from(h) * u128::from(n)) >> 64) as usize;
        let mut mask = [0u64; 8];
        let mut g = h.rotate_left(32) | 1;
        for _ in 0..HASHES {
            g = g.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let bit = (g >> 55) as usize; // 9 bits: 0..512
            mask[bit / 64] |= 1 << (bit % 64);
        }
        (block, mask)
    }

    fn insert(&mut self, h: u64) {
        let (b, mask) = self.probe(h);
        for (w, m) in self.blocks[b].iter_mut().zip(mask) {
            *w |= m;
        }
        self.len += 1;
    }

    #[inline]
    fn contains(&self, h: u64) -> bool {
        let (b, mask) = self.probe(h);
        self.blocks[b].iter().zip(mask).all(|(w, m)| w & m == m)
    }

    fn bytes(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<Block>()
    }
}

/// The filters of keys accepted in `[start_ms, start_ms + slice_ms)`.
struct Slice {
    start_ms: u64,
    filters: Vec<Bloom>,
    len: usize,
    bytes: usize,
}

impl Slice {
    fn new(start_ms: u64, capacity: usize) -> Self {
        let first = Bloom::with_capacity(capacity);
        Slice {
            start_ms,
            bytes: first.bytes(),
            filters: vec![first],
            len: 0,
        }
    }

    fn insert(&mut self, h: u64) {
        let last = self.filters.last().expect("a slice has a filter");
        if last.len >= last.capacity {
            let grown = Bloom::with_capacity((self.len * 4).max(MIN_CAPACITY));
            self.bytes += grown.bytes();
            self.filters.push(grown);
        }
        self.filters.last_mut().expect("just checked").insert(h);
        self.len += 1;
    }

    fn contains(&self, h: u64) -> bool {
        self.filters.iter().any(|f| f.contains(h))
    }
}

/// Accepted keys that left memory, by acceptance time.
pub struct SpilledKeys {
    window_ms: u64,
    slice_ms: u64,
    /// Oldest first.
    slices: VecDeque<Slice>,
    len: usize,
    /// Memory of all live filters.
    bytes: usize,
}

impl SpilledKeys {
    pub fn new(window_ms: u64) -> Self {
        SpilledKeys {
            window_ms,
            slice_ms: (window_ms / SLICES).max(1),
            slices: VecDeque::new(),
            len: 0,
            bytes: 0,
        }
    }

    /// Records that `key`, accepted at `at_ms`, is now only in the store.
    pub fn insert(&mut self, key: Key, at_ms: u64) {
        let start = at_ms - at_ms % self.slice_ms;
        let h = hash(key);
        // Keys leave memory in about acceptance order: the newest slice.
        if let Some(s) = self.slices.iter_mut().rev().find(|s| s.start_ms == start) {
            let before = s.bytes;
            s.insert(h);
            self.bytes += s.bytes - before;
        } else {
            let capacity = self.slices.back().map_or(MIN_CAPACITY, |s| s.len);
            let at = self.slices.partition_point(|s| s.start_ms < start);
            let mut s = Slice::new(start, capacity.max(MIN_CAPACITY));
            s.insert(h);
            self.bytes += s.bytes;
            self.slices.insert(at, s);
        }
        self.len += 1;
    }

    /// False when `key` certainly did not leave memory inside the window.
    #[inline]
    pub fn may_contain(&self, key: Key) -> bool {
        if self.slices.is_empty() {
            return false;
        }
        let h = hash(key);
        self.slices.iter().any(|s| s.contains(h))
    }

    /// Drops the slices whose every key is older than the window.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some(s) = self.slices.front() {
            if s.start_ms + self.slice_ms + self.window_ms > now_ms {
                break;
            }
            self.len -= s.len;
            self.bytes -= s.bytes;
            self.slices.pop_front();
        }
    }

    /// Keys held (across live slices).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Memory the filters take.
    pub fn bytes(&self) -> usize {
        debug_assert_eq!(
            self.bytes,
            self.slices
                .iter()
                .flat_map(|s| &s.filters)
                .map(Bloom::bytes)
                .sum::<usize>()
        );
        self.bytes
    }
}

/// The key's hash mixed once more: the key table picks a key's segment by
/// the top bits of `Key::hash`, and its walks spill keys segment by segment,
/// so taking the block from the same bits would pack each spilled batch into
/// a narrow band of blocks (measured: ~18% false "maybe" instead of ~1%).
#[inline]
fn hash(k: Key) -> u64 {
    let mut z = k.hash() ^ 0x243f_6a88_85a3_08d3;
    z = (z ^ (z >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    z = (z ^ (z >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^ (z >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::idempotency::KeyKind;

    fn k(scope: u64, key: u64) -> Key {
        Key {
            kind: KeyKind::Bid,
            scope,
            key,
        }
    }

    #[test]
    fn never_says_no_for_a_key_it_holds() {
        let mut s = SpilledKeys::new(8_000);
        for i in 0..200_000u64 {
            s.insert(k(i % 977, i), i / 40); // spans all 8 slices
        }
        assert_eq!(s.len(), 200_000);
        for i in 0..200_000u64 {
            assert!(s.may_contain(k(i % 977, i)), "key {i} lost");
        }
    }

    #[test]
    fn false_maybes_are_rare_and_growth_keeps_them_so() {
        let mut s = SpilledKeys::new(1_000_000);
        for i in 0..300_000u64 {
            s.insert(k(7, i), 5);
        }
        let false_maybes = (1_000_000..1_100_000u64)
            .filter(|&i| s.may_contain(k(7, i)))
            .count();
        // Several grown filters in one slice: each ~1%, together a few %.
        assert!(false_maybes < 5_000, "{false_maybes} of 100000");
        let other_kind = Key {
            kind: KeyKind::Order,
            ..k(7, 1)
        };
        assert!(s.may_contain(k(7, 1)));
        let _ = s.may_contain(other_kind); // a different key; may or may not
        assert!(s.bytes() < 300_000 * 4, "{} bytes", s.bytes());
    }

    #[test]
    fn slices_leave_once_every_key_is_older_than_the_window() {
        let mut s = SpilledKeys::new(800); // slices of 100 ms
        s.insert(k(1, 1), 50);
        s.insert(k(1, 2), 150);
        s.expire(899);
        assert!(
            s.may_contain(k(1, 1)),
            "a key at 50 lives until 850; its slice until 900"
        );
        s.expire(900);
        assert!(!s.may_contain(k(1, 1)));
        assert!(s.may_contain(k(1, 2)));
        assert_eq!(s.len(), 1);
        s.expire(1000);
        assert!(s.is_empty());
        assert!(!s.may_contain(k(1, 2)));
    }

    #[test]
    fn late_keys_go_to_their_own_slice() {
        let mut s = SpilledKeys::new(800);
        s.insert(k(1, 2), 350);
        s.insert(k(1, 1), 50); // older than the newest slice: inserted before it
        s.expire(900);
        assert!(!s.may_contain(k(1, 1)));
        assert!(s.may_contain(k(1, 2)));
    }

    /// Keys arrive grouped by the top bits of `Key::hash` (as the key
    /// table's walk spills them, segment by segment): the filter must not
    /// care.
    #[test]
    fn keys_grouped_by_hash_prefix_do_not_crowd_the_filter() {
        let mut s = SpilledKeys::new(1_000_000);
        let mut grouped: Vec<Key> = (0..400_000u64).map(|i| k(3, i)).collect();
        grouped.sort_by_key(|k| k.hash() >> 60);
        for key in &grouped[..200_000] {
            s.insert(*key, 5);
        }
        let false_maybes = (1_000_000..1_100_000u64)
            .filter(|&i| s.may_contain(k(3, i)))
            .count();
        assert!(false_maybes < 3_000, "{false_maybes} of 100000");
    }
}
