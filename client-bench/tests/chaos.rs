//! A short run of the fault harness (`client-bench chaos`, what
//! `scripts/chaos.sh` runs): three nemesis cycles against gavel-server on
//! SQLite must end with `violations=0`; the same run with a fabricated
//! acknowledged bid must report it and exit 1.
//!
//! gavel-server is this workspace's sibling binary, in the same target
//! directory as this test; it is built first (`cargo build -p gavel-server`,
//! same profile) so the run uses the current server.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `target/<profile>/gavel-server`, built (or brought up to date) once.
fn server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("test binary lives in target/<profile>/deps")
            .to_path_buf();
        let bin = dir.join(format!("gavel-server{}", std::env::consts::EXE_SUFFIX));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "gavel-server"]);
        match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some("release") => {
                build.arg("--release");
            }
            Some(profile) => {
                build.args(["--profile", profile]);
            }
            None => {}
        }
        // The target directory this test was built into (CARGO_TARGET_DIR
        // or the workspace's `target/`).
        if let Some(target) = dir.parent() {
            build.env("CARGO_TARGET_DIR", target);
        }
        let status = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => {
                assert!(
                    bin.exists(),
                    "`cargo build -p gavel-server` failed ({other:?}) and {} does not exist",
                    bin.display()
                );
                eprintln!(
                    "warning: `cargo build -p gavel-server` failed ({other:?}); using the existing {}",
                    bin.display()
                );
            }
        }
        bin
    })
    .clone()
}

fn chaos(extra: &[&str]) -> Output {
    let bin = server_bin();
    let mut args = vec![
        "chaos".to_string(),
        "--server-bin".into(),
        bin.display().to_string(),
        "--store".into(),
        "sqlite".into(),
        "--clients".into(),
        "8".into(),
        "--time-limit".into(),
        "40".into(),
        "--drain-timeout".into(),
        "20".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_client-bench"))
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("run client-bench chaos");
    eprintln!(
        "$ client-bench {}\n--- exit {:?} after {:.1} s\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        out.status.code(),
        t0.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The fields of the last stdout line, `cycles=N faults=N acked=N
/// in_doubt=N violations=N`, which must be exactly that.
fn summary(out: &Output) -> Vec<(String, u64)> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("a summary line");
    let fields: Vec<(String, u64)> = last
        .split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (k.to_string(), v.parse().expect("a number"))
        })
        .collect();
    let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["cycles", "faults", "acked", "in_doubt", "violations"],
        "{last}"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("cycles=")).count(),
        1,
        "exactly one summary line"
    );
    fields
}

fn field(fields: &[(String, u64)], name: &str) -> u64 {
    fields.iter().find(|(k, _)| k == name).expect(name).1
}

#[test]
fn three_cycles_on_sqlite_find_no_violation() {
    let t0 = Instant::now();
    let out = chaos(&["--cycles", "3", "--seed", "16"]);
    let s = summary(&out);
    assert_eq!(field(&s, "violations"), 0, "violations reported");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(field(&s, "cycles"), 3);
    assert!(field(&s, "faults") >= 3);
    assert!(field(&s, "acked") > 100, "the load made progress");
    assert!(
        t0.elapsed() < Duration::from_secs(90),
        "a short run stays short"
    );
}

#[test]
fn a_fabricated_acknowledgement_is_reported() {
    let work = std::env::temp_dir().join(format!("gavel-chaos-test-{}", std::process::id()));
    let out = chaos(&[
        "--cycles",
        "1",
        "--seed",
        "17",
        "--inject-violation",
        "--work-dir",
        work.to_str().expect("utf-8 temp dir"),
    ]);
    let _ = std::fs::remove_dir_all(&work);
    let s = summary(&out);
    assert!(field(&s, "violations") >= 1);
    assert_eq!(out.status.code(), Some(1), "a violation exits 1");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("acknowledged bid lost"),
        "the violation is described"
    );
}
