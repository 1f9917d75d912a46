//! Properties of the hand-written RESP reader (`gavel_redis::resp`): it
//! reads back any reply Redis could send, needs every byte of it, never
//! reads past it, and never panics on garbage.

use gavel_redis::resp;
use proptest::prelude::*;
use redis::Value;

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Value::Int),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::BulkString),
        Just(Value::Nil),
        Just(Value::Okay),
        "[a-zA-Z0-9 ]{0,20}"
            .prop_filter("OK is Okay", |s| s != "OK")
            .prop_map(Value::SimpleString),
    ];
    leaf.prop_recursive(3, 32, 8, |inner| {
        proptest::collection::vec(inner, 0..8).prop_map(Value::Array)
    })
}

fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Int(i) => out.extend(format!(":{i}\r\n").bytes()),
        Value::BulkString(b) => {
            out.extend(format!("${}\r\n", b.len()).bytes());
            out.extend(b);
            out.extend(b"\r\n");
        }
        Value::Nil => out.extend(b"$-1\r\n"),
        Value::Okay => out.extend(b"+OK\r\n"),
        Value::SimpleString(s) => out.extend(format!("+{s}\r\n").bytes()),
        Value::Array(items) => {
            out.extend(format!("*{}\r\n", items.len()).bytes());
            for i in items {
                encode(i, out);
            }
        }
        other => unreachable!("not generated: {other:?}"),
    }
}

proptest! {
    #[test]
    fn reads_back_what_redis_sends(v in value(), tail in proptest::collection::vec(any::<u8>(), 0..16)) {
        let mut bytes = Vec::new();
        encode(&v, &mut bytes);
        let len = bytes.len();
        // Whatever follows (the next reply) is left alone.
        bytes.extend(&tail);
        prop_assert_eq!(resp::parse(&bytes).unwrap(), Some((v.clone(), len)));
        // And redis-rs agrees on the reply itself.
        prop_assert_eq!(redis::parse_redis_value(&bytes[..len]).unwrap(), v);
        for cut in 0..len {
            prop_assert_eq!(resp::parse(&bytes[..cut]).unwrap(), None, "cut at {}", cut);
        }
    }

    #[test]
    fn garbage_is_an_error_or_a_wait_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(Some((_, used))) = resp::parse(&bytes) {
            prop_assert!(used <= bytes.len());
        }
    }
}

proptest! {
    #[test]
    fn a_corrupted_reply_is_an_error_or_a_wait_never_a_panic(
        v in value(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = Vec::new();
        encode(&v, &mut bytes);
        let i = at.index(bytes.len());
        bytes[i] = byte;
        if let Ok(Some((_, used))) = resp::parse(&bytes) {
            prop_assert!(used <= bytes.len());
        }
    }
}
