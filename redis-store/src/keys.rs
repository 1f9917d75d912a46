//! Key names. One hash tag per auction (`{a:ID}`) or SKU (`{s:ID}`).

/// The shard channel an auction's bid updates and closing are published on
/// (`SPUBLISH`): under the auction's hash tag, so on a cluster it lives on
/// the master owning the auction (`bid.lua` names it itself; the other
/// scripts take it as an argument).
pub fn updates(auction_id: u64) -> String {
    format!("gavel:{{a:{auction_id}}}:updates")
}

/// The auction whose [`updates`] channel `channel` is.
pub fn auction_of_updates(channel: &[u8]) -> Option<u64> {
    let id = channel
        .strip_prefix(b"gavel:{a:")?
        .strip_suffix(b"}:updates")?;
    if id.is_empty() || id.len() > 20 || !id.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(id).ok()?.parse().ok()
}

pub fn auction(id: u64) -> String {
    format!("gavel:{{a:{id}}}")
}

/// Where versions before the lean `bid.lua` kept a bid's idempotency key
/// (now a field of the auction's hash); still read for auctions they wrote.
pub fn bid(auction_id: u64, bid_id: u64) -> String {
    format!("gavel:{{a:{auction_id}}}:bid:{bid_id}")
}

pub fn sale(id: u64) -> String {
    format!("gavel:{{s:{id}}}")
}

pub fn held(sku_id: u64) -> String {
    format!("gavel:{{s:{sku_id}}}:held")
}

pub fn order(sku_id: u64, order_id: u64) -> String {
    format!("gavel:{{s:{sku_id}}}:order:{order_id}")
}

/// A u64 as the scripts store it: 20 digits, zero-padded.
pub fn dec(v: u64) -> String {
    format!("{v:020}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_auction_share_a_hash_tag() {
        assert_eq!(auction(42), "gavel:{a:42}");
        assert!(bid(42, 7).starts_with("gavel:{a:42}:"));
        assert!(order(7, 1).starts_with("gavel:{s:7}:"));
        assert_eq!(dec(u64::MAX), "18446744073709551615");
        assert_eq!(dec(5), "00000000000000000005");
        assert_eq!(updates(42), "gavel:{a:42}:updates");
        assert_eq!(
            redis::cluster_routing::get_slot(updates(42).as_bytes()),
            redis::cluster_routing::get_slot(auction(42).as_bytes())
        );
        assert_eq!(
            auction_of_updates(updates(u64::MAX).as_bytes()),
            Some(u64::MAX)
        );
        assert_eq!(auction_of_updates(b"gavel:{a:}:updates"), None);
        assert_eq!(auction_of_updates(b"gavel:{a:1x}:updates"), None);
        assert_eq!(auction_of_updates(b"gavel:updates"), None);
    }
}
