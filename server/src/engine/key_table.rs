//! The idempotency keys' table: a compact open-addressing hash table with
//! one 64-byte slot (one cache line) per key, growth that never stalls, and
//! a cursor that visits slots in order for expiry and eviction.
//!
//! Why not a general-purpose map: a shard holds millions of keys, and each
//! BID/BUY looks one up and usually inserts it; a general map plus a FIFO
//! for expiry costs four cache misses per request (lookup, insert, and later
//! the FIFO pop and the removal) and ~200 bytes per key. Here:
//!
//! - **Segments** of [`SEG`] slots, found through a directory by the top bits
//!   of the key's hash (extendible hashing). A full segment splits in two —
//!   only its own keys move (~2 ms) — so growth never rehashes the table.
//!   A segment's slots are one 2 MiB block that Linux is asked to back with
//!   a transparent huge page: random probes over a table of millions of
//!   keys then miss the TLB once per segment, not once per 4 KiB page.
//! - Inside a segment, **linear probing** over a byte array of control bytes
//!   (empty, or occupied with a 6-bit hash tag and an "accepted" bit): a
//!   lookup reads control bytes of one cache line and, on a tag match, one
//!   slot. Deletion shifts the rest of the probe run back (no tombstones).
//! - **No per-key order queue**: a cursor walks the slots in order and the
//!   caller decides, slot by slot, what leaves (expired keys, rejected keys
//!   over their budget, accepted keys moving to the store). The "accepted"
//!   bit, and a 2-byte coarse time per slot kept beside the control bytes,
//!   let those walks decide most slots without reading the slot itself:
//!   walking a segment reads 3 bytes per slot, not 64. A 2-byte home index
//!   per slot lets a deletion's shift skip the slots that stay.

/// Slots per segment.
pub const SEG: usize = 1 << 15;
const _: () = assert!(SEG <= 1 << 16, "home indexes are u16");
/// A segment splits when it holds more than this many keys (7/8 full).
const MAX_LOAD: usize = SEG / 8 * 7;
const OCCUPIED: u8 = 0x80;
const ACCEPTED: u8 = 0x40;
const TAG: u8 = 0x3f;

/// One remembered key and outcome: 64 bytes, one cache line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Slot {
    pub scope: u64,
    pub key: u64,
    /// The request's fields: (bidder, amount) or (buyer, quantity).
    pub fields: (u64, u64),
    /// The RESULT's value and aux.
    pub value: u64,
    pub aux: u64,
    /// When the outcome was decided (ms).
    pub at_ms: u64,
    /// The RESULT's status (its wire code).
    pub status: u8,
    /// 0 = bid key, 1 = order key.
    pub kind: u8,
}

impl Slot {
    /// The key's hash (recomputed when a key moves: cheaper than storing it).
    #[inline]
    pub fn hash(&self) -> u64 {
        key_hash(self.kind, self.scope, self.key)
    }
}

/// A well-mixed 64-bit hash of a key (splitmix64-style rounds) under this
/// process's secret seed: bid_ids and order_ids are the client's choice,
/// and with a fixed function a client could pick ones that share a home
/// slot and segment (cheap offline: ~2^15–2^21 tries per key) and turn
/// every insert and lookup into a scan of one long probe run. Nothing
/// stores these hashes beyond the process.
#[inline]
pub fn key_hash(kind: u8, scope: u64, key: u64) -> u64 {
    key_hash_seeded(seed(), kind, scope, key)
}

fn seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(rand::random::<u64>)
}

#[inline]
fn key_hash_seeded(seed: u64, kind: u8, scope: u64, key: u64) -> u64 {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let tag = u64::from(kind) + 1;
    mix(mix(seed ^ scope ^ tag.wrapping_mul(0x9e37_79b9_7f4a_7c15)) ^ key)
}

/// What a walk decides for one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    Keep,
    Remove,
    /// Remove it and end the walk.
    RemoveAndStop,
    Stop,
}

struct Segment {
    /// How many top hash bits all keys of this segment share.
    depth: u32,
    len: usize,
    ctrl: Box<[u8]>,
    /// The caller's coarse time of each slot's key (see [`KeyTable::walk`]).
    coarse: Box<[u16]>,
    /// Each slot's home index (its hash's low bits): a deletion's shift
    /// decides from these without reading (and rehashing) the slots.
    home: Box<[u16]>,
    slots: Slots,
}

/// Bytes of a huge page (x86_64 and aarch64 with 4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// A segment's slots in one zeroed, huge-page-aligned block that Linux is
/// asked to back with transparent huge pages (`MADV_HUGEPAGE`), so random
/// probes over a big table cost one TLB entry per segment instead of one
/// per 4 KiB page. Elsewhere, or when THP is off, plain pages.
struct Slots(std::ptr::NonNull<Slot>);

