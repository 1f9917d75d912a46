//! Throwaway PostgreSQL for tests: `initdb` into a temp dir, `postgres` on
//! a free loopback port, database `gavel`, removed on drop. PostgreSQL
//! refuses to run as root, so as root both run as the `postgres` user through
//! `runuser`.
//!
//! The server programs are looked for in `$GAVEL_PG_BIN_DIR` when set, else
//! in `/usr/lib/postgresql/15/bin` (Debian's `postgresql-15`), else in
//! `pg_config --bindir`; a test that finds none fails saying what to install.
//!
//! `GAVEL_TEST_PG_URL` makes [`Postgres::start`] use an existing server
//! instead: each `start` creates a database of its own there (`CREATE
//! DATABASE`, so the URL's role needs CREATEDB) and drops it on drop, so tests
//! never share tables. Stopping that server is refused: tests that must take
//! PostgreSQL away ask [`managed_or_skip`] first and are skipped, loudly.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// An existing server to create the tests' databases on.
pub const URL_VAR: &str = "GAVEL_TEST_PG_URL";
/// The directory holding `postgres`, `initdb`, `pg_isready` and `psql`.
pub const BIN_DIR_VAR: &str = "GAVEL_PG_BIN_DIR";
/// Where Debian's `postgresql-15` puts them.
pub const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

const INSTALL: &str = "install the PostgreSQL server with `apt-get install -y postgresql-15` \
     (scripts/test.sh does), or set GAVEL_PG_BIN_DIR to the directory holding `postgres`, \
     `initdb`, `pg_isready` and `psql`, or set GAVEL_TEST_PG_URL to an existing server";

/// The directory of PostgreSQL's server programs: `$GAVEL_PG_BIN_DIR`, else
/// [`DEFAULT_BIN_DIR`], else `pg_config --bindir`, whichever holds
/// `postgres`; otherwise what was tried and what to install.
pub fn bin_dir() -> Result<PathBuf, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(find_bin_dir).clone()
}

fn find_bin_dir() -> Result<PathBuf, String> {
    let has_server = |d: &Path| d.join("postgres").is_file();
    if let Some(dir) = std::env::var_os(BIN_DIR_VAR).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if has_server(&dir) {
            Ok(dir)
        } else {
            Err(format!(
                "{BIN_DIR_VAR}={} holds no `postgres` program: point it at the bin directory \
                 of a PostgreSQL server install (`apt-get install -y postgresql-15` puts \
                 one in {DEFAULT_BIN_DIR}) or unset it",
                dir.display()
            ))
        };
    }
    if has_server(Path::new(DEFAULT_BIN_DIR)) {
        return Ok(PathBuf::from(DEFAULT_BIN_DIR));
    }
    let pg_config = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match pg_config {
        Some(dir) if has_server(&dir) => Ok(dir),
        Some(dir) => Err(format!(
            "PostgreSQL server programs not found in {DEFAULT_BIN_DIR} nor in \
             `pg_config --bindir` ({}): {INSTALL}",
            dir.display()
        )),
        None => Err(format!(
            "PostgreSQL server programs not found in {DEFAULT_BIN_DIR} (and no pg_config \
             on PATH): {INSTALL}"
        )),
    }
}

/// `psql`: from [`bin_dir`], else the one on PATH (an external server needs
/// only the client).
fn psql_program() -> PathBuf {
    match bin_dir() {
        Ok(dir) if dir.join("psql").is_file() => dir.join("psql"),
        _ => PathBuf::from("psql"),
    }
}

/// Runs `sql` with `psql` against the database `url` names; stdout, trimmed,
/// or psql's complaint.
pub fn psql_at(url: &str, sql: &str) -> Result<String, String> {
    let psql = psql_program();
    let out = Command::new(&psql)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-qAt", "-d", url, "-c", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "cannot run {} ({e}): install the PostgreSQL client (apt-get install -y \
                 postgresql-client) or set {BIN_DIR_VAR}",
                psql.display()
            )
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "psql {sql:?} on {url} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The external server's URL, when `GAVEL_TEST_PG_URL` is set.
pub fn external_url() -> Option<String> {
    std::env::var(URL_VAR).ok().filter(|u| !u.is_empty())
}

/// For a test that must stop, restart or remove PostgreSQL itself: true
/// when the harness manages the server; with `GAVEL_TEST_PG_URL` set, false after
/// saying on stderr (past the test harness's capture) that `test` is skipped
/// and why.
pub fn managed_or_skip(test: &str) -> bool {
    if external_url().is_none() {
        return true;
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: it needs a PostgreSQL the harness starts itself (to stop, restart \
         or remove it), not the server {URL_VAR} names; unset {URL_VAR} to run it"
    );
    false
}

