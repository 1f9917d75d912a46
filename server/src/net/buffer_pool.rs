//! A free list of I/O buffers owned by one event loop.
//!
//! Connections borrow a buffer only while they have bytes to hold (a partial
//! frame in, unsent replies out) and give it back when it empties, so idle
//! connections cost no buffer memory.

use bytes::BytesMut;

pub struct BufferPool {
    free: Vec<BytesMut>,
    size: usize,
    max_free: usize,
}

impl BufferPool {
    pub fn new(size: usize, max_free: usize) -> Self {
        BufferPool {
            free: Vec::new(),
            size,
            max_free,
        }
    }

    pub fn get(&mut self) -> BytesMut {
        self.free
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(self.size))
    }

    /// Returns an empty buffer. Buffers that grew far beyond the pool size
    /// are dropped so one burst does not pin memory for ever.
    pub fn put(&mut self, mut buf: BytesMut) {
        if self.free.len() >= self.max_free || buf.capacity() > 16 * self.size {
            return;
        }
        buf.clear();
        // Reclaims the space consumed by `advance` without allocating when the
        // buffer is not shared.
        buf.reserve(self.size);
        self.free.push(buf);
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    #[test]
    fn reuses_buffers_and_reclaims_advanced_space() {
        let mut pool = BufferPool::new(1024, 4);
        let mut b = pool.get();
        b.extend_from_slice(&[1u8; 1000]);
        b.advance(1000);
        let ptr = b.as_ptr();
        pool.put(b);
        let b = pool.get();
        assert!(b.capacity() >= 1024);
        assert!(b.is_empty());
        assert_eq!(pool.free_count(), 0);
        let _ = ptr;
    }

    #[test]
    fn bounded_free_list() {
        let mut pool = BufferPool::new(64, 2);
        for _ in 0..5 {
            pool.put(BytesMut::with_capacity(64));
        }
        assert_eq!(pool.free_count(), 2);
    }
}