impl Slots {
    const LAYOUT: std::alloc::Layout =
        match std::alloc::Layout::from_size_align(SEG * std::mem::size_of::<Slot>(), HUGE_PAGE) {
            Ok(l) => l,
            Err(_) => panic!("a valid layout"),
        };

    fn new() -> Self {
        let l = Self::LAYOUT;
        // SAFETY: the layout's size is not zero.
        let p = unsafe { std::alloc::alloc(l) };
        let Some(p) = std::ptr::NonNull::new(p) else {
            std::alloc::handle_alloc_error(l)
        };
        // SAFETY: the range is the block just allocated, page aligned; the
        // advice only changes how its pages are backed. Failure (THP not
        // supported) leaves plain pages: ignored.
        #[cfg(target_os = "linux")]
        unsafe {
            libc::madvise(p.as_ptr().cast(), l.size(), libc::MADV_HUGEPAGE)
        };
        // SAFETY: the block is `l.size()` writable bytes; an all-zero Slot
        // is a valid Slot (integers only), the same as `Slot::default()`.
        unsafe { std::ptr::write_bytes(p.as_ptr(), 0, l.size()) };
        Slots(p.cast())
    }
}

impl std::ops::Deref for Slots {
    type Target = [Slot];
    fn deref(&self) -> &[Slot] {
        // SAFETY: the block holds SEG initialized slots, owned by self.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr(), SEG) }
    }
}

impl std::ops::DerefMut for Slots {
    fn deref_mut(&mut self) -> &mut [Slot] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_ptr(), SEG) }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.0.as_ptr().cast(), Self::LAYOUT) }
    }
}

// SAFETY: `Slots` owns its block as a `Box<[Slot]>` would (no sharing).
unsafe impl Send for Slots {}
// SAFETY: shared access only reads, through `&[Slot]`.
unsafe impl Sync for Slots {}

impl Segment {
    fn new(depth: u32) -> Self {
        Segment {
            depth,
            len: 0,
            ctrl: vec![0u8; SEG].into_boxed_slice(),
            coarse: vec![0u16; SEG].into_boxed_slice(),
            home: vec![0u16; SEG].into_boxed_slice(),
            slots: Slots::new(),
        }
    }

    #[inline]
    fn find(&self, hash: u64, eq: impl Fn(&Slot) -> bool) -> Option<usize> {
        let tag = OCCUPIED | (hash >> 32) as u8 & TAG;
        let mut i = hash as usize & (SEG - 1);
        loop {
            let c = self.ctrl[i];
            if c == 0 {
                return None;
            }
            if c & !ACCEPTED == tag && eq(&self.slots[i]) {
                return Some(i);
            }
            i = (i + 1) & (SEG - 1);
        }
    }

    fn insert(&mut self, slot: Slot, hash: u64, accepted: bool, coarse: u16) {
        debug_assert!(self.len < SEG, "a segment splits before it is full");
        let mut i = hash as usize & (SEG - 1);
        while self.ctrl[i] != 0 {
            i = (i + 1) & (SEG - 1);
        }
        self.ctrl[i] = ctrl_byte(hash, accepted);
        self.coarse[i] = coarse;
        self.home[i] = (hash as usize & (SEG - 1)) as u16;
        self.slots[i] = slot;
        self.len += 1;
    }

    /// Empties slot `i` and shifts the rest of its probe run back, so every
    /// key stays reachable from its home slot without tombstones.
    fn remove(&mut self, mut i: usize) {
        debug_assert!(self.ctrl[i] != 0);
        self.len -= 1;
        let mut j = i;
        loop {
            j = (j + 1) & (SEG - 1);
            if self.ctrl[j] == 0 {
                break;
            }
            let home = usize::from(self.home[j]);
            debug_assert_eq!(home, self.slots[j].hash() as usize & (SEG - 1));
            // Slot j may move to i if its home is not in (i, j] (cyclically).
            if (j.wrapping_sub(home) & (SEG - 1)) >= (j.wrapping_sub(i) & (SEG - 1)) {
                self.ctrl[i] = self.ctrl[j];
                self.coarse[i] = self.coarse[j];
                self.home[i] = self.home[j];
                self.slots[i] = self.slots[j];
                i = j;
            }
        }
        self.ctrl[i] = 0;
    }
}