/// A URL split around its database name: `scheme://authority`, the
/// database, and `?params` (possibly empty).
fn split_url(url: &str) -> (&str, &str, &str) {
    let (head, query) = match url.find('?') {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    let after_scheme = head.find("://").map_or(0, |i| i + 3);
    match head[after_scheme..].find('/') {
        Some(i) => (
            &head[..after_scheme + i],
            &head[after_scheme + i + 1..],
            query,
        ),
        None => (head, "", query),
    }
}

/// The port in a URL's authority (5432 when it names none).
fn url_port(url: &str) -> u16 {
    let (authority, _, _) = split_url(url);
    let authority = authority.split_once("://").map_or(authority, |(_, a)| a);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    host_port
        .rsplit_once(':')
        .filter(|(_, p)| !p.contains(']'))
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(5432)
}

/// A database name no other test (in this process or another) uses.
fn unique_db_name() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "gavel_t_{}_{}_{:08x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        rand_u64() as u32
    )
}

pub struct Postgres {
    url: String,
    port: u16,
    database: String,
    /// None when `GAVEL_TEST_PG_URL` names an external server.
    managed: Option<Managed>,
    /// The external server's URL (its own database), to drop ours through.
    external: Option<String>,
}

struct Managed {
    bin: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
}

fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    })
}

/// A command for one of PostgreSQL's programs, as `postgres` when root.
fn pg_command(bin: &Path, program: &str) -> Command {
    let path = bin.join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
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
    /// Starts a throwaway server, or with `GAVEL_TEST_PG_URL` creates a
    /// throwaway database on that server. Panics saying what to install
    /// when PostgreSQL is missing.
    pub fn start() -> Postgres {
        if let Some(base) = external_url() {
            return Postgres::on_external(base);
        }
        let bin = bin_dir().unwrap_or_else(|e| panic!("{e}"));
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
            assert!(
                ok,
                "chown {} to postgres failed (as root, PostgreSQL runs as the `postgres` \
                 user, which the postgresql packages create)",
                dir.display()
            );
        }
        let data = dir.join("data");
        let out = pg_command(&bin, "initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .stdout(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}/initdb ({e}): {INSTALL}", bin.display()));
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut pg = Postgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/gavel"),
            port,
            database: "gavel".into(),
            managed: Some(Managed {
                bin,
                dir,
                child: None,
            }),
            external: None,
        };
        pg.launch();
        pg.psql_in("postgres", "CREATE DATABASE gavel");
        pg
    }

    /// A database of our own on the server `base` names.
    fn on_external(base: String) -> Postgres {
        let database = unique_db_name();
        if let Err(e) = psql_at(&base, &format!("CREATE DATABASE \"{database}\"")) {
            panic!(
                "{URL_VAR}={base}: cannot create a database for this test ({e}); the server \
                 must be running and the URL's role needs CREATEDB (or unset {URL_VAR} to \
                 have the tests start their own PostgreSQL)"
            );
        }
        let (authority, _, query) = split_url(&base);
        Postgres {
            url: format!("{authority}/{database}{query}"),
            port: url_port(&base),
            database,
            managed: None,
            external: Some(base),
        }
    }

    /// This test's database (on a harness-managed server, `gavel`).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The name of this test's database.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The temp dir holding data, socket and log (None for an external server).
    pub fn dir(&self) -> Option<&Path> {
        self.managed.as_ref().map(|m| m.dir.as_path())
    }

    fn managed(&mut self, what: &str) -> &mut Managed {
        self.managed
            .as_mut()
            .unwrap_or_else(|| panic!("{what} needs a harness-managed PostgreSQL; unset {URL_VAR}"))
    }

    fn launch(&mut self) {
        let port = self.port;
        let m = self.managed("start");
        let data = m.dir.join("data");
        let log = std::fs::File::create(m.dir.join("postgres.log")).expect("log file");
        let child = pg_command(&m.bin, "postgres")
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
        let port = self.port.to_string();
        let m = self.managed("wait for");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(m.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port, "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            if let Some(Ok(Some(status))) = m.child.as_mut().map(|c| c.try_wait()) {
                let log = std::fs::read_to_string(m.dir.join("postgres.log")).unwrap_or_default();
                panic!("postgres exited with {status} before it was ready:\n{log}");
            }
            assert!(Instant::now() < deadline, "PostgreSQL not ready after 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs SQL with `psql` in this test's database; its output, trimmed.
    pub fn psql(&self, sql: &str) -> String {
        psql_at(&self.url, sql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs SQL with `psql` in another database of the same server.
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        let (authority, _, query) = split_url(&self.url);
        psql_at(&format!("{authority}/{db}{query}"), sql).unwrap_or_else(|e| panic!("{e}"))
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
        if let Some(base) = self.external.take() {
            // FORCE (PostgreSQL 13+) ends sessions a test left behind.
            let db = &self.database;
            let dropped = psql_at(
                &base,
                &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
            )
            .or_else(|_| psql_at(&base, &format!("DROP DATABASE IF EXISTS \"{db}\"")));
            if let Err(e) = dropped {
                let _ = writeln!(
                    std::io::stderr(),
                    "warning: test database {db} left behind: {e}"
                );
            }
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
