//! Throwaway PostgreSQL 15 for tests: `initdb` into a temp dir, `postgres` on
//! a free loopback port, database `gavel`, removed on drop. PostgreSQL
//! refuses to run as root, so as root both run as the `postgres` user through
//! `runuser`. `GAVEL_TEST_PG_URL` makes [`Postgres::start`] use an existing
//! server instead (outage tests, which stop and restart it, then panic).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct Postgres {
    url: String,
    port: u16,
    /// None when `GAVEL_TEST_PG_URL` names an external server.
    managed: Option<Managed>,
}

struct Managed {
    dir: PathBuf,
    child: Option<Child>,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command for one of PostgreSQL's programs, as `postgres` when root.
fn pg_command(program: &str) -> Command {
    let path = format!("{BIN}/{program}");
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

impl Postgres {
    /// Starts a throwaway server (or attaches to `GAVEL_TEST_PG_URL`).
    /// Panics with what to install when PostgreSQL is missing.
    pub fn start() -> Postgres {
        if let Ok(url) = std::env::var("GAVEL_TEST_PG_URL") {
            let port = url
                .rsplit_once(':')
                .and_then(|(_, rest)| rest.split('/').next()?.parse().ok())
                .unwrap_or(5432);
            return Postgres {
                url,
                port,
                managed: None,
            };
        }
        if !Path::new(BIN).join("postgres").exists() {
            panic!(
                "PostgreSQL 15 server binaries not found in {BIN}: install them with \
                 `apt-get install -y postgresql-15`"
            );
        }
        let dir =
            std::env::temp_dir().join(format!("gavel-pg-{}-{}", std::process::id(), rand_u64()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "chown {} to postgres failed", dir.display());
        }
        let data = dir.join("data");
        let out = pg_command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .stdout(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut pg = Postgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/gavel"),
            port,
            managed: Some(Managed { dir, child: None }),
        };
        pg.launch();
        pg.psql("postgres", "CREATE DATABASE gavel");
        pg
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp dir holding data, socket and log (None for an external server).
    pub fn dir(&self) -> Option<&Path> {
        self.managed.as_ref().map(|m| m.dir.as_path())
    }

    fn managed(&mut self, what: &str) -> &mut Managed {
        self.managed.as_mut().unwrap_or_else(|| {
            panic!("{what} needs a harness-managed PostgreSQL; unset GAVEL_TEST_PG_URL")
        })
    }

    fn launch(&mut self) {
        let port = self.port;
        let m = self.managed("start");
        let data = m.dir.join("data");
        let log = std::fs::File::create(m.dir.join("postgres.log")).expect("log file");
        let child = pg_command("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&m.dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=50",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn postgres");
        m.child = Some(child);
        self.wait_ready();
    }

    /// Polls `pg_isready` until the server accepts connections (bounded).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(format!("{BIN}/pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            if let Some(m) = self.managed.as_mut() {
                if let Some(Ok(Some(status))) = m.child.as_mut().map(|c| c.try_wait()) {
                    let log =
                        std::fs::read_to_string(m.dir.join("postgres.log")).unwrap_or_default();
                    panic!("postgres exited with {status} before it was ready:\n{log}");
                }
            }
            assert!(Instant::now() < deadline, "PostgreSQL not ready after 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs one SQL statement with `psql` against database `db`.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(format!("{BIN}/psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-qAtc",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops the server (fast shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        let m = self.managed("stop");
        if let Err(e) = m.shutdown() {
            panic!("{e}");
        }
    }

    /// Starts the same server again, same port and data.
    pub fn start_again(&mut self) {
        self.launch();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut m) = self.managed.take() {
            let _ = m.shutdown();
            let _ = std::fs::remove_dir_all(&m.dir);
        }
    }
}

impl Managed {
    /// SIGINT (fast shutdown) to the postmaster, wait up to 30 s for it to
    /// exit, then SIGKILL. Never panics (it runs in `Drop`).
    fn shutdown(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid_file = self.dir.join("data").join("postmaster.pid");
        let postmaster = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.lines().next().map(|l| l.trim().to_string()));
        // `child` is runuser when root (it forwards the signal) or postgres.
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        if let Some(pid) = &postmaster {
            let _ = Command::new("kill").args(["-INT", pid]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            if exited && !pid_file.exists() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                if let Some(pid) = &postmaster {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
                let _ = child.kill();
                let _ = child.wait();
                return Err("postgres did not stop within 30 s of SIGINT; killed it".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}
