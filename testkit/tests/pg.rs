//! The PostgreSQL harness itself: starts, serves, stops, restarts with its
//! data, and cleans up.

use gavel_testkit::pg::Postgres;

#[test]
fn start_query_stop_restart_keeps_data() {
    let mut pg = Postgres::start();
    assert_eq!(pg.psql("gavel", "SELECT 1"), "1");
    pg.psql("gavel", "CREATE TABLE t (x int); INSERT INTO t VALUES (42)");
    pg.stop();
    pg.start_again();
    assert_eq!(pg.psql("gavel", "SELECT x FROM t"), "42");
}

#[test]
fn two_instances_get_different_ports() {
    let a = Postgres::start();
    let b = Postgres::start();
    assert_ne!(a.port(), b.port());
    assert!(a.url().ends_with("/gavel"));
}

#[test]
fn drop_removes_the_dir() {
    let pg = Postgres::start();
    let dir = pg.dir().expect("harness-managed").to_path_buf();
    assert!(dir.join("data").exists());
    drop(pg);
    assert!(!dir.exists(), "{} still exists", dir.display());
}

/// `GAVEL_TEST_PG_URL` is read at `start()`, so it is checked in a child
/// process of this test binary (setting it here would race the other tests).
#[test]
fn external_url_is_used_as_is_and_stop_refuses() {
    if std::env::var_os("GAVEL_TEST_PG_URL").is_some() {
        return; // the whole suite already runs against an external server
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "external_url_child", "--nocapture"])
        .env("GAVEL_TEST_PG_URL", "postgres://postgres@127.0.0.1:1/gavel")
        .env("GAVEL_PG_EXTERNAL_CHILD", "1")
        .output()
        .expect("run child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("1 passed"), "child test did not run:\n{text}");
}

#[test]
fn external_url_child() {
    if std::env::var_os("GAVEL_PG_EXTERNAL_CHILD").is_none() {
        return;
    }
    let mut pg = Postgres::start();
    assert_eq!(pg.url(), "postgres://postgres@127.0.0.1:1/gavel");
    assert_eq!(pg.port(), 1);
    assert!(pg.dir().is_none());
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pg.stop()))
        .expect_err("stop on an external server must panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("harness-managed"), "{msg}");
}
