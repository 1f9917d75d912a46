//! The auctions one shard holds, by id: a dense store of one cache line per
//! auction and a small hash index of positions into it.
//!
//! Why not a `HashMap<u64, Auction>`: its buckets hold the whole auction
//! (72 bytes with the key) at a load between 44% and 87%, so an auction
//! cost ~154 bytes, and growing rehashes every auction at once. Here:
//!
//! - auctions live in chunks of [`CHUNK`] slots, each slot one 64-byte
//!   cache line (an [`Auction`] is 57 bytes; one line means one miss per
//!   bid); chunks are added as needed and never move, so growth copies
//!   nothing and the slack is less than one chunk;
//! - the index is a `hashbrown::HashTable` of 8-byte entries (position and
//!   32 bits of the id's hash); growing it rehashes from the stored bits and
//!   never touches an auction;
//! - removal moves the last auction into the hole (positions stay dense).
//!
//! ≈ 64 B + 8 B / load (9–18 B) per auction: 73–82 B instead of ~154.

use hashbrown::HashTable;

use super::auction::Auction;

/// Auctions per chunk (64 KiB).
const CHUNK: usize = 1024;

/// One auction on a cache line of its own.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line(Auction);

const _: () = assert!(std::mem::size_of::<Line>() == 64);

/// Where an auction is, and 32 bits of its id's hash (to rehash without
/// reading the auction).
#[derive(Clone, Copy)]
struct Entry {
    pos: u32,
    tag: u32,
}

/// The auctions of one shard.
pub struct AuctionTable {
    chunks: Vec<Box<[Line]>>,
    len: usize,
    index: HashTable<Entry>,
    hasher: ahash::RandomState,
}

impl Default for AuctionTable {
    fn default() -> Self {
        AuctionTable {
            chunks: Vec::new(),
            len: 0,
            index: HashTable::new(),
            hasher: ahash::RandomState::new(),
        }
    }
}

/// The index's hash of a tag: the tag in both halves (hashbrown takes the
/// bucket from the low bits and the control byte from the top ones).
#[inline]
fn spread(tag: u32) -> u64 {
    (u64::from(tag) << 32) | u64::from(tag)
}

#[inline]
fn line(chunks: &[Box<[Line]>], pos: u32) -> &Line {
    let pos = pos as usize;
    &chunks[pos / CHUNK][pos % CHUNK]
}

impl AuctionTable {
    #[inline]
    fn tag(&self, id: u64) -> u32 {
        (self.hasher.hash_one(id) >> 32) as u32
    }

    #[inline]
    fn line(&self, pos: u32) -> &Line {
        line(&self.chunks, pos)
    }

    #[inline]
    fn line_mut(&mut self, pos: u32) -> &mut Line {
        let pos = pos as usize;
        &mut self.chunks[pos / CHUNK][pos % CHUNK]
    }

    fn find(&self, id: u64) -> Option<u32> {
        let tag = self.tag(id);
        self.index
            .find(spread(tag), |e| e.tag == tag && self.line(e.pos).0.id == id)
            .map(|e| e.pos)
    }

    #[inline]
    pub fn get(&self, id: u64) -> Option<&Auction> {
        self.find(id).map(|pos| &self.line(pos).0)
    }

    #[inline]
    pub fn get_mut(&mut self, id: u64) -> Option<&mut Auction> {
        let pos = self.find(id)?;
        Some(&mut self.line_mut(pos).0)
    }

    #[inline]
    pub fn contains(&self, id: u64) -> bool {
        self.find(id).is_some()
    }

    /// Adds an auction; its id must not be held already.
    pub fn insert(&mut self, a: Auction) {
        debug_assert!(!self.contains(a.id), "auction {} held twice", a.id);
        let pos = u32::try_from(self.len).expect("fewer than 2^32 auctions per shard");
        if self.len == self.chunks.len() * CHUNK {
            self.chunks.push(vec![Line(a); CHUNK].into_boxed_slice());
        }
        *self.line_mut(pos) = Line(a);
        self.len += 1;
        let tag = self.tag(a.id);
        let entry = Entry { pos, tag };
        self.index
            .insert_unique(spread(tag), entry, |e| spread(e.tag));
    }

