//! A blocking read interrupted by a signal (EINTR) is retried, not reported
//! as a failed connection. (Seen in CI: a test's client got
//! `Io(Interrupted)` while PostgreSQL child processes were being stopped.)

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use bytes::BytesMut;
use gavel_protocol::message::encode_pong;
use gavel_protocol::Client;

extern "C" fn ignore(_: libc::c_int) {}

#[test]
fn a_read_interrupted_by_a_signal_is_retried() {
    // A handler installed without SA_RESTART: a blocked read(2) in the
    // thread that receives the signal returns EINTR.
    // SAFETY: a zeroed sigaction with a handler that does nothing, for
    // SIGUSR1, which nothing else in this test binary uses.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ignore as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || {
        // SAFETY: pthread_self has no preconditions.
        tid_tx.send(unsafe { libc::pthread_self() }).unwrap();
        let mut c = Client::connect(addr).unwrap();
        c.ping(b"hi")
    });
    let tid = tid_rx.recv().unwrap();
    let (mut server, _) = listener.accept().unwrap();
    // The PING arrived, so the client is blocked (or about to be) reading
    // its answer: interrupt that read many times over 100 ms.
    let mut req = [0u8; 64];
    let n = server.read(&mut req).unwrap();
    assert!(n >= 8, "a PING frame");
    let request_id = u32::from_be_bytes(req[4..8].try_into().unwrap());
    for _ in 0..50 {
        // SAFETY: `tid` is the client thread, alive until it gets its answer.
        assert_eq!(unsafe { libc::pthread_kill(tid, libc::SIGUSR1) }, 0);
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut out = BytesMut::new();
    encode_pong(&mut out, request_id, b"hi");
    server.write_all(&out).unwrap();
    let pong = client
        .join()
        .unwrap()
        .expect("answered despite the signals");
    assert_eq!(&pong[..], b"hi");
}
