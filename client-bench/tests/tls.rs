//! `client-bench` and `gavel-cli` over TLS, against a server with a
//! certificate from a throwaway CA made here with rcgen.

mod common;

use std::path::PathBuf;

use common::{bench_bin, cli_bin, run, stderr, stdout, temp_path, Server};
use serde_json::Value;

/// CA and server certificate (localhost, 127.0.0.1) as PEM files: (ca, cert, key).
fn make_pki(tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "bench test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let paths = (
        temp_path(&format!("{tag}-ca.pem")),
        temp_path(&format!("{tag}-cert.pem")),
        temp_path(&format!("{tag}-key.pem")),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[test]
fn bench_and_cli_speak_tls() {
    let (ca, cert, key) = make_pki("tls");
    let server = Server::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--auth-token",
        "t0k",
    ]);
    let addr = server.addr();
    let ca_s = ca.to_str().unwrap();

    let json = temp_path("tls-bench.json");
    let out = run(
        bench_bin(),
        &[
            "--addr",
            &addr,
            "--tls-ca",
            ca_s,
            "--tls-server-name",
            "localhost",
            "--auth-token",
            "t0k",
            "--connections",
            "8",
            "--bids-per-conn",
            "300",
            "--pipeline",
            "8",
            "--verify",
            "--no-progress",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let j: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j["attempted"].as_u64(), Some(2400), "{j}");
    assert_eq!(j["succeeded"].as_u64(), Some(2400), "{j}");
    assert_eq!(j["lost"].as_u64(), Some(0), "{j}");

    // gavel-cli: the name defaults to the host of --addr (127.0.0.1 here).
    let out = run(
        cli_bin(),
        &[
            "--addr",
            &addr,
            "--tls-ca",
            ca_s,
            "--auth-token",
            "t0k",
            "ping",
            "--payload",
            "hi",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("PONG"), "{}", stdout(&out));
    // A name the certificate does not carry fails the handshake.
    let out = run(
        cli_bin(),
        &[
            "--addr",
            &addr,
            "--tls-ca",
            ca_s,
            "--tls-server-name",
            "example.com",
            "ping",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("TLS handshake"), "{}", stderr(&out));
    // --tls without a CA is a usage problem.
    let out = run(cli_bin(), &["--addr", &addr, "--tls", "ping"]);
    assert_eq!(out.status.code(), Some(1));
    for p in [ca, cert, key, json] {
        let _ = std::fs::remove_file(p);
    }
}
