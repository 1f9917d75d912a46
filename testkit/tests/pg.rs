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
