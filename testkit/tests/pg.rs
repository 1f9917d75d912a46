//! The PostgreSQL harness itself: starts, serves, stops, restarts with its
//! data, and cleans up; with `GAVEL_TEST_PG_URL`, a database of its own per
//! test on the external server; without PostgreSQL, a failure that says what
//! to install.
//!
//! What depends on environment variables read at `start()` runs in a child
//! process of this test binary (setting them here would race the other
//! tests): the parent runs `current_exe --exact CHILD` with the variables and
//! `GAVEL_PG_CHILD=1`; without that marker the child tests do nothing.

use std::process::Command;

use gavel_testkit::pg::{managed_or_skip, psql_at, Postgres};

#[test]
fn start_query_stop_restart_keeps_data() {
    if !managed_or_skip("start_query_stop_restart_keeps_data") {
        return;
    }
    let mut pg = Postgres::start();
    assert_eq!(pg.psql("SELECT 1"), "1");
    assert_eq!(pg.psql("SELECT current_database()"), "gavel");
    pg.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (42)");
    pg.stop();
    pg.start_again();
    assert_eq!(pg.psql("SELECT x FROM t"), "42");
}

#[test]
fn two_instances_are_apart() {
    let a = Postgres::start();
    let b = Postgres::start();
    assert_ne!(a.url(), b.url());
    a.psql("CREATE TABLE only_in_a (x int)");
    assert_eq!(
        b.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'"),
        "0"
    );
    if a.dir().is_some() {
        assert_ne!(a.port(), b.port(), "two servers");
        assert!(a.url().ends_with("/gavel"));
    }
}

#[test]
fn drop_removes_the_dir() {
    if !managed_or_skip("drop_removes_the_dir") {
        return;
    }
    let pg = Postgres::start();
    let dir = pg.dir().expect("harness-managed").to_path_buf();
    assert!(dir.join("data").exists());
    drop(pg);
    assert!(!dir.exists(), "{} still exists", dir.display());
}

/// Runs `test` in a child process with `envs` set; its stdout.
fn run_child(test: &str, envs: &[(&str, &str)]) -> (std::process::ExitStatus, u32, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env("GAVEL_PG_CHILD", "1")
        .env_remove("GAVEL_TEST_PG_URL")
        .env_remove("GAVEL_PG_BIN_DIR");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run child");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(test), "the child did not run {test}:\n{text}");
    (out.status, pid, text)
}

fn in_child() -> bool {
    std::env::var_os("GAVEL_PG_CHILD").is_some()
}

/// With `GAVEL_TEST_PG_URL` (pointed here at a server this test starts, or
/// at the external one the suite already uses), every `start` gets a fresh
/// database of its own, stopping is refused, and drop removes the database.
#[test]
fn external_url_gives_each_test_its_own_database() {
    let managed;
    let base = match gavel_testkit::pg::external_url() {
        Some(url) => url,
        None => {
            managed = Postgres::start();
            managed.url()
        }
    };
    let (status, pid, text) = run_child("external_child", &[("GAVEL_TEST_PG_URL", &base)]);
    assert!(status.success(), "child failed:\n{text}");
    assert!(text.contains("1 passed"), "{text}");
    // The child's databases (named after its pid) are gone.
    let left = psql_at(
        &base,
        &format!("SELECT count(*) FROM pg_database WHERE datname LIKE 'gavel\\_t\\_{pid}\\_%'"),
    )
    .unwrap();
    assert_eq!(left, "0", "databases left behind by the child");
}

#[test]
fn external_child() {
    if !in_child() {
        return;
    }
    let base = gavel_testkit::pg::external_url().unwrap();
    let mut a = Postgres::start();
    let b = Postgres::start();
    assert!(a.dir().is_none());
    assert_ne!(a.database(), b.database());
    assert_eq!(a.psql("SELECT current_database()"), a.database());
    assert_eq!(b.psql("SELECT current_database()"), b.database());
    assert!(
        a.url().ends_with(&format!("/{}", a.database())),
        "{}",
        a.url()
    );
    assert_eq!(a.port(), b.port());
    a.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
    b.psql("CREATE TABLE t (x int)");
    assert_eq!(b.psql("SELECT count(*) FROM t"), "0", "tables are apart");
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.stop()))
        .expect_err("stop on an external server must panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("harness-managed"), "{msg}");
    let exists = |db: &str| {
        psql_at(
            &base,
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
        )
        .unwrap()
    };
    let name = a.database().to_string();
    assert_eq!(exists(&name), "1");
    drop(a);
    assert_eq!(exists(&name), "0", "drop removes the database");
    assert!(!gavel_testkit::pg::managed_or_skip("the outage test"));
}

/// An external server that cannot be reached: the failure names the
/// variable and what it needs.
#[test]
fn unreachable_external_url_fails_saying_so() {
    let (status, _, text) = run_child(
        "unreachable_child",
        &[("GAVEL_TEST_PG_URL", "postgres://postgres@127.0.0.1:1/gavel")],
    );
    assert!(!status.success(), "start must fail:\n{text}");
    assert!(
        text.contains("GAVEL_TEST_PG_URL=postgres://postgres@127.0.0.1:1/gavel")
            && text.contains("CREATEDB"),
        "{text}"
    );
}

#[test]
fn unreachable_child() {
    if in_child() {
        Postgres::start();
    }
}

/// No server programs where `GAVEL_PG_BIN_DIR` points: the failure says
/// what to install or set.
#[test]
fn missing_server_programs_fail_saying_what_to_install() {
    let (status, _, text) = run_child(
        "missing_bin_child",
        &[("GAVEL_PG_BIN_DIR", "/nonexistent/gavel-pg-bin")],
    );
    assert!(!status.success(), "start must fail:\n{text}");
    assert!(
        text.contains("GAVEL_PG_BIN_DIR=/nonexistent/gavel-pg-bin holds no `postgres`"),
        "{text}"
    );
}

#[test]
fn missing_bin_child() {
    if in_child() {
        Postgres::start();
    }
}
