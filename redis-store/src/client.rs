//! A blocking client for the scripts: one pipelined round trip per batch,
//! scripts loaded with `SCRIPT LOAD` and reloaded on `NOSCRIPT`, bounded
//! connect and I/O timeouts so an unreachable Redis is an error, never a hang.

use std::time::Duration;

use std::collections::HashMap;

use redis::{ConnectionLike, ErrorKind, IntoConnectionInfo, Value};

use crate::scripts::{self, Op, OpResult};

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// Redis could not be reached or did not answer in time.
    #[error("redis unavailable: {0}")]
    Unavailable(redis::RedisError),
    /// The script cache lost our scripts (restart, failover, SCRIPT FLUSH).
    #[error("redis lost the scripts: {0}")]
    NoScript(redis::RedisError),
    /// The cluster's slot map changed under us.
    #[error("redis cluster moved a slot: {0}")]
    Moved(redis::RedisError),
    /// Redis answered with an error or with something the scripts never return.
    #[error("redis script error: {0}")]
    Script(String),
}

impl From<redis::RedisError> for RedisError {
    fn from(e: redis::RedisError) -> Self {
        if e.kind() == ErrorKind::NoScriptError {
            RedisError::NoScript(e)
        } else if matches!(e.kind(), ErrorKind::Moved | ErrorKind::Ask) {
            RedisError::Moved(e)
        } else if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_cluster_error()
            || matches!(
                e.kind(),
                ErrorKind::ClusterDown | ErrorKind::TryAgain | ErrorKind::BusyLoadingError
            )
        {
            RedisError::Unavailable(e)
        } else {
            RedisError::Script(e.to_string())
        }
    }
}

/// An error reply that fails the op (BUSY is decoded as an outcome).
fn refusal(v: &Value) -> Option<redis::RedisError> {
    match v {
        Value::ServerError(e) if e.code() != "BUSY" => Some(e.clone().into()),
        _ => None,
    }
}

/// Where the scripts run. A cluster is driven directly: redis-rs' cluster
/// pipeline refuses EVALSHA, and one request per op would cost a round trip
/// each, so ops are grouped by the master owning their slot (from `CLUSTER
/// SLOTS`) and each group is one pipeline to that master.
pub enum Backend {
    Single(redis::Connection),
    Cluster {
        /// (first slot, last slot, master address)
        slots: Vec<(u16, u16, String)>,
        masters: HashMap<String, redis::Connection>,
    },
}

/// Connects with every step bounded by `timeout`. redis-rs bounds only the
/// TCP connect: its handshake (AUTH, SELECT, CLIENT SETINFO) would read with
/// no timeout, so a peer that accepts and never answers hung us forever. The
/// crate is built with `disable-client-setinfo` and connected without
/// credentials or database, which makes its handshake empty; AUTH and SELECT
/// are then sent here, after the socket timeouts are set.
fn connect_one(url: &str, timeout: Duration) -> Result<redis::Connection, RedisError> {
    connect_info(url.into_connection_info()?, timeout)
}

