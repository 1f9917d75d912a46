//! Per-auction update channels. The scripts `SPUBLISH` each bid update and
//! closing on the auction's own shard channel, [`keys::updates`]
//! (`gavel:{a:ID}:updates`, under the auction's hash tag): on a Redis Cluster
//! the message stays on the master owning the auction's slot, and only the
//! connections that `SSUBSCRIBE`d to that channel on that master receive it.
//! A node subscribes to the auctions its own clients watch, nothing else. A
//! standalone Redis (7.0 or later) has shard channels too, so one scheme
//! serves both.
//!
//! The pieces a listener needs, without its threads: the masters and the
//! slots each serves, a connection (RESP2: a subscribed connection may only
//! (un)subscribe and PING), the commands, and what each reply on it means.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use redis::{IntoConnectionInfo, Value};

use crate::client::RedisError;
use crate::keys;
use crate::scripts::Update;

/// Every master with the slots it serves, and the credentials to use.
pub type Masters = (Vec<(u16, u16, String)>, redis::RedisConnectionInfo);

/// Where to subscribe: every master with the slots it serves (`(first, last,
/// redis://host:port)`, sorted by first slot), from `CLUSTER SLOTS`; a single
/// node serves every slot. Also the credentials of the first URL (a
/// cluster's masters take them).
pub fn masters(urls: &[String], cluster: bool, timeout: Duration) -> Result<Masters, RedisError> {
    let first = urls
        .first()
        .ok_or_else(|| RedisError::Script("no Redis URL given".into()))?;
    let creds = first.as_str().into_connection_info()?.redis;
    if !cluster {
        return Ok((vec![(0, 16383, first.clone())], creds));
    }
    Ok((crate::RedisGavel::cluster_slots(urls, timeout)?, creds))
}

/// A connection for shard channels to `url` (its host and port), with
/// `creds` (AUTH is sent; its `+OK` is read as [`Event::Ok`]); writes and
/// reads bounded by `timeout`.
pub fn connect(
    url: &str,
    creds: &redis::RedisConnectionInfo,
    timeout: Duration,
) -> Result<TcpStream, RedisError> {
    let info = url.into_connection_info()?;
    let redis::ConnectionAddr::Tcp(host, port) = &info.addr else {
        return Err(RedisError::Script(format!(
            "update channels need a plain TCP Redis URL, not {url}"
        )));
    };
    let io = |e: std::io::Error| RedisError::Unavailable(e.into());
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), *port))
        .map_err(io)?
        .next()
        .ok_or_else(|| RedisError::Script(format!("{host}: no address")))?;
    let mut sock = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    sock.set_nodelay(true).map_err(io)?;
    sock.set_write_timeout(Some(timeout)).map_err(io)?;
    sock.set_read_timeout(Some(timeout)).map_err(io)?;
    if let Some(pw) = &creds.password {
        let mut auth = redis::cmd("AUTH");
        if let Some(user) = &creds.username {
            auth.arg(user);
        }
        sock.write_all(&auth.arg(pw).get_packed_command())
            .map_err(io)?;
    }
    Ok(sock)
}

/// Appends `SSUBSCRIBE gavel:{a:ID}:updates`.
pub fn ssubscribe(auction_id: u64, out: &mut Vec<u8>) {
    command(b"SSUBSCRIBE", auction_id, out);
}

/// Appends `SUNSUBSCRIBE gavel:{a:ID}:updates`.
pub fn sunsubscribe(auction_id: u64, out: &mut Vec<u8>) {
    command(b"SUNSUBSCRIBE", auction_id, out);
}

/// Appends `PING` (allowed on a subscribed connection).
pub fn ping(out: &mut Vec<u8>) {
    out.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
}

fn command(name: &[u8], auction_id: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"*2\r\n");
    crate::resp::bulk(out, name);
    crate::resp::bulk(out, keys::updates(auction_id).as_bytes());
}

/// What one reply on a channel connection means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `SSUBSCRIBE` confirmed: updates of the auction arrive from now on.
    Subscribed(u64),
    /// `SUNSUBSCRIBE` confirmed, or the master dropped the subscription
    /// (its slot moved away).
    Unsubscribed(u64),
    Update(Update),
    /// The answer to PING, subscribed or not.
    Pong,
    /// `+OK` (AUTH).
    Ok,
}

/// Reads one reply; an error reply (a refused AUTH, `MOVED` for a channel
/// whose slot this master does not serve) is an error, and so is anything
/// else a channel connection never carries.
pub fn event(v: &Value) -> Result<Event, RedisError> {
    let bulk = |v: Option<&Value>| match v {
        Some(Value::BulkString(b)) => Some(b.clone()),
        _ => None,
    };
    let unexpected = || RedisError::Script(format!("unexpected on an update channel: {v:?}"));
    match v {
        Value::ServerError(e) => Err(redis::RedisError::from(e.clone()).into()),
        Value::Okay => Ok(Event::Ok),
        Value::SimpleString(s) if s == "PONG" => Ok(Event::Pong),
        Value::Array(items) => {
            let kind = bulk(items.first()).ok_or_else(unexpected)?;
            let auction = || {
                bulk(items.get(1))
                    .and_then(|c| keys::auction_of_updates(&c))
                    .ok_or_else(unexpected)
            };
            match kind.as_slice() {
                b"smessage" => {
                    let payload = bulk(items.get(2)).ok_or_else(unexpected)?;
                    Update::parse(&payload)
                        .map(Event::Update)
                        .ok_or_else(unexpected)
                }
                b"ssubscribe" => Ok(Event::Subscribed(auction()?)),
                b"sunsubscribe" => Ok(Event::Unsubscribed(auction()?)),
                b"pong" => Ok(Event::Pong),
                _ => Err(unexpected()),
            }
        }
        _ => Err(unexpected()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(items: &[&[u8]]) -> Value {
        Value::Array(
            items
                .iter()
                .map(|b| Value::BulkString(b.to_vec()))
                .collect(),
        )
    }

    #[test]
    fn replies_mean_what_they_say() {
        let ch = keys::updates(42);
        assert_eq!(
            event(&arr(&[b"ssubscribe", ch.as_bytes()])).unwrap(),
            Event::Subscribed(42)
        );
        assert_eq!(
            event(&arr(&[b"sunsubscribe", ch.as_bytes()])).unwrap(),
            Event::Unsubscribed(42)
        );
        assert_eq!(
            event(&arr(&[b"smessage", ch.as_bytes(), b"C|42|5|7"])).unwrap(),
            Event::Update(Update::Closed {
                auction_id: 42,
                winning_bid: 5,
                winner: 7
            })
        );
        assert_eq!(event(&arr(&[b"pong", b""])).unwrap(), Event::Pong);
        assert_eq!(
            event(&Value::SimpleString("PONG".into())).unwrap(),
            Event::Pong
        );
        assert!(event(&arr(&[b"message", b"gavel:updates", b"C|1|2|3"])).is_err());
        assert!(event(&arr(&[b"ssubscribe", b"other"])).is_err());
        let mut out = Vec::new();
        ssubscribe(42, &mut out);
        assert_eq!(
            out,
            redis::cmd("SSUBSCRIBE").arg(&ch).get_packed_command(),
            "as redis-rs packs it"
        );
    }
}