    /// Removes and returns auction `id`; the last auction takes its place.
    pub fn remove(&mut self, id: u64) -> Option<Auction> {
        let tag = self.tag(id);
        let chunks = &self.chunks;
        let found = self.index.find_entry(spread(tag), |e| {
            e.tag == tag && line(chunks, e.pos).0.id == id
        });
        let (gone, _) = found.ok()?.remove();
        let removed = self.line(gone.pos).0;
        let last = u32::try_from(self.len - 1).expect("positions fit u32");
        if gone.pos != last {
            let moved = self.line(last).0;
            let moved_tag = self.tag(moved.id);
            let e = self
                .index
                .find_mut(spread(moved_tag), |e| e.pos == last)
                .expect("the last auction is indexed");
            e.pos = gone.pos;
            *self.line_mut(gone.pos) = Line(moved);
        }
        self.len -= 1;
        // Keep one spare chunk so add/remove at a boundary does not churn.
        if self.chunks.len() * CHUNK >= self.len + 2 * CHUNK {
            self.chunks.pop();
        }
        // Most auctions left (passivation): give the index back too, from
        // the stored hash bits (no auction is read).
        let room = self.index.capacity();
        if room > 4 * CHUNK && self.len < room / 4 {
            self.index.shrink_to(self.len * 2, |e| spread(e.tag));
        }
        Some(removed)
    }

    /// The auction at position `pos` (`0..len()`; positions change when
    /// an auction is removed), for walks over all of them.
    #[inline]
    pub fn at(&self, pos: usize) -> Option<&Auction> {
        (pos < self.len).then(|| &line(&self.chunks, pos as u32).0)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every auction held, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Auction> {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .take(self.len)
            .map(|l| &l.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(id: u64) -> Auction {
        Auction::new(id, id * 10, 1, 0)
    }

    #[test]
    fn finds_every_auction_across_chunks_and_growth() {
        let mut t = AuctionTable::default();
        for id in 0..5 * CHUNK as u64 {
            t.insert(a(id * 7919));
        }
        assert_eq!(t.len(), 5 * CHUNK);
        for id in 0..5 * CHUNK as u64 {
            assert_eq!(t.get(id * 7919).map(|x| x.reserve), Some(id * 79190));
        }
        assert!(t.get(1).is_none() && !t.contains(7918));
        t.get_mut(7919).unwrap().high_bid = 5;
        assert_eq!(t.get(7919).unwrap().high_bid, 5);
    }

    #[test]
    fn removal_keeps_the_others_reachable_and_frees_chunks() {
        let mut t = AuctionTable::default();
        let n = 3 * CHUNK as u64;
        for id in 0..n {
            t.insert(a(id));
        }
        // Remove every other one, from the front (each moves the last).
        for id in (0..n).step_by(2) {
            assert_eq!(t.remove(id).map(|x| x.id), Some(id));
            assert!(t.remove(id).is_none());
        }
        assert_eq!(t.len(), n as usize / 2);
        for id in 0..n {
            assert_eq!(t.get(id).map(|x| x.id), (id % 2 == 1).then_some(id));
        }
        let mut seen: Vec<u64> = t.iter().map(|x| x.id).collect();
        seen.sort_unstable();
        assert_eq!(seen, (1..n).step_by(2).collect::<Vec<_>>());
        for id in (1..n).step_by(2) {
            t.remove(id);
        }
        assert!(t.is_empty() && t.chunks.len() <= 1);
        t.insert(a(42));
        assert_eq!(t.get(42).map(|x| x.id), Some(42));
    }
}