fn connect_info(
    info: redis::ConnectionInfo,
    timeout: Duration,
) -> Result<redis::Connection, RedisError> {
    let mut bare = info.clone();
    bare.redis = redis::RedisConnectionInfo::default();
    let mut conn = redis::Client::open(bare)?.get_connection_with_timeout(timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    if let Some(pw) = &info.redis.password {
        let mut auth = redis::cmd("AUTH");
        if let Some(user) = &info.redis.username {
            auth.arg(user);
        }
        auth.arg(pw).query::<()>(&mut conn)?;
    }
    if info.redis.db != 0 {
        redis::cmd("SELECT")
            .arg(info.redis.db)
            .query::<()>(&mut conn)?;
    }
    Ok(conn)
}

fn parse_slots(v: &Value) -> Option<Vec<(u16, u16, String)>> {
    let Value::Array(ranges) = v else { return None };
    let mut out = Vec::new();
    for r in ranges {
        let Value::Array(f) = r else { return None };
        let (Value::Int(a), Value::Int(b), Value::Array(master)) =
            (f.first()?, f.get(1)?, f.get(2)?)
        else {
            return None;
        };
        let host = match master.first()? {
            Value::BulkString(h) => String::from_utf8_lossy(h).into_owned(),
            Value::SimpleString(h) => h.clone(),
            _ => return None,
        };
        let Value::Int(port) = master.get(1)? else {
            return None;
        };
        out.push((*a as u16, *b as u16, format!("redis://{host}:{port}")));
    }
    Some(out)
}

/// A connection to Redis (one node, or a cluster given by its masters).
pub struct RedisGavel {
    backend: Backend,
    urls: Vec<String>,
    cluster: bool,
    timeout: Duration,
    window_ms: u64,
    shas: [String; scripts::SCRIPTS],
}

impl RedisGavel {
    /// Connects and loads the scripts. `urls` are `redis://host:port`; with
    /// `cluster`, list every master (scripts are loaded on each).
    pub fn connect(
        urls: &[String],
        cluster: bool,
        timeout: Duration,
        idempotency_window: Duration,
    ) -> Result<Self, RedisError> {
        let backend = Self::open(urls, cluster, timeout)?;
        let mut g = RedisGavel {
            backend,
            urls: urls.to_vec(),
            cluster,
            timeout,
            window_ms: idempotency_window.as_millis() as u64,
            shas: Default::default(),
        };
        g.load_scripts()?;
        Ok(g)
    }

    fn open(urls: &[String], cluster: bool, timeout: Duration) -> Result<Backend, RedisError> {
        if urls.is_empty() {
            return Err(RedisError::Script("no Redis URL given".into()));
        }
        if !cluster {
            return Ok(Backend::Single(connect_one(&urls[0], timeout)?));
        }
        let mut last = None;
        for url in urls {
            let mut c = match connect_one(url, timeout) {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            let v: Value = match redis::cmd("CLUSTER").arg("SLOTS").query(&mut c) {
                Ok(v) => v,
                Err(e) => {
                    last = Some(e.into());
                    continue;
                }
            };
            let slots = parse_slots(&v)
                .ok_or_else(|| RedisError::Script(format!("unreadable CLUSTER SLOTS: {v:?}")))?;
            // The masters take the seed URL's credentials.
            let seed = url.as_str().into_connection_info()?.redis;
            let mut masters = HashMap::new();
            for (_, _, addr) in &slots {
                if !masters.contains_key(addr) {
                    let mut info = addr.as_str().into_connection_info()?;
                    info.redis = seed.clone();
                    masters.insert(addr.clone(), connect_info(info, timeout)?);
                }
            }
            return Ok(Backend::Cluster { slots, masters });
        }
        Err(last.unwrap_or_else(|| RedisError::Script("no reachable cluster node".into())))
    }

    /// A cluster's slot map (see [`RedisGavel::slot_map`]), read with
    /// `CLUSTER SLOTS` from the first node of `urls` that answers within
    /// `timeout` (one that refuses, or accepts and stays silent, is skipped),
    /// without connecting to the masters or loading the scripts: a master
    /// that stopped answering does not keep the others' map from being read.
    pub fn cluster_slots(
        urls: &[String],
        timeout: Duration,
    ) -> Result<Vec<(u16, u16, String)>, RedisError> {
        let mut last = None;
        for url in urls {
            let read = connect_one(url, timeout).and_then(|mut c| {
                let v: Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut c)?;
                parse_slots(&v)
                    .ok_or_else(|| RedisError::Script(format!("unreadable CLUSTER SLOTS: {v:?}")))
            });
            match read {
                Ok(mut slots) => {
                    slots.sort();
                    return Ok(slots);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| RedisError::Script("no Redis URL given".into())))
    }

    /// Reconnects after a failure (the caller backs off between attempts).
    pub fn reconnect(&mut self) -> Result<(), RedisError> {
        self.backend = Self::open(&self.urls, self.cluster, self.timeout)?;
        self.load_scripts()
    }

    /// `SCRIPT LOAD` on the node, or on every master of the cluster.
    fn load_scripts(&mut self) -> Result<(), RedisError> {
        let mut shas: [String; scripts::SCRIPTS] = Default::default();
        let conns: Vec<&mut redis::Connection> = match &mut self.backend {
            Backend::Single(c) => vec![c],
            Backend::Cluster { masters, .. } => masters.values_mut().collect(),
        };
        for conn in conns {
            for (i, src) in scripts::ALL.iter().enumerate() {
                let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(*src).query(conn)?;
                shas[i] = sha;
            }
        }
        self.shas = shas;
        Ok(())
    }

    /// A cluster's slot ranges and the master serving each
    /// (`redis://host:port`, from `CLUSTER SLOTS` when connecting), sorted by
    /// first slot; `None` on a single node. A client that pipelines to the
    /// masters itself routes ops with [`scripts::slot`].
    pub fn slot_map(&self) -> Option<Vec<(u16, u16, String)>> {
        match &self.backend {
            Backend::Single(_) => None,
            Backend::Cluster { slots, .. } => {
                let mut s = slots.clone();
                s.sort();
                Some(s)
            }
        }
    }

    pub fn ping(&mut self) -> Result<(), RedisError> {
        let conns: Vec<&mut redis::Connection> = match &mut self.backend {
            Backend::Single(c) => vec![c],
            Backend::Cluster { masters, .. } => masters.values_mut().collect(),
        };
        for c in conns {
            let _: String = redis::cmd("PING").query(c)?;
        }
        Ok(())
    }

    /// Runs `ops` in one pipelined round trip; results in the same order.
    ///
    /// Replies are checked one by one: an op answered `NOSCRIPT` (Redis
    /// restarted or flushed its script cache) or `MOVED`/`ASK` (a slot moved)
    /// was not executed, so only those ops are sent again, after reloading the
    /// scripts (or re-reading the slot map), up to twice; ops that ran are
    /// never run twice, and their outcomes (replayed flag included) are the
    /// first ones. `-BUSY` is the op's outcome ([`OpResult::Busy`]); any other
    /// error reply fails the whole call.
    pub fn execute(&mut self, ops: &[Op], now_ms: u64) -> Result<Vec<OpResult>, RedisError> {
        let mut out: Vec<Option<OpResult>> = vec![None; ops.len()];
        let mut pending: Vec<usize> = (0..ops.len()).collect();
        let mut attempt = 0;
        while !pending.is_empty() {
            let values = self.round_trip(ops, &pending, now_ms)?;
            let mut retry = Vec::new();
            let mut refresh = false;
            let mut last = None;
            for (&i, v) in pending.iter().zip(values) {
                // -BUSY is a per-op outcome (decoded below), not a failure.
                if let Some(e) = refusal(&v) {
                    match RedisError::from(e) {
                        RedisError::NoScript(e) => last = Some(RedisError::NoScript(e)),
                        RedisError::Moved(e) => {
                            refresh = true;
                            last = Some(RedisError::Moved(e));
                        }
                        other => return Err(other),
                    }
                    retry.push(i);
                    continue;
                }
                out[i] = Some(scripts::decode(&ops[i], &v, now_ms).ok_or_else(|| {
                    RedisError::Script(format!("unexpected reply {v:?} to {:?}", ops[i]))
                })?);
            }
            if retry.is_empty() {
                break;
            }
            attempt += 1;
            if attempt > 2 {
                return Err(last.expect("a retried op has its error"));
            }
            if refresh {
                self.reconnect()?;
            } else {
                self.load_scripts()?;
            }
            pending = retry;
        }
        Ok(out
            .into_iter()
            .map(|r| r.expect("every op answered"))
            .collect())
    }

    /// Sends `ops[i]` for each `i` in `idx` (one pipeline per node) and
    /// returns the raw replies in `idx` order, error replies included.
    fn round_trip(
        &mut self,
        ops: &[Op],
        idx: &[usize],
        now_ms: u64,
    ) -> Result<Vec<Value>, RedisError> {
        let (shas, window_ms) = (&self.shas, self.window_ms);
        let pack = |which: &[usize]| {
            let mut buf = Vec::new();
            for &i in which {
                crate::resp::encode(&ops[i], shas, now_ms, window_ms, &mut buf);
            }
            buf
        };
        let values: Vec<Value> = match &mut self.backend {
            Backend::Single(c) => c.req_packed_commands(&pack(idx), 0, idx.len())?,
            Backend::Cluster { slots, masters } => {
                // Group by master, one pipeline each, all sent before any is
                // read (the masters work in parallel), then restore the order.
                let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
                for (pos, &i) in idx.iter().enumerate() {
                    let slot = scripts::slot(&ops[i]);
                    let addr = slots
                        .iter()
                        .find(|(a, b, _)| (*a..=*b).contains(&slot))
                        .map(|(_, _, addr)| addr.as_str())
                        .ok_or_else(|| RedisError::Script(format!("no master for slot {slot}")))?;
                    groups.entry(addr).or_default().push(pos);
                }
                for (addr, positions) in &groups {
                    let conn = masters
                        .get_mut(*addr)
                        .ok_or_else(|| RedisError::Script(format!("no connection to {addr}")))?;
                    let which: Vec<usize> = positions.iter().map(|&p| idx[p]).collect();
                    conn.send_packed_command(&pack(&which))?;
                }
                let mut out = vec![Value::Nil; idx.len()];
                for (addr, positions) in groups {
                    let conn = masters.get_mut(addr).expect("sent to it above");
                    for p in positions {
                        // An error reply (NOSCRIPT, MOVED) comes back as a
                        // value, as from req_packed_commands.
                        out[p] = conn.recv_response()?;
                    }
                }
                out
            }
        };
        if values.len() != idx.len() {
            return Err(RedisError::Script(format!(
                "{} replies for {} commands",
                values.len(),
                idx.len()
            )));
        }
        Ok(values)
    }
}
