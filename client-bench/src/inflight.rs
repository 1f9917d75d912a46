//! Per-connection table of requests awaiting their reply.
//!
//! A fixed number of slots (the pipeline depth). A request's tag encodes its
//! slot in the low 16 bits (slot + 1, so a tag is never 0) and a sequence in
//! the high 16 bits, so a stale or duplicated reply cannot be matched with a
//! newer request in the same slot. Lookup by tag is O(1); for protocols whose
//! replies come in send order, [`InFlight::take_oldest`] pops in FIFO order.

use std::collections::VecDeque;

use crate::target::HANDSHAKE_TAG;

/// Largest pipeline depth the tag layout allows (keeps every tag below
/// [`HANDSHAKE_TAG`]).
pub const MAX_SLOTS: usize = 0xfffe;

#[derive(Debug)]
pub struct InFlight<T> {
    slots: Vec<Option<(u32, T)>>,
    free: Vec<u16>,
    seq: u16,
    len: usize,
    /// Tags in send order, kept only for untagged (in-order) protocols.
    order: Option<VecDeque<u32>>,
}

impl<T> InFlight<T> {
    pub fn new(capacity: usize, keep_order: bool) -> InFlight<T> {
        assert!(
            (1..=MAX_SLOTS).contains(&capacity),
            "pipeline depth out of range"
        );
        InFlight {
            slots: (0..capacity).map(|_| None).collect(),
            free: (0..capacity as u16).rev().collect(),
            seq: 0,
            len: 0,
            order: keep_order.then(VecDeque::new),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    /// Stores `v` and returns its tag; `None` when every slot is taken.
    pub fn insert(&mut self, v: T) -> Option<u32> {
        let slot = self.free.pop()?;
        self.seq = self.seq.wrapping_add(1);
        let tag = (u32::from(self.seq) << 16) | (u32::from(slot) + 1);
        debug_assert_ne!(tag, HANDSHAKE_TAG);
        self.slots[slot as usize] = Some((tag, v));
        self.len += 1;
        if let Some(o) = &mut self.order {
            o.push_back(tag);
        }
        Some(tag)
    }

    /// Removes and returns the request tagged `tag`, if outstanding.
    pub fn take(&mut self, tag: u32) -> Option<T> {
        let low = (tag & 0xffff) as usize;
        if low == 0 || low > self.slots.len() {
            return None;
        }
        let slot = low - 1;
        match &self.slots[slot] {
            Some((t, _)) if *t == tag => {}
            _ => return None,
        }
        let (_, v) = self.slots[slot].take()?;
        self.free.push(slot as u16);
        self.len -= 1;
        if let Some(o) = &mut self.order {
            if o.front() == Some(&tag) {
                o.pop_front();
            } else if let Some(pos) = o.iter().position(|&t| t == tag) {
                o.remove(pos);
            }
        }
        Some(v)
    }

    /// Removes and returns the oldest outstanding request (in-order protocols).
    pub fn take_oldest(&mut self) -> Option<(u32, T)> {
        let tag = *self.order.as_ref()?.front()?;
        self.take(tag).map(|v| (tag, v))
    }

    /// Empties the table, returning how many requests were outstanding.
    pub fn clear(&mut self) -> usize {
        let n = self.len;
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.take().is_some() {
                self.free.push(i as u16);
            }
        }
        self.len = 0;
        if let Some(o) = &mut self.order {
            o.clear();
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_take_and_stale_tags() {
        let mut t = InFlight::new(2, false);
        let a = t.insert("a").unwrap();
        let b = t.insert("b").unwrap();
        assert!(t.is_full());
        assert_eq!(t.insert("c"), None);
        assert_ne!(a, 0);
        assert_eq!(t.take(b), Some("b"));
        assert_eq!(t.take(b), None, "a reply cannot be matched twice");
        let c = t.insert("c").unwrap();
        assert_eq!(c & 0xffff, b & 0xffff, "slot reused");
        assert_eq!(t.take(b), None, "stale tag does not match the new request");
        assert_eq!(t.take(0), None);
        assert_eq!(t.take(HANDSHAKE_TAG), None);
        assert_eq!(t.len(), 2);
        assert_eq!(t.clear(), 2);
        assert!(t.is_empty());
        assert_eq!(t.take(a), None);
        assert!(t.insert("d").is_some() && t.insert("e").is_some());
    }

    #[test]
    fn fifo_order() {
        let mut t = InFlight::new(4, true);
        let a = t.insert(1).unwrap();
        let _b = t.insert(2).unwrap();
        let c = t.insert(3).unwrap();
        assert_eq!(t.take(c), Some(3));
        assert_eq!(t.take_oldest(), Some((a, 1)));
        assert_eq!(t.take_oldest().map(|x| x.1), Some(2));
        assert_eq!(t.take_oldest(), None);
        let mut u: InFlight<u8> = InFlight::new(1, false);
        u.insert(1);
        assert_eq!(u.take_oldest(), None, "untagged order not kept");
    }

    #[test]
    fn max_depth_tags_stay_below_handshake() {
        let mut t = InFlight::new(MAX_SLOTS, false);
        for round in 0..3 {
            let tags: Vec<u32> = (0..MAX_SLOTS).map(|_| t.insert(round).unwrap()).collect();
            assert!(t.is_full());
            assert!(tags
                .iter()
                .all(|&tag| tag != HANDSHAKE_TAG && tag & 0xffff != 0));
            for tag in tags {
                assert_eq!(t.take(tag), Some(round));
            }
        }
    }
}
