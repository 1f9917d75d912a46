//! The pipelined Redis connection's read side: a reader thread that parses
//! replies as they arrive and hands them to the shard, one message per read.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use redis::Value;

/// What a Redis shard waits for besides commands.
#[derive(Debug)]
pub enum RedisEvent {
    /// The replies one read of a pipelined connection brought (in order),
    /// tagged with the connections' epoch and this connection's lane (the
    /// node, or one master of a cluster); an error ends the connection.
    Replies(u64, usize, Result<Vec<Value>, String>),
    /// A lane's reconnect (tagged as its replies will be): the connection,
    /// its scripts loaded (its reader thread reads it from now on), or why
    /// the master could not be reached.
    Lane(u64, usize, Result<std::net::TcpStream, String>),
    /// From the update listener: news of this shard's channels.
    Channel(super::updates::News),
}

/// Connects a TCP stream for the pipeline: no Nagle, bounded writes.
pub fn connect(addr: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let a = std::net::ToSocketAddrs::to_socket_addrs(addr)?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let s = TcpStream::connect_timeout(&a, timeout)?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// Opens a pipelined connection to `addr` and proves the master serves it:
/// `SCRIPT LOAD` of every script, each answered with the SHA1 that
/// `EVALSHA` will name (`shas`), within `timeout` in all. A master that
/// accepts the connection but does not answer (stopped, overloaded) fails
/// here, not on the ops. The stream comes back with no read timeout, for
/// its reader thread.
pub fn open_lane(addr: &str, timeout: Duration, shas: &[String]) -> Result<TcpStream, String> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + timeout;
    let mut s = connect(addr, timeout).map_err(|e| format!("connect to {addr}: {e}"))?;
    let mut out = Vec::new();
    for src in gavel_redis::scripts::ALL {
        out.extend(
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(src)
                .get_packed_command(),
        );
    }
    s.write_all(&out)
        .map_err(|e| format!("SCRIPT LOAD to {addr}: {e}"))?;
    let (mut buf, mut got) = (Vec::new(), Vec::new());
    let mut chunk = vec![0u8; 4096];
    let mut start = 0;
    while got.len() < gavel_redis::scripts::SCRIPTS {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "{addr} did not answer SCRIPT LOAD within {timeout:?}"
            ));
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        let n = match s.read(&mut chunk) {
            Ok(0) => return Err(format!("{addr} closed the connection")),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("{addr} did not answer SCRIPT LOAD: {e}")),
        };
        buf.extend_from_slice(&chunk[..n]);
        let (batch, bad) = match parse_all(&buf, &mut start) {
            Ok(b) => (b, None),
            Err((b, e)) => (b, Some(e)),
        };
        got.extend(batch);
        if let Some(e) = bad {
            return Err(format!("{addr}: unreadable reply: {e}"));
        }
    }
    for (v, sha) in got.iter().zip(shas) {
        let ok = match v {
            Value::BulkString(b) => b == sha.as_bytes(),
            Value::SimpleString(t) => t == sha,
            _ => false,
        };
        if !ok {
            return Err(format!("{addr} answered SCRIPT LOAD with {v:?}"));
        }
    }
    if got.len() > gavel_redis::scripts::SCRIPTS || start != buf.len() {
        return Err(format!("{addr} sent more than it was asked"));
    }
    s.set_read_timeout(None).map_err(|e| e.to_string())?;
    Ok(s)
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

    /// A master that accepts connections and answers nothing (stopped) fails
    /// the probe within the timeout; one that answers passes it.
    #[test]
    fn the_probe_needs_the_scripts_loaded_in_time() {
        let shas = gavel_redis::scripts::script_shas();
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let t = Instant::now();
        let e = open_lane(&addr, Duration::from_millis(200), &shas).unwrap_err();
        assert!(e.contains("did not answer"), "{e}");
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let r = gavel_testkit::redis::RedisServer::start();
        let addr = plain_addr(&r.url()).unwrap();
        let s = open_lane(&addr, Duration::from_secs(5), &shas).unwrap();
        assert_eq!(s.read_timeout().unwrap(), None, "for the reader thread");
    }
}
