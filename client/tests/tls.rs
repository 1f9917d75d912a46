//! TLS (feature `tls`, on for this crate's tests): the client speaks TLS to
//! a server started with a certificate, checks the name and the CA, and
//! reconnects over TLS like over TCP.

#![cfg(feature = "tls")]

mod common;

use std::time::Duration;

use common::{temp_dir, Server};
use gavel_client::{Backoff, Client, Config, Error};
use gavel_protocol::{BidRequest, OpenAuctionRequest};

/// A throwaway CA and a certificate for localhost / 127.0.0.1 in `dir`;
/// returns the CA's PEM.
fn make_pki(dir: &std::path::Path) -> String {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "gavel test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let mut leaf =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    ca_cert.pem()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_token_pipelines_and_reconnects() {
    let dir = temp_dir("tls");
    let ca = make_pki(&dir);
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let store = format!("sqlite:{}/g.db", dir.display());
    let mut server = Server::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--auth-token",
        "tok",
        "--store",
        &store,
    ]);
    let cfg = Config::new(server.addr.to_string())
        .auth_token("tok")
        .reconnect_backoff(Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            multiplier: 2.0,
        })
        .tls("localhost", ca.as_bytes())
        .unwrap();
    let c = Client::connect(cfg.clone()).await.unwrap();
    c.open_auction(OpenAuctionRequest {
        auction_id: 1,
        reserve: 0,
        min_increment: 1,
        ends_at_ms: 0,
    })
    .await
    .unwrap();
    // Many tasks at once: frames larger than one TLS record each way.
    let mut set = tokio::task::JoinSet::new();
    for t in 0..20u64 {
        let c = c.clone();
        set.spawn(async move {
            for i in 0..50u64 {
                let amount = 1 + i * 20 + t;
                c.bid(BidRequest {
                    auction_id: 1,
                    bidder_id: t + 1,
                    amount,
                    bid_id: amount,
                })
                .await
                .unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    assert_eq!(c.get_auction(1).await.unwrap().unwrap().high_bid, 1000);

    // Back over TLS after a restart.
    tokio::task::block_in_place(|| server.restart_kill9());
    assert_eq!(c.get_auction(1).await.unwrap().unwrap().high_bid, 1000);
    assert!(c.reconnects() >= 1);

    // A wrong name, a wrong CA, a missing token: refused.
    let e = Client::connect(cfg.clone().tls("example.com", ca.as_bytes()).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Tls(_)), "{e}");
    let other = temp_dir("tls-other");
    let other_ca = make_pki(&other);
    let e = Client::connect(cfg.clone().tls("localhost", other_ca.as_bytes()).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Tls(_)), "{e}");
    let e = Client::connect(cfg.auth_token("")).await.unwrap_err();
    assert_eq!(
        e.server_code(),
        Some(gavel_protocol::ErrorCode::Unauthorized),
        "{e}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}
