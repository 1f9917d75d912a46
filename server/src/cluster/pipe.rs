//! The pipelined Redis connection's read side: a reader thread that parses
//! replies as they arrive and hands them to the shard, one message per read.

use crossbeam_channel::Sender;
use redis::Value;

/// What a Redis shard waits for besides commands.
#[derive(Debug)]
pub enum RedisEvent {
    /// The replies one read of a pipelined connection brought (in order),
    /// tagged with the connections' epoch and this connection's lane (the
    /// node, or one master of a cluster); an error ends the connection.
    Replies(u64, usize, Result<Vec<Value>, String>),
    /// From the update listener: news of this shard's channels.
    Channel(super::updates::News),
}

/// The reader thread of a pipelined connection: reads what Redis sent,
/// parses every complete reply in it and hands them to the shard in one
/// message per read (not one per reply: fewer wake-ups). Ends on EOF, on an
/// I/O or parse error (reported), or when the shard is gone.
pub fn read_replies(
    mut sock: std::net::TcpStream,
    epoch: u64,
    lane: usize,
    tx: &Sender<RedisEvent>,
) {
    use std::io::Read;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut start, mut end) = (0, 0);
    loop {
        if start == end {
            (start, end) = (0, 0);
        } else if end == buf.len() {
            if start > 0 {
                buf.copy_within(start..end, 0);
                (start, end) = (0, end - start);
            } else {
                let n = buf.len() * 2;
                buf.resize(n, 0); // one reply larger than the buffer
            }
        }
        let n = match sock.read(&mut buf[end..]) {
            Ok(0) => {
                let _ = tx.send(RedisEvent::Replies(
                    epoch,
                    lane,
                    Err("redis closed the connection".into()),
                ));
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.send(RedisEvent::Replies(epoch, lane, Err(format!("read: {e}"))));
                return;
            }
        };
        end += n;
        match parse_all(&buf[..end], &mut start) {
            Ok(batch) if batch.is_empty() => {}
            Ok(batch) => {
                if tx
                    .send(RedisEvent::Replies(epoch, lane, Ok(batch)))
                    .is_err()
                {
                    return;
                }
            }
            Err((batch, e)) => {
                if !batch.is_empty() {
                    let _ = tx.send(RedisEvent::Replies(epoch, lane, Ok(batch)));
                }
                let _ = tx.send(RedisEvent::Replies(
                    epoch,
                    lane,
                    Err(format!("unreadable reply: {e}")),
                ));
                return;
            }
        }
    }
}

/// The replies parsed before an unreadable one, and why it is unreadable.
type PartialParse = (Vec<Value>, String);

/// Parses every complete reply in `buf[*start..]`, advancing `start`; on a
/// parse error, the replies before it and the error.
fn parse_all(buf: &[u8], start: &mut usize) -> Result<Vec<Value>, PartialParse> {
    let mut batch = Vec::new();
    loop {
        match gavel_redis::resp::parse(&buf[*start..]) {
            Ok(Some((v, used))) => {
                batch.push(v);
                *start += used;
            }
            Ok(None) => return Ok(batch),
            Err(e) => return Err((batch, e.to_string())),
        }
    }
}

/// `host:port` of a `redis://host[:port][/]` URL without credentials or a
/// database index; `None` otherwise.
pub fn plain_addr(url: &str) -> Option<String> {
    let rest = url.strip_prefix("redis://")?.trim_end_matches('/');
    if rest.is_empty() || rest.contains(['@', '/', '?']) {
        return None;
    }
    Some(if rest.contains(':') {
        rest.to_string()
    } else {
        format!("{rest}:6379")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_urls_only() {
        assert_eq!(
            plain_addr("redis://127.0.0.1:7000"),
            Some("127.0.0.1:7000".into())
        );
        assert_eq!(plain_addr("redis://cache/"), Some("cache:6379".into()));
        assert_eq!(plain_addr("redis://:pw@h:1"), None);
        assert_eq!(plain_addr("redis://h:1/2"), None);
        assert_eq!(plain_addr("rediss://h:1"), None);
    }
}
