//! Every decode error: the code the server must answer, whether framing
//! survived, and that the decoder resumes at the next frame.

use bytes::BytesMut;
use gavel_protocol::{BidRequest, DecodeError, Decoder, ErrorCode, Request};

fn bid_frame(id: u32) -> BytesMut {
    let mut b = BytesMut::new();
    Request::Bid(BidRequest {
        auction_id: 1,
        bidder_id: 2,
        amount: 3,
        bid_id: 4,
    })
    .encode(id, 0, &mut b);
    b
}

fn raw(t: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![t, 0];
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Decodes `bad` followed by a valid BID: the error, then the BID.
fn error_then_recovers(bad: Vec<u8>) -> DecodeError {
    let d = Decoder::new(1024);
    let mut buf = BytesMut::from(&bad[..]);
    buf.extend_from_slice(&bid_frame(77));
    let err = d.decode_request(&mut buf).unwrap_err();
    assert!(!err.is_fatal());
    let next = d.decode_request(&mut buf).unwrap().unwrap();
    assert_eq!(next.request_id, 77);
    assert!(buf.is_empty());
    err
}

#[test]
fn wrong_length_is_malformed_and_keeps_framing() {
    for (t, len) in [
        (0x10u8, 31usize),
        (0x11, 33),
        (0x12, 7),
        (0x13, 9),
        (0x20, 32),
        (0x21, 32),
        (0x22, 0),
        (0x30, 16),
        (0x31, 1),
    ] {
        let err = error_then_recovers(raw(t, 5, &vec![1u8; len]));
        assert_eq!(err.error_code(), ErrorCode::Malformed, "type {t:#x}");
        assert_eq!(err.request_id(), 5);
    }
}

#[test]
fn zero_idempotency_keys_are_malformed() {
    let mut bid = vec![0u8; 32];
    bid[7] = 1;
    let err = error_then_recovers(raw(0x11, 1, &bid));
    assert_eq!(err.error_code(), ErrorCode::Malformed);
    let buy = vec![0u8; 28];
    let err = error_then_recovers(raw(0x21, 1, &buy));
    assert_eq!(err.error_code(), ErrorCode::Malformed);
}

#[test]
fn hello_with_inconsistent_token_len_is_malformed() {
    let err = error_then_recovers(raw(0x01, 3, &[0, 1, 5, b'a']));
    assert_eq!(err.error_code(), ErrorCode::Malformed);
    let err = error_then_recovers(raw(0x01, 3, &[0, 1]));
    assert_eq!(err.error_code(), ErrorCode::Malformed);
}

#[test]
fn unknown_type_keeps_framing() {
    for t in [0x00u8, 0x03, 0x14, 0x7f, 0x90, 0xff] {
        let err = error_then_recovers(raw(t, 9, b"xyz"));
        assert_eq!(
            err,
            DecodeError::UnknownType {
                request_id: 9,
                msg_type: t
            }
        );
        assert_eq!(err.error_code(), ErrorCode::UnknownType);
    }
}

#[test]
fn oversized_header_is_fatal_and_consumes_nothing() {
    let d = Decoder::new(1024);
    let mut buf = BytesMut::from(&[0x02u8, 0, 0x04, 0x01, 0, 0, 0, 8][..]);
    let err = d.decode_request(&mut buf).unwrap_err();
    assert_eq!(
        err,
        DecodeError::TooLarge {
            request_id: 8,
            length: 1025,
            max: 1024
        }
    );
    assert_eq!(err.error_code(), ErrorCode::FrameTooLarge);
    assert!(err.is_fatal());
    assert_eq!(buf.len(), 8);
}

#[test]
fn max_payload_is_inclusive() {
    let d = Decoder::new(1024);
    let mut buf = BytesMut::from(&raw(0x02, 1, &[7u8; 1024])[..]);
    let f = d.decode_request(&mut buf).unwrap().unwrap();
    assert_eq!(f.body, Request::Ping(bytes::Bytes::from(vec![7u8; 1024])));
}

#[test]
fn partial_frames_are_none() {
    let d = Decoder::default();
    let full = bid_frame(1);
    for cut in 0..full.len() {
        let mut buf = BytesMut::from(&full[..cut]);
        assert_eq!(d.decode_request(&mut buf).unwrap(), None, "cut at {cut}");
        assert_eq!(buf.len(), cut, "nothing consumed on a partial frame");
    }
}

#[test]
fn server_side_errors_are_detected_by_the_client_decoder() {
    let d = Decoder::new(65535);
    // RESULT with an unknown status.
    let mut p = vec![0u8; 17];
    p[0] = 42;
    let mut buf = BytesMut::from(&raw(0x90, 1, &p)[..]);
    assert_eq!(
        d.decode_server(&mut buf).unwrap_err().error_code(),
        ErrorCode::Malformed
    );
    // ERROR with invalid UTF-8 and with a mismatched msg_len.
    let mut buf = BytesMut::from(&raw(0xbf, 1, &[0, 1, 0, 1, 0xff])[..]);
    assert!(d.decode_server(&mut buf).is_err());
    let mut buf = BytesMut::from(&raw(0xbf, 1, &[0, 1, 0, 5, b'a'])[..]);
    assert!(d.decode_server(&mut buf).is_err());
    // ERROR 11 (IN_DOUBT) is known; 12 is not (yet) and is MALFORMED.
    let mut buf = BytesMut::from(&raw(0xbf, 1, &[0, 11, 0, 0])[..]);
    assert!(d.decode_server(&mut buf).is_ok());
    let mut buf = BytesMut::from(&raw(0xbf, 1, &[0, 12, 0, 0])[..]);
    assert_eq!(
        d.decode_server(&mut buf).unwrap_err().error_code(),
        ErrorCode::Malformed
    );
    // AUCTION with an unknown state.
    let mut p = vec![0u8; 57];
    p[8] = 3;
    let mut buf = BytesMut::from(&raw(0x93, 1, &p)[..]);
    assert!(d.decode_server(&mut buf).is_err());
    // A request type is unknown to the client decoder.
    let mut buf = bid_frame(1);
    assert_eq!(
        d.decode_server(&mut buf).unwrap_err().error_code(),
        ErrorCode::UnknownType
    );
}