/// A hint to load the cache line holding `*r` into every cache level.
#[inline(always)]
fn prefetch_line<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and changes no memory; SSE is part
    // of every x86_64 target, and the address comes from a reference.
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((r as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

#[inline]
fn ctrl_byte(hash: u64, accepted: bool) -> u8 {
    // Tag bits from the middle of the hash: the top bits pick the segment
    // and the low bits the home slot.
    OCCUPIED | (hash >> 32) as u8 & TAG | if accepted { ACCEPTED } else { 0 }
}

/// The table. Keys are identified by the caller's equality on slots and a
/// 64-bit hash it computes.
pub struct KeyTable {
    /// Segment index by the hash's top `global_depth` bits.
    dir: Vec<u32>,
    global_depth: u32,
    segments: Vec<Segment>,
    len: usize,
    /// The walk's position: segment, slot.
    cursor: (usize, usize),
}

impl Default for KeyTable {
    fn default() -> Self {
        KeyTable {
            dir: vec![0],
            global_depth: 0,
            segments: vec![Segment::new(0)],
            len: 0,
            cursor: (0, 0),
        }
    }
}

/// Where a key is: segment and slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos(u32, u32);

impl KeyTable {
    #[inline]
    fn segment_of(&self, hash: u64) -> usize {
        let d = self.global_depth;
        let i = if d == 0 {
            0
        } else {
            (hash >> (64 - d)) as usize
        };
        self.dir[i] as usize
    }

    /// Asks the CPU to start loading the lines a [`find`](Self::find) and
    /// an [`insert`](Self::insert) of `hash` will touch first: its home
    /// slot's control byte, coarse time, home index and slot. Issued a few
    /// keys ahead of their use, the DRAM (and page walk) latency of those
    /// lines overlaps the work on the keys before; it changes nothing else.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        let seg = &self.segments[self.segment_of(hash)];
        let i = hash as usize & (SEG - 1);
        prefetch_line(&seg.ctrl[i]);
        prefetch_line(&seg.coarse[i]);
        prefetch_line(&seg.home[i]);
        prefetch_line(&seg.slots[i]);
    }

    #[inline]
    pub fn find(&self, hash: u64, eq: impl Fn(&Slot) -> bool) -> Option<Pos> {
        let s = self.segment_of(hash);
        self.segments[s]
            .find(hash, eq)
            .map(|i| Pos(s as u32, i as u32))
    }

    #[inline]
    pub fn get(&self, p: Pos) -> &Slot {
        &self.segments[p.0 as usize].slots[p.1 as usize]
    }

    /// Replaces the slot at `p` (same key).
    pub fn set(&mut self, p: Pos, slot: Slot, hash: u64, accepted: bool, coarse: u16) {
        let (seg, i) = (&mut self.segments[p.0 as usize], p.1 as usize);
        debug_assert_eq!(seg.slots[i].hash(), hash);
        seg.ctrl[i] = ctrl_byte(hash, accepted);
        seg.coarse[i] = coarse;
        seg.slots[i] = slot;
    }

    /// Inserts a key the caller found absent; `hash` is `slot.hash()`.
    pub fn insert(&mut self, slot: Slot, hash: u64, accepted: bool, coarse: u16) {
        debug_assert_eq!(slot.hash(), hash);
        let mut s = self.segment_of(hash);
        if self.segments[s].len >= MAX_LOAD {
            self.split(s);
            s = self.segment_of(hash);
        }
        self.segments[s].insert(slot, hash, accepted, coarse);
        self.len += 1;
    }

    /// Splits segment `s` by the next hash bit; doubles the directory first
    /// when the segment already uses all of its bits.
    fn split(&mut self, s: usize) {
        let d = self.segments[s].depth;
        if d == self.global_depth {
            self.dir = self.dir.iter().flat_map(|&x| [x, x]).collect();
            self.global_depth += 1;
        }
        let t = self.segments.len();
        self.segments.push(Segment::new(d + 1));
        let old = std::mem::replace(&mut self.segments[s], Segment::new(d + 1));
        // Directory entries of segment s whose bit d (from the top) is 1 now
        // point to t.
        let shift = self.global_depth - d - 1;
        for (i, e) in self.dir.iter_mut().enumerate() {
            if *e as usize == s && (i >> shift) & 1 == 1 {
                *e = t as u32;
            }
        }
        for i in 0..SEG {
            if old.ctrl[i] != 0 {
                let slot = old.slots[i];
                let h = slot.hash();
                let to = self.segment_of(h);
                debug_assert!(to == s || to == t);
                let accepted = old.ctrl[i] & ACCEPTED != 0;
                self.segments[to].insert(slot, h, accepted, old.coarse[i]);
            }
        }
    }

    /// Moves the cursor over up to `quota` slots, in order, wrapping
    /// around; `f(slot, coarse time, accepted)` says which keys leave (a
    /// slot whose key left is visited again: the next key of its run may
    /// have shifted into it). `f` should read the slot only when the coarse
    /// time and the accepted bit do not decide. Returns the slots passed.
    pub fn walk(&mut self, quota: usize, mut f: impl FnMut(&Slot, u16, bool) -> Visit) -> usize {
        let mut passed = 0;
        while passed < quota {
            let (s, i) = self.cursor;
            let seg = &mut self.segments[s];
            let c = seg.ctrl[i];
            let v = if c == 0 {
                Visit::Keep
            } else {
                f(&seg.slots[i], seg.coarse[i], c & ACCEPTED != 0)
            };
            if matches!(v, Visit::Remove | Visit::RemoveAndStop) {
                seg.remove(i);
                self.len -= 1;
            } else {
                self.advance();
                passed += 1;
            }
            if matches!(v, Visit::Stop | Visit::RemoveAndStop) {
                break;
            }
        }
        passed
    }

    fn advance(&mut self) {
        let (s, i) = &mut self.cursor;
        *i += 1;
        if *i == SEG {
            *i = 0;
            *s = (*s + 1) % self.segments.len();
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots, occupied or not (one full walk).
    pub fn capacity(&self) -> usize {
        self.segments.len() * SEG
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(k: u64) -> u64 {
        key_hash(0, 0, k)
    }

    fn slot(k: u64) -> Slot {
        Slot {
            key: k,
            ..Slot::default()
        }
    }

    fn put(t: &mut KeyTable, k: u64, accepted: bool) {
        t.insert(slot(k), hash(k), accepted, 0);
    }

    fn find(t: &KeyTable, k: u64) -> Option<Pos> {
        t.find(hash(k), |s| s.key == k)
    }

    /// Keys picked to share a home slot under one seed do not share it
    /// under another: a client cannot precompute colliding bid_ids.
    #[test]
    fn colliding_keys_do_not_collide_under_another_seed() {
        let home = |seed, k| key_hash_seeded(seed, 0, 7, k) & 0x3ff;
        let target = home(1, 0);
        let colliding: Vec<u64> = (1..200_000).filter(|&k| home(1, k) == target).collect();
        assert!(colliding.len() > 100);
        let still = colliding
            .iter()
            .filter(|&&k| home(2, k) == home(2, 0))
            .count();
        assert!(still < 5, "{still} of {} still collide", colliding.len());
    }

    #[test]
    fn slots_are_one_cache_line() {
        assert_eq!(std::mem::size_of::<Slot>(), 64);
        assert_eq!(std::mem::align_of::<Slot>(), 64);
    }

    #[test]
    fn grows_by_splitting_and_finds_every_key() {
        let mut t = KeyTable::default();
        let n = (SEG * 9) as u64;
        for k in 0..n {
            assert!(find(&t, k).is_none());
            put(&mut t, k, k % 2 == 0);
        }
        assert_eq!(t.len(), n as usize);
        assert!(t.capacity() >= n as usize, "split into several segments");
        for k in 0..n {
            let p = find(&t, k).unwrap_or_else(|| panic!("key {k} lost"));
            assert_eq!(t.get(p).key, k);
        }
        assert!(find(&t, n + 1).is_none());
    }

    #[test]
    fn a_walk_removes_what_it_is_told_and_keeps_the_rest_reachable() {
        let mut t = KeyTable::default();
        let n = (SEG * 3) as u64;
        for k in 0..n {
            put(&mut t, k, false);
        }
        let cap = t.capacity();
        let visited = t.walk(cap, |s, _, _| {
            if s.key % 3 == 0 {
                Visit::Remove
            } else {
                Visit::Keep
            }
        });
        assert!(visited >= cap);
        for k in 0..n {
            assert_eq!(find(&t, k).is_some(), k % 3 != 0, "key {k}");
        }
        assert_eq!(t.len(), (n - n.div_ceil(3)) as usize);
    }

    #[test]
    fn walks_see_the_accepted_bit_and_stop_when_told() {
        let mut t = KeyTable::default();
        for k in 0..100 {
            put(&mut t, k, k < 10);
        }
        let mut accepted = 0;
        t.walk(t.capacity(), |_, _, a| {
            accepted += a as usize;
            Visit::Keep
        });
        assert_eq!(accepted, 10);
        let mut seen = 0;
        t.walk(t.capacity(), |_, _, _| {
            seen += 1;
            Visit::RemoveAndStop
        });
        assert_eq!((seen, t.len()), (1, 99));
    }
}
