//! Throwaway Redis for tests: one `redis-server` on a free loopback port in a
//! temp dir, or a 3-master Redis Cluster joined with `redis-cli --cluster
//! create`. Readiness is polled (PING / `cluster_state:ok`) with a deadline;
//! everything is killed and removed on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL: &str =
    "install redis-server and redis-tools (apt-get install -y redis-server redis-tools)";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

fn temp_dir(tag: &str) -> PathBuf {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let d = std::env::temp_dir().join(format!(
        "gavel-{tag}-{}-{:x}",
        std::process::id(),
        h.finish()
    ));
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// Sends one inline command and returns the raw reply (enough for PING and INFO).
pub fn raw_command(port: u16, cmd: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// `AUTH password` then one inline command; returns the reply to the command.
pub fn raw_command_auth(port: u16, password: &str, cmd: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("AUTH {password}\r\n").as_bytes())
        .ok()?;
    let mut ok = [0u8; 5];
    s.read_exact(&mut ok).ok()?;
    if &ok != b"+OK\r\n" {
        return None;
    }
    s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

struct Instance {
    port: u16,
    /// A cluster node's bus port (otherwise port + 10000, which nobody
    /// checked was free, or even below 65536).
    bus_port: Option<u16>,
    dir: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl Instance {
    fn new(dir: PathBuf, extra: &[&str], cluster: bool) -> Instance {
        Instance {
            port: free_port(),
            bus_port: cluster.then(free_port),
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The first start: a port found free may be taken before redis-server
    /// binds it (tests run in parallel), so an early exit retries on fresh
    /// ports.
    fn launch_first(&mut self) {
        for _ in 0..4 {
            match self.try_launch() {
                Ok(()) => return,
                Err(_) => {
                    self.port = free_port();
                    self.bus_port = self.bus_port.map(|_| free_port());
                }
            }
        }
        if let Err(e) = self.try_launch() {
            panic!("{e}");
        }
    }

    /// A restart keeps the port (clients reconnect to it).
    fn launch(&mut self) {
        if let Err(e) = self.try_launch() {
            panic!("{e}");
        }
    }

    fn try_launch(&mut self) -> Result<(), String> {
        let mut cmd = Command::new("redis-server");
        if let Some(bus) = self.bus_port {
            cmd.args(["--cluster-port", &bus.to_string()]);
        }
        let child = cmd
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server ({e}): {INSTALL}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // With --requirepass, an answering server says NOAUTH.
            if raw_command(self.port, "PING")
                .is_some_and(|r| r.starts_with("+PONG") || r.starts_with("-NOAUTH"))
            {
                return Ok(());
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!(
                    "redis-server exited with {st} on port {}",
                    self.port
                ));
            }
            if Instant::now() >= deadline {
                // Not owned by a RedisServer yet: Drop would not reap it.
                self.kill();
                panic!("redis-server not ready after 20 s on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGSTOP or SIGCONT (`sig`) and waits, bounded, until
    /// `/proc/PID/stat` says the process is `stopped` (state `T`) or not.
    fn signal(&mut self, sig: &str, stopped: bool) {
        let pid = self.child.as_ref().expect("redis-server running").id();
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} {pid}: {st}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // "PID (comm) STATE ...": the state follows the last ')'.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim().chars().next());
            if state.is_none() || (state == Some('T')) == stopped {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server {pid} not {} after kill -{sig}",
                if stopped { "stopped" } else { "running" }
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One throwaway `redis-server`.
pub struct RedisServer {
    inst: Instance,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// With extra `redis-server` arguments, e.g. `["--appendonly", "yes",
    /// "--appendfsync", "always"]` for a server whose writes survive `stop`.
    pub fn start_with(args: &[&str]) -> RedisServer {
        let mut inst = Instance::new(temp_dir("redis"), args, false);
        inst.launch_first();
        RedisServer { inst }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.inst.port)
    }

    pub fn port(&self) -> u16 {
        self.inst.port
    }

    /// Kills the server (SIGKILL, an outage); without AOF its data is gone.
    pub fn stop(&mut self) {
        self.inst.kill();
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.inst.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.inst.kill();
        let _ = std::fs::remove_dir_all(&self.inst.dir);
    }
}

/// A 3-master Redis Cluster (no replicas).
pub struct RedisCluster {
    nodes: Vec<Instance>,
    password: Option<String>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        RedisCluster::start_inner(None)
    }

    /// A cluster whose nodes require `password` (`--requirepass`, and
    /// `--masterauth` between nodes); `urls()` then carry it.
    pub fn start_with_password(password: &str) -> RedisCluster {
        RedisCluster::start_inner(Some(password))
    }

    fn start_inner(password: Option<&str>) -> RedisCluster {
        let mut nodes = Vec::new();
        for i in 0..3 {
            let dir = temp_dir(&format!("redis-cluster-{i}"));
            let mut args = vec![
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
                // A master that stops answering must not take the others'
                // slots down with it (CLUSTERDOWN after the node timeout):
                // clients that route by slot keep the rest served.
                "--cluster-require-full-coverage",
                "no",
            ];
            if let Some(pw) = password {
                args.extend(["--requirepass", pw, "--masterauth", pw]);
            }
            let mut inst = Instance::new(dir, &args, true);
            inst.launch_first();
            nodes.push(inst);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut cli = Command::new("redis-cli");
        if let Some(pw) = password {
            cli.args(["-a", pw, "--no-auth-warning"]);
        }
        let out = cli
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): {INSTALL}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in &nodes {
            loop {
                let info = match password {
                    None => raw_command(n.port, "CLUSTER INFO"),
                    Some(pw) => raw_command_auth(n.port, pw, "CLUSTER INFO"),
                };
                if info.is_some_and(|r| r.contains("cluster_state:ok")) {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster not ok after 30 s");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster {
            nodes,
            password: password.map(str::to_string),
        }
    }

    /// The masters' ports, in the order of [`RedisCluster::urls`].
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Stops master `i` (SIGSTOP), as a hung or overloaded host: its socket
    /// still accepts connections, nothing is answered. Returns once the
    /// kernel reports the process stopped.
    pub fn pause(&mut self, i: usize) {
        self.nodes[i].signal("STOP", true);
    }

    /// Lets master `i` run again (SIGCONT); returns once it runs.
    pub fn resume(&mut self, i: usize) {
        self.nodes[i].signal("CONT", false);
    }

    pub fn urls(&self) -> Vec<String> {
        let auth = match &self.password {
            Some(pw) => format!(":{pw}@"),
            None => String::new(),
        };
        self.nodes
            .iter()
            .map(|n| format!("redis://{auth}127.0.0.1:{}", n.port))
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
            let _ = std::fs::remove_dir_all(&n.dir);
        }
    }
}
