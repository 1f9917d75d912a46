//! The checker: the recorded history against the final state.
//!
//! Pure (no I/O), so it can be fed a synthetic history in tests. What it
//! verifies, per key, per auction and per sale, is listed on [`check`].
//! A *violation* breaks a guarantee of PROTOCOL.md; an *anomaly* is
//! allowed by the protocol but worth a look (a rejection that was based on
//! state that did not survive).

use std::collections::{BTreeMap, HashMap};

use gavel_protocol::{ErrorCode, Status};

use super::history::{misuse, Answer, Op, OpKind, Reply};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuctionSpec {
    pub id: u64,
    pub reserve: u64,
    pub min_increment: u64,
    /// When it ends (ms since the run started, harness clock), if it ends
    /// during the run; `None`: it ends long after.
    pub ends_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaleSpec {
    pub sku: u64,
    pub stock: u64,
    pub per_buyer_limit: u32,
}

/// What was opened before the load, and how the server was run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Setup {
    pub auctions: Vec<AuctionSpec>,
    pub sales: Vec<SaleSpec>,
    /// The server documents IN_DOUBT as "applied" (durable single-node
    /// mode, PROTOCOL.md §6.1 case a): then a retry handled by the same
    /// server process must replay it. Not in cross-node mode, where an
    /// IN_DOUBT script may not have run.
    pub in_doubt_means_applied: bool,
}

/// An auction as GET_AUCTION showed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuctionSnap {
    pub closed: bool,
    pub high_bid: u64,
    pub high_bidder: u64,
    pub bid_count: u64,
}

/// A sale as GET_SALE showed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaleSnap {
    pub stock: u64,
    pub sold: u64,
}

/// The server's state, read after the clean restart; `None` = NOT_FOUND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub auctions: BTreeMap<u64, Option<AuctionSnap>>,
    pub sales: BTreeMap<u64, Option<SaleSnap>>,
}

/// The final state before the replays and, when read, after them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinalState {
    pub before: Snapshot,
    pub after_replays: Option<Snapshot>,
    /// When `before` began to be read (ms since the run started).
    pub read_at_ms: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Findings {
    pub violations: Vec<String>,
    pub anomalies: Vec<String>,
}

impl Findings {
    fn violation(&mut self, what: String) {
        self.violations.push(what);
    }

    fn anomaly(&mut self, what: String) {
        self.anomalies.push(what);
    }
}

/// Checks `ops` (every request sent, with every answer) against `state`.
///
/// Per key:
/// * no ERROR a well-behaved client must never see (IDEMPOTENCY_CONFLICT,
///   MALFORMED, …);
/// * once answered OK, every later RESULT (final replays included) is the
///   same outcome with REPLAYED set;
/// * a RESULT flagged REPLAYED only when an earlier attempt may have
///   executed (not after "not executed" errors only: that would mean an
///   UNAVAILABLE/BUSY/SHUTTING_DOWN request had executed);
/// * a REPLAYED rejection repeats an earlier answer (unless an ambiguous
///   attempt came in between);
/// * every request answered IN_DOUBT ends with a RESULT;
/// * each RESULT agrees with the request (OK bid: value = amount, aux =
///   bidder; OUTBID: amount below value + increment; SOLD_OUT: value <
///   quantity; …) and no status that cannot occur (NOT_FOUND, CLOSED for a
///   BUY, …).
///
/// Closing (CLOSE_AUCTION has no key; see [`check_closing`]): an auction
/// shows itself closed (CLOSE_AUCTION answered OK or CLOSED, a BID answered
/// CLOSED, a GET_AUCTION showing CLOSED) only after a CLOSE_AUCTION for it
/// was sent or its end time came; then everything that shows it closed, and
/// the final state, carries the same high bid and bidder, and that high bid
/// is the highest bid answered OK; a bid (or a CLOSE_AUCTION) is not
/// executed OK, nor a GET_AUCTION answered OPEN, when it was sent after the
/// auction was shown closed or after its end time (real-time order); at
/// most one CLOSE_AUCTION is answered OK; an auction shown closed, or past
/// its end, is closed in the final state.
///
/// Per auction: high bid ≥ every OK amount, and equal to the amount of a
/// bid that was OK or whose outcome is unknown (never of a rejected bid or
/// of one answered "not executed"), with its bidder as high bidder;
/// OK count ≤ bid_count ≤ OK count + unknown count; every OUTBID shows a
/// high bid some client sent.
///
/// Per sale: Σ OK ≤ sold ≤ Σ OK + Σ unknown, sold ≤ stock, per buyer Σ OK ≤
/// limit, the "sold after" of OK orders distinct and ≤ the final sold.
///
/// Real time: what was acknowledged OK before a request was first sent
/// precedes it. A bid sent after an OK of amount A was acknowledged can only
/// be OK with amount ≥ A + increment, and an OUTBID for it shows a high bid
/// ≥ A; an order sent after an OK that left `sold` = S can only be OK
/// leaving ≥ S + its quantity, and a rejection of it shows sold ≥ S.
///
/// Replays after the restart change nothing (the state read after them is
/// the state read before).
pub fn check(setup: &Setup, ops: &[Op], state: &FinalState) -> Findings {
    let mut f = Findings::default();
    let auctions: HashMap<u64, AuctionSpec> = setup.auctions.iter().map(|a| (a.id, *a)).collect();
    let sales: HashMap<u64, SaleSpec> = setup.sales.iter().map(|s| (s.sku, *s)).collect();
    let mut rejected_then_accepted_in_replay = false;

    let mut bids: BTreeMap<u64, Vec<&Op>> = BTreeMap::new();
    let mut buys: BTreeMap<u64, Vec<&Op>> = BTreeMap::new();
    // CLOSE_AUCTIONs and GET_AUCTIONs, by auction.
    let mut others: BTreeMap<u64, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        match op.kind {
            OpKind::Bid { auction, .. } => bids.entry(auction).or_default().push(op),
            OpKind::Buy { sku, .. } => buys.entry(sku).or_default().push(op),
            OpKind::Close { auction } | OpKind::Get { auction } => {
                others.entry(auction).or_default().push(op);
                continue;
            }
        }
        if setup.in_doubt_means_applied {
            check_in_doubt_applied(op, &mut f);
        }
        if check_key(op, &mut f) {
            rejected_then_accepted_in_replay = true;
        }
        check_semantics(op, &auctions, &sales, &mut f);
    }

    for spec in &setup.auctions {
        let ops = bids.get(&spec.id).map(Vec::as_slice).unwrap_or(&[]);
        check_auction(spec, ops, state.before.auctions.get(&spec.id), &mut f);
        realtime_auction(spec, ops, &mut f);
        let other = others.get(&spec.id).map(Vec::as_slice).unwrap_or(&[]);
        check_closing(
            setup,
            spec,
            ops,
            other,
            state.before.auctions.get(&spec.id).copied().flatten(),
            state.read_at_ms,
            &mut f,
        );
    }
    for spec in &setup.sales {
        let ops = buys.get(&spec.sku).map(Vec::as_slice).unwrap_or(&[]);
        check_sale(spec, ops, state.before.sales.get(&spec.sku), &mut f);
        realtime_sale(spec, ops, &mut f);
    }
    for id in bids
        .keys()
        .chain(others.keys())
        .filter(|id| !auctions.contains_key(id))
    {
        f.violation(format!(
            "auction {id}: bids recorded for an auction never opened (harness bug)"
        ));
    }
    for id in buys.keys().filter(|id| !sales.contains_key(id)) {
        f.violation(format!(
            "sale {id}: orders recorded for a sale never opened (harness bug)"
        ));
    }

    if let Some(after) = &state.after_replays {
        if *after != state.before && !rejected_then_accepted_in_replay {
            for (id, b) in &state.before.auctions {
                let a = after.auctions.get(id).copied().flatten();
                if a != *b {
                    f.violation(format!(
                        "auction {id}: the final replays changed it: {b:?} before, {a:?} after"
                    ));
                }
            }
            for (id, b) in &state.before.sales {
                let a = after.sales.get(id).copied().flatten();
                if a != *b {
                    f.violation(format!(
                        "sale {id}: the final replays changed it: {b:?} before, {a:?} after"
                    ));
                }
            }
        }
    }
    f
}

/// The per-key rules. Returns true when a final replay of a rejected key
/// was accepted (the replays then legitimately changed the state).
fn check_key(op: &Op, f: &mut Findings) -> bool {
    let mut maybe_ran = false;
    let mut ambiguous_since_result = false;
    let mut results: Vec<Reply> = Vec::new();
    let mut accepted: Option<Reply> = None;
    let mut replay_accepted = false;
    for (i, a) in op.attempts.iter().enumerate() {
        match a.answer {
            Answer::Error(code) if misuse(code) => f.violation(format!(
                "key answered {} (attempt {}), impossible for a well-formed retry with the same fields:\n    {}",
                a.answer,
                i + 1,
                op.describe()
            )),
            Answer::Result(r) => {
                if r.replayed && !maybe_ran {
                    f.violation(format!(
                        "attempt {} was answered REPLAYED although every earlier attempt was answered \
                         \"not executed\" (or there was none): a request refused as not executed had executed:\n    {}",
                        i + 1,
                        op.describe()
                    ));
                }
                if let Some(acc) = accepted {
                    if !(r.status == Status::Ok && r.same_outcome(&acc) && r.replayed) {
                        f.violation(format!(
                            "accepted key answered {} (attempt {}{}) after its OK {}:\n    {}",
                            r,
                            i + 1,
                            if a.final_replay { ", final replay" } else { "" },
                            acc,
                            op.describe()
                        ));
                    }
                } else if r.status == Status::Ok {
                    if !results.is_empty() {
                        f.anomaly(format!(
                            "rejected key later accepted (evaluated afresh, so the rejection was \
                             based on state that did not survive):\n    {}",
                            op.describe()
                        ));
                        replay_accepted |= a.final_replay;
                    }
                    accepted = Some(r);
                } else if r.replayed
                    && !results.is_empty()
                    && !ambiguous_since_result
                    && !results.iter().any(|p| p.same_outcome(&r))
                {
                    f.violation(format!(
                        "attempt {} replayed {} which this key was never answered:\n    {}",
                        i + 1,
                        r,
                        op.describe()
                    ));
                }
                results.push(r);
                maybe_ran = true;
                ambiguous_since_result = false;
            }
            ref other if other.ambiguous() => {
                maybe_ran = true;
                ambiguous_since_result = true;
            }
            _ => {}
        }
    }
    if op.got_in_doubt() && results.is_empty() {
        f.violation(format!(
            "answered {} and never resolved: no retry got a RESULT:\n    {}",
            Answer::Error(ErrorCode::InDoubt as u16),
            op.describe()
        ));
    }
    replay_accepted
}

/// Durable single-node mode: an IN_DOUBT request was applied and stays
/// applied while that server process lives (it is committed when the store
/// returns), so its first RESULT — if no restart came between the IN_DOUBT
/// and that RESULT — must be a replay.
fn check_in_doubt_applied(op: &Op, f: &mut Findings) {
    let Some(doubt) = op
        .attempts
        .iter()
        .find(|a| a.answer.is_in_doubt() && !a.final_replay)
    else {
        return;
    };
    let Some((i, res)) = op
        .attempts
        .iter()
        .enumerate()
        .find(|(_, a)| a.answer.result().is_some() && !a.final_replay)
    else {
        return;
    };
    let replayed = res.answer.result().is_some_and(|r| r.replayed);
    // Generation 0: not recorded.
    if !replayed
        && doubt.gen_sent != 0
        && res.at_ms >= doubt.at_ms
        && res.gen_answered == doubt.gen_sent
    {
        f.violation(format!(
            "answered IN_DOUBT (applied, to be committed) yet attempt {} was evaluated afresh \
             (not REPLAYED) by the same server process, no restart in between: the applied \
             request was forgotten:\n    {}",
            i + 1,
            op.describe()
        ));
    }
}

/// Each RESULT must agree with the request and the opened auction/sale.
fn check_semantics(
    op: &Op,
    auctions: &HashMap<u64, AuctionSpec>,
    sales: &HashMap<u64, SaleSpec>,
    f: &mut Findings,
) {
    let mut seen: Vec<Reply> = Vec::new();
    for r in op.attempts.iter().filter_map(|a| a.answer.result()) {
        if seen.iter().any(|s| s.same_outcome(r)) {
            continue;
        }
        seen.push(*r);
        let wrong: Option<String> = match op.kind {
            OpKind::Bid {
                auction,
                bidder,
                amount,
                ..
            } => {
                let Some(spec) = auctions.get(&auction) else {
                    continue;
                };
                let step = spec.min_increment.max(1);
                match r.status {
                    Status::Ok if r.value != amount || r.aux != bidder => Some(format!(
                        "OK must show the bid itself as high bid (value {amount}, aux {bidder})"
                    )),
                    Status::Outbid if amount >= r.value.saturating_add(step) => Some(format!(
                        "OUTBID although amount {amount} >= high bid {} + increment {step}",
                        r.value
                    )),
                    Status::BelowReserve if amount >= spec.reserve => Some(format!(
                        "BELOW_RESERVE although amount {amount} >= reserve {}",
                        spec.reserve
                    )),
                    // When it may: check_closing.
                    Status::Ok | Status::Outbid | Status::BelowReserve | Status::Closed => None,
                    other => Some(format!(
                        "{} cannot answer a BID on an auction that was opened",
                        other.name()
                    )),
                }
            }
            OpKind::Buy { sku, qty, .. } => {
                let Some(spec) = sales.get(&sku) else {
                    continue;
                };
                let qty = u64::from(qty);
                let limit = u64::from(spec.per_buyer_limit);
                match r.status {
                    Status::Ok
                        if r.value.saturating_add(qty) > spec.stock
                            || r.aux < qty
                            || r.aux > limit =>
                    {
                        Some(format!(
                            "OK must leave value + {qty} <= stock {} and {qty} <= aux <= limit {limit}",
                            spec.stock
                        ))
                    }
                    Status::SoldOut if r.value >= qty => {
                        Some(format!("SOLD_OUT although {} left >= quantity {qty}", r.value))
                    }
                    Status::LimitExceeded if r.aux + qty <= limit || r.value < qty => Some(format!(
                        "LIMIT_EXCEEDED needs held {} + {qty} > limit {limit} with stock left {} >= {qty}",
                        r.aux, r.value
                    )),
                    Status::Ok | Status::SoldOut | Status::LimitExceeded => None,
                    other => Some(format!(
                        "{} cannot answer a BUY on an open sale that never ends",
                        other.name()
                    )),
                }
            }
            // Checked by check_closing.
            OpKind::Close { .. } | OpKind::Get { .. } => return,
        };
        if let Some(why) = wrong {
            f.violation(format!(
                "answer {r} is wrong: {why}:\n    {}",
                op.describe()
            ));
        }
    }
}

fn bid_fields(op: &Op) -> (u64, u64) {
    match op.kind {
        OpKind::Bid { bidder, amount, .. } => (bidder, amount),
        _ => unreachable!("bids only"),
    }
}

fn ok_reply(op: &Op) -> Option<Reply> {
    op.attempts
        .iter()
        .filter_map(|a| a.answer.result())
        .find(|r| r.status == Status::Ok)
        .copied()
}

fn check_auction(
    spec: &AuctionSpec,
    ops: &[&Op],
    got: Option<&Option<AuctionSnap>>,
    f: &mut Findings,
) {
    let id = spec.id;
    let ok: Vec<&Op> = ops.iter().copied().filter(|o| o.accepted()).collect();
    let maybe = ops.iter().filter(|o| o.maybe_executed()).count() as u64;
    let Some(Some(a)) = got else {
        f.violation(format!(
            "auction {id}: {} after the restart ({} bids were accepted)",
            if got.is_none() {
                "not read"
            } else {
                "NOT_FOUND"
            },
            ok.len()
        ));
        return;
    };
    let mut by_amount: HashMap<u64, Vec<&Op>> = HashMap::new();
    for o in ops {
        by_amount.entry(bid_fields(o).1).or_default().push(o);
    }
    if let Some(top) = ok.iter().max_by_key(|o| bid_fields(o).1) {
        let amount = bid_fields(top).1;
        if a.high_bid < amount {
            f.violation(format!(
                "auction {id}: acknowledged bid lost: high bid {} < OK amount {amount}:\n    {}",
                a.high_bid,
                top.describe()
            ));
        }
    }
    if a.high_bid > 0 {
        match by_amount.get(&a.high_bid) {
            None => f.violation(format!(
                "auction {id}: high bid {} (bidder {}) is no amount any client sent",
                a.high_bid, a.high_bidder
            )),
            Some(cands) => {
                let live: Vec<&&Op> = cands
                    .iter()
                    .filter(|o| o.accepted() || o.maybe_executed())
                    .collect();
                match live.first() {
                    None => f.violation(format!(
                        "auction {id}: the high bid {} is a bid that was answered as rejected or \
                         not executed (an accepted bid answered otherwise, or a forgotten key \
                         evaluated again):\n    {}",
                        a.high_bid,
                        cands[0].describe()
                    )),
                    Some(o) if live.iter().all(|o| bid_fields(o).0 != a.high_bidder) => {
                        f.violation(format!(
                            "auction {id}: high bidder {} is not the bidder of the high bid {}:\n    {}",
                            a.high_bidder,
                            a.high_bid,
                            o.describe()
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
    } else if a.high_bidder != 0 {
        f.violation(format!(
            "auction {id}: high bidder {} without a high bid",
            a.high_bidder
        ));
    }
    let lo = ok.len() as u64;
    if a.bid_count < lo || a.bid_count > lo + maybe {
        f.violation(format!(
            "auction {id}: bid_count {} outside [{lo}, {}] (OK bids, plus bids whose outcome is unknown)",
            a.bid_count,
            lo + maybe
        ));
    }
    // Every OUTBID showed a high bid: some client sent it, and it survived
    // unless its outcome is unknown.
    for o in ops {
        for r in o.attempts.iter().filter_map(|x| x.answer.result()) {
            if r.status != Status::Outbid || r.value == 0 {
                continue;
            }
            match by_amount.get(&r.value) {
                None => f.violation(format!(
                    "auction {id}: {r} shows a high bid no client sent:\n    {}",
                    o.describe()
                )),
                Some(c) if c.iter().all(|b| b.resolved() && !b.accepted()) => f.anomaly(format!(
                    "auction {id}: {r} was based on a bid that was finally not accepted:\n    {}\n    that bid: {}",
                    o.describe(),
                    c[0].describe()
                )),
                Some(_) => {}
            }
        }
    }
}

/// The highest `value` among `acks` (ack time, value) acknowledged strictly
/// before `t`, with the op that got it.
struct AckedBefore<'a> {
    /// Sorted by ack time, with the running maximum of the value.
    acks: Vec<(u64, u64, &'a Op)>,
}

impl<'a> AckedBefore<'a> {
    fn new(mut acks: Vec<(u64, u64, &'a Op)>) -> Self {
        acks.sort_by_key(|(t, _, _)| *t);
        let mut best: Option<(u64, &'a Op)> = None;
        for a in acks.iter_mut() {
            if best.is_none_or(|(v, _)| a.1 > v) {
                best = Some((a.1, a.2));
            }
            let (v, o) = best.expect("set above");
            a.1 = v;
            a.2 = o;
        }
        AckedBefore { acks }
    }

    fn max_before(&self, t: u64) -> Option<(u64, &'a Op)> {
        let n = self.acks.partition_point(|(at, _, _)| *at < t);
        n.checked_sub(1).map(|i| (self.acks[i].1, self.acks[i].2))
    }
}

fn realtime_auction(spec: &AuctionSpec, ops: &[&Op], f: &mut Findings) {
    let step = spec.min_increment.max(1);
    let before = AckedBefore::new(
        ops.iter()
            .filter_map(|o| o.acked_ms().map(|t| (t, bid_fields(o).1, *o)))
            .collect(),
    );
    for o in ops.iter().filter(|o| o.sent_ms > 0) {
        let Some((m, a)) = before.max_before(o.sent_ms) else {
            continue;
        };
        let amount = bid_fields(o).1;
        let mut seen: Vec<Reply> = Vec::new();
        for r in o.attempts.iter().filter_map(|x| x.answer.result()) {
            if seen.iter().any(|p| p.same_outcome(r)) {
                continue;
            }
            seen.push(*r);
            let wrong = match r.status {
                Status::Ok => amount < m.saturating_add(step),
                Status::Outbid => r.value < m,
                _ => false,
            };
            if wrong {
                f.violation(format!(
                    "auction {}: {r} contradicts bid {m} acknowledged OK before this bid was sent \
                     (real-time order):\n    {}\n    acknowledged earlier: {}",
                    spec.id,
                    o.describe(),
                    a.describe()
                ));
            }
        }
    }
}

/// Slack between an end time as the harness reckons it and the server's
/// clock (ms): the two clocks are read together when the auction is opened.
const END_SLACK_MS: u64 = 100;

/// What showed an auction closed, and when that answer came.
#[derive(Clone, Copy)]
struct ShownClosed<'a> {
    at_ms: u64,
    /// The high bid and bidder it showed.
    high: (u64, u64),
    op: &'a Op,
}

/// The closing of one auction: what showed it closed (CLOSE_AUCTION
/// answered OK or CLOSED, a BID answered CLOSED, a GET_AUCTION showing
/// CLOSED) against when it could close (the first CLOSE_AUCTION sent, its
/// end time), against what was executed after it was shown closed, and
/// against the final state `got`.
fn check_closing(
    setup: &Setup,
    spec: &AuctionSpec,
    bids: &[&Op],
    others: &[&Op],
    got: Option<AuctionSnap>,
    read_at_ms: u64,
    f: &mut Findings,
) {
    let id = spec.id;
    let closes: Vec<&Op> = others
        .iter()
        .copied()
        .filter(|o| matches!(o.kind, OpKind::Close { .. }))
        .collect();
    let mut shown: Vec<ShownClosed> = Vec::new();
    for o in bids.iter().chain(others) {
        for a in &o.attempts {
            let high = match (o.kind, a.answer) {
                (OpKind::Bid { .. }, Answer::Result(r)) if r.status == Status::Closed => {
                    (r.value, r.aux)
                }
                (OpKind::Close { .. }, Answer::Result(r))
                    if matches!(r.status, Status::Ok | Status::Closed) =>
                {
                    (r.value, r.aux)
                }
                (OpKind::Get { .. }, Answer::Auction(v)) if v.closed => (v.high_bid, v.high_bidder),
                _ => continue,
            };
            shown.push(ShownClosed {
                at_ms: a.at_ms,
                high,
                op: o,
            });
        }
    }
    shown.sort_by_key(|c| c.at_ms);
    let first_shown = shown.first().copied();
    // The earliest the auction could close.
    let close_sent = closes.iter().map(|o| o.sent_ms).min();
    let end = spec.ends_ms.map(|e| e.saturating_sub(END_SLACK_MS));
    let may_close_from = match (close_sent, end) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let how_closable = || match (close_sent, spec.ends_ms) {
        (None, None) => "no CLOSE_AUCTION was sent and it does not end during the run".to_string(),
        (c, e) => format!(
            "{}{}",
            c.map_or(String::new(), |t| format!(
                "the first CLOSE_AUCTION was sent at +{t}ms; "
            )),
            e.map_or("it does not end during the run".to_string(), |t| format!(
                "it ends at +{t}ms"
            ))
        ),
    };
    if let Some(c) = first_shown {
        if may_close_from.is_none_or(|t| c.at_ms < t) {
            f.violation(format!(
                "auction {id}: shown closed at +{}ms, before it could close ({}):\n    {}",
                c.at_ms,
                how_closable(),
                c.op.describe()
            ));
        }
    }
    // Executed after it was shown closed, or after its end: `sent` is the
    // earliest the execution can have begun.
    let after_close = |sent: u64| -> Option<String> {
        if let Some(c) = shown.iter().find(|c| c.at_ms < sent) {
            return Some(format!(
                "sent at +{sent}ms or later, after the auction was shown closed at +{}ms by:\n    {}",
                c.at_ms,
                c.op.describe()
            ));
        }
        match spec.ends_ms {
            Some(e) if sent > e + END_SLACK_MS => Some(format!(
                "sent at +{sent}ms or later, after the auction's end at +{e}ms"
            )),
            _ => None,
        }
    };
    let mut ok_closes = 0usize;
    for o in bids.iter().chain(others) {
        let mut doubt_gen: Option<u64> = None;
        let mut reported = false;
        for (i, a) in o.attempts.iter().enumerate() {
            let why = match (o.kind, a.answer) {
                (OpKind::Bid { .. }, Answer::Result(r)) if r.status == Status::Ok => {
                    // A replay: it executed at one of the earlier attempts.
                    let sent = if r.replayed {
                        o.sent_ms
                    } else {
                        o.attempt_sent_after(i)
                    };
                    after_close(sent).map(|w| format!("bid accepted (OK) although {w}"))
                }
                (OpKind::Bid { .. }, _) => continue,
                (OpKind::Close { .. }, Answer::Result(r)) => {
                    let mut w = Vec::new();
                    if r.replayed {
                        w.push("CLOSE_AUCTION has no key: REPLAYED is impossible".to_string());
                    }
                    match r.status {
                        Status::Ok => {
                            ok_closes += 1;
                            if let Some(why) = after_close(o.attempt_sent_after(i)) {
                                w.push(format!("closed (OK) again although {why}"));
                            }
                            if setup.in_doubt_means_applied
                                && doubt_gen.is_some_and(|g| g != 0 && a.gen_answered == g)
                            {
                                w.push(
                                    "OK after an IN_DOUBT (applied) from the same server process: \
                                     it was closed twice"
                                        .to_string(),
                                );
                            }
                        }
                        Status::Closed => {}
                        other => w.push(format!(
                            "CLOSE_AUCTION of an auction that was opened answered {}",
                            other.name()
                        )),
                    }
                    (!w.is_empty()).then(|| w.join("; "))
                }
                (OpKind::Get { .. }, Answer::Auction(v)) if !v.closed => {
                    after_close(o.attempt_sent_after(i))
                        .map(|w| format!("GET_AUCTION showed it OPEN although {w}"))
                }
                (OpKind::Get { .. }, Answer::Result(r)) => Some(format!(
                    "GET_AUCTION of an auction that was opened answered {r}"
                )),
                (_, Answer::Error(code)) if misuse(code) => Some(format!(
                    "answered {}, impossible for a well-formed request",
                    a.answer
                )),
                (_, Answer::Error(_)) if a.answer.is_in_doubt() && !a.final_replay => {
                    doubt_gen = Some(a.gen_sent);
                    continue;
                }
                _ => continue,
            };
            if let Some(why) = why {
                if !reported {
                    f.violation(format!(
                        "auction {id}: attempt {}: {why}:\n    {}",
                        i + 1,
                        o.describe()
                    ));
                }
                reported = true;
            }
        }
        if matches!(o.kind, OpKind::Close { .. }) && o.got_in_doubt() && !o.resolved() {
            f.violation(format!(
                "auction {id}: CLOSE_AUCTION answered IN_DOUBT and never resolved: no retry got a \
                 RESULT:\n    {}",
                o.describe()
            ));
        }
    }
    if ok_closes > 1 {
        f.violation(format!(
            "auction {id}: CLOSE_AUCTION answered OK {ok_closes} times (an auction closes once):\n    {}",
            closes
                .iter()
                .map(|o| o.describe())
                .collect::<Vec<_>>()
                .join("\n    ")
        ));
    }

    // The final state.
    let Some(a) = got else {
        return; // check_auction reports it.
    };
    let past_end = spec
        .ends_ms
        .is_some_and(|e| read_at_ms > 0 && e + END_SLACK_MS < read_at_ms);
    if !a.closed {
        if let Some(c) = first_shown {
            f.violation(format!(
                "auction {id}: OPEN in the final state, but it was shown closed at +{}ms:\n    {}",
                c.at_ms,
                c.op.describe()
            ));
        } else if past_end {
            f.violation(format!(
                "auction {id}: OPEN in the final state, read at +{read_at_ms}ms, after its end at \
                 +{}ms",
                spec.ends_ms.unwrap_or_default()
            ));
        }
        return;
    }
    if may_close_from.is_none() {
        f.violation(format!(
            "auction {id}: CLOSED in the final state, but {}",
            how_closable()
        ));
    }
    let high = (a.high_bid, a.high_bidder);
    if let Some(c) = shown.iter().find(|c| c.high != high) {
        f.violation(format!(
            "auction {id}: shown closed with high bid {} (bidder {}), but the final state has \
             {} (bidder {}):\n    {}",
            c.high.0,
            c.high.1,
            high.0,
            high.1,
            c.op.describe()
        ));
    }
    // Closed: no bid accepted after the close, so the high bid is the
    // highest OK bid — or a bid whose outcome is unknown (check_auction
    // checks that it is one of those).
    let max_ok = bids
        .iter()
        .filter(|o| o.accepted())
        .map(|o| bid_fields(o).1)
        .max()
        .unwrap_or(0);
    let unknown_high = bids
        .iter()
        .any(|o| o.maybe_executed() && bid_fields(o).1 == a.high_bid);
    if a.high_bid != max_ok && !unknown_high {
        f.violation(format!(
            "auction {id}: closed with high bid {}, but the highest bid answered OK is {max_ok}",
            a.high_bid
        ));
    }
}

fn realtime_sale(spec: &SaleSpec, ops: &[&Op], f: &mut Findings) {
    let before = AckedBefore::new(
        ops.iter()
            .filter_map(|o| {
                let t = o.acked_ms()?;
                let r = ok_reply(o)?;
                Some((t, spec.stock.saturating_sub(r.value), *o))
            })
            .collect(),
    );
    for o in ops.iter().filter(|o| o.sent_ms > 0) {
        let Some((m, a)) = before.max_before(o.sent_ms) else {
            continue;
        };
        let qty = match o.kind {
            OpKind::Buy { qty, .. } => u64::from(qty),
            _ => unreachable!("orders only"),
        };
        let mut seen: Vec<Reply> = Vec::new();
        for r in o.attempts.iter().filter_map(|x| x.answer.result()) {
            if seen.iter().any(|p| p.same_outcome(r)) {
                continue;
            }
            seen.push(*r);
            let sold = spec.stock.saturating_sub(r.value);
            let wrong = match r.status {
                Status::Ok => sold < m + qty,
                _ => sold < m,
            };
            if wrong {
                f.violation(format!(
                    "sale {}: {r} (sold = {sold}) contradicts an order acknowledged OK before this \
                     one was sent, which left sold = {m} (real-time order):\n    {}\n    acknowledged earlier: {}",
                    spec.sku,
                    o.describe(),
                    a.describe()
                ));
            }
        }
    }
}

fn check_sale(spec: &SaleSpec, ops: &[&Op], got: Option<&Option<SaleSnap>>, f: &mut Findings) {
    let id = spec.sku;
    let qty = |o: &Op| match o.kind {
        OpKind::Buy { qty, .. } => u64::from(qty),
        _ => unreachable!("orders only"),
    };
    let buyer = |o: &Op| match o.kind {
        OpKind::Buy { buyer, .. } => buyer,
        _ => unreachable!("orders only"),
    };
    let ok: Vec<&Op> = ops.iter().copied().filter(|o| o.accepted()).collect();
    let lo: u64 = ok.iter().map(|o| qty(o)).sum();
    let maybe: u64 = ops
        .iter()
        .filter(|o| o.maybe_executed())
        .map(|o| qty(o))
        .sum();
    let Some(Some(s)) = got else {
        f.violation(format!(
            "sale {id}: {} after the restart ({lo} units were sold with OK)",
            if got.is_none() {
                "not read"
            } else {
                "NOT_FOUND"
            }
        ));
        return;
    };
    if s.stock != spec.stock {
        f.violation(format!(
            "sale {id}: stock {} but it was opened with {}",
            s.stock, spec.stock
        ));
    }
    if s.sold > s.stock {
        f.violation(format!(
            "sale {id}: oversold: sold {} > stock {}",
            s.sold, s.stock
        ));
    }
    if s.sold < lo {
        f.violation(format!(
            "sale {id}: acknowledged orders lost: sold {} < {lo} units answered OK",
            s.sold
        ));
    }
    if s.sold > lo + maybe {
        f.violation(format!(
            "sale {id}: sold {} > {lo} units answered OK + {maybe} units of orders whose outcome \
             is unknown: units sold to orders answered otherwise (or sold twice)",
            s.sold
        ));
    }
    let mut per_buyer: HashMap<u64, (u64, u64, Vec<u64>)> = HashMap::new();
    for o in ops {
        let e = per_buyer.entry(buyer(o)).or_default();
        if o.accepted() {
            e.0 += qty(o);
            e.1 += qty(o);
            if let Some(r) = ok_reply(o) {
                e.2.push(r.aux);
            }
        } else if o.maybe_executed() {
            e.1 += qty(o);
        }
    }
    let limit = u64::from(spec.per_buyer_limit);
    for (b, (ok_units, possible, helds)) in &per_buyer {
        if *ok_units > limit {
            f.violation(format!(
                "sale {id}: buyer {b} was answered OK for {ok_units} units, over the per-buyer limit {limit}"
            ));
        }
        let mut sorted = helds.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            f.violation(format!(
                "sale {id}: two OK orders of buyer {b} report the same holding (aux): {sorted:?}"
            ));
        }
        if let Some(max) = sorted.last() {
            if max > possible {
                f.violation(format!(
                    "sale {id}: buyer {b} was told it holds {max} units, more than its orders \
                     could have bought ({possible})"
                ));
            }
        }
    }
    let mut sold_after: Vec<(u64, &Op)> = ok
        .iter()
        .filter_map(|o| ok_reply(o).map(|r| (spec.stock.saturating_sub(r.value), *o)))
        .collect();
    sold_after.sort_by_key(|(n, _)| *n);
    for w in sold_after.windows(2) {
        if w[0].0 == w[1].0 {
            f.violation(format!(
                "sale {id}: two OK orders both left sold = {}:\n    {}\n    {}",
                w[0].0,
                w[0].1.describe(),
                w[1].1.describe()
            ));
        }
    }
    if let Some((n, o)) = sold_after.last() {
        if *n > s.sold {
            f.violation(format!(
                "sale {id}: an OK order left sold = {n}, above the final sold {}:\n    {}",
                s.sold,
                o.describe()
            ));
        }
    }
    for o in ops {
        for r in o.attempts.iter().filter_map(|x| x.answer.result()) {
            if r.status != Status::Ok && spec.stock.saturating_sub(r.value) > s.sold {
                f.anomaly(format!(
                    "sale {id}: {r} showed sold = {}, above the final sold {}:\n    {}",
                    spec.stock.saturating_sub(r.value),
                    s.sold,
                    o.describe()
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::history::{Answer, AuctionView, Op, OpKind, Reply};

    /// The checker reported a violation mentioning `needle`.
    #[track_caller]
    fn assert_reported(f: &Findings, needle: &str) {
        assert!(
            f.violations.iter().any(|v| v.contains(needle)),
            "no violation mentions {needle:?}: {:#?}",
            f.violations
        );
    }

    const BUSY: u16 = ErrorCode::Busy as u16;
    const UNAVAILABLE: u16 = ErrorCode::Unavailable as u16;
    const IN_DOUBT: u16 = ErrorCode::InDoubt as u16;

    fn setup() -> Setup {
        Setup {
            auctions: vec![AuctionSpec {
                id: 1,
                reserve: 100,
                min_increment: 5,
                ends_ms: None,
            }],
            sales: vec![SaleSpec {
                sku: 7,
                stock: 10,
                per_buyer_limit: 5,
            }],
            in_doubt_means_applied: false,
        }
    }

    fn bid(amount: u64, bidder: u64, key: u64, answers: &[Answer]) -> Op {
        let mut op = Op::new(
            OpKind::Bid {
                auction: 1,
                bidder,
                amount,
                bid_id: key,
            },
            0,
        );
        for (i, a) in answers.iter().enumerate() {
            op.push(i as u64 * 10, *a);
        }
        op
    }

    fn buy(qty: u32, buyer: u64, key: u64, answers: &[Answer]) -> Op {
        let mut op = Op::new(
            OpKind::Buy {
                sku: 7,
                buyer,
                qty,
                order_id: key,
            },
            0,
        );
        for (i, a) in answers.iter().enumerate() {
            op.push(i as u64 * 10, *a);
        }
        op
    }

    fn res(status: Status, value: u64, aux: u64) -> Answer {
        Answer::Result(Reply::new(status, value, aux, false))
    }

    fn replayed(status: Status, value: u64, aux: u64) -> Answer {
        Answer::Result(Reply::new(status, value, aux, true))
    }

    fn state(high: u64, bidder: u64, count: u64, sold: u64) -> FinalState {
        let mut s = Snapshot::default();
        s.auctions.insert(
            1,
            Some(AuctionSnap {
                closed: false,
                high_bid: high,
                high_bidder: bidder,
                bid_count: count,
            }),
        );
        s.sales.insert(7, Some(SaleSnap { stock: 10, sold }));
        FinalState {
            before: s.clone(),
            after_replays: Some(s),
            read_at_ms: 0,
        }
    }

    /// The final state with auction 1 closed.
    fn closed_state(high: u64, bidder: u64, count: u64) -> FinalState {
        let mut st = state(high, bidder, count, 0);
        for s in [Some(&mut st.before), st.after_replays.as_mut()]
            .into_iter()
            .flatten()
        {
            if let Some(Some(a)) = s.auctions.get_mut(&1) {
                a.closed = true;
            }
        }
        st.read_at_ms = 100_000;
        st
    }

    /// An op on auction 1 first sent at `sent`, with answers at given times.
    fn timed(kind: OpKind, sent: u64, answers: &[(u64, Answer)]) -> Op {
        let mut op = Op::new(kind, 0);
        op.sent_ms = sent;
        for (at, a) in answers {
            op.push(*at, *a);
        }
        op
    }

    fn bid_kind(amount: u64, bidder: u64, key: u64) -> OpKind {
        OpKind::Bid {
            auction: 1,
            bidder,
            amount,
            bid_id: key,
        }
    }

    const CLOSE: OpKind = OpKind::Close { auction: 1 };
    const GET: OpKind = OpKind::Get { auction: 1 };

    fn view(closed: bool, high_bid: u64, high_bidder: u64) -> Answer {
        Answer::Auction(AuctionView {
            closed,
            high_bid,
            high_bidder,
        })
    }

    /// An auction closed by CLOSE_AUCTION while bids and reads go on: a
    /// bid executed before the close whose answer was lost replays OK after
    /// it; the CLOSE_AUCTION's answer was lost and its retry says CLOSED.
    fn closing_history() -> Vec<Op> {
        vec![
            timed(bid_kind(1000, 1, 1), 40, &[(50, res(Status::Ok, 1000, 1))]),
            timed(
                bid_kind(1006, 2, 2),
                60,
                &[(70, Answer::Lost), (150, replayed(Status::Ok, 1006, 2))],
            ),
            timed(GET, 90, &[(95, view(false, 1006, 2))]),
            timed(
                CLOSE,
                100,
                &[(105, Answer::Lost), (120, res(Status::Closed, 1006, 2))],
            ),
            timed(
                bid_kind(1009, 3, 3),
                130,
                &[(140, res(Status::Closed, 1006, 2))],
            ),
            timed(GET, 160, &[(170, view(true, 1006, 2))]),
            // Sent before the close was shown, answered after: concurrent.
            timed(
                bid_kind(1003, 4, 4),
                110,
                &[(180, res(Status::Outbid, 1006, 2))],
            ),
        ]
    }

    #[test]
    fn a_consistent_closing_passes() {
        let f = check(&setup(), &closing_history(), &closed_state(1006, 2, 2));
        assert!(f.violations.is_empty(), "{:#?}", f.violations);
    }

    #[test]
    fn an_ok_after_a_confirmed_close_is_a_violation() {
        // Sent after the CLOSE_AUCTION's answer came (+120ms), accepted.
        let mut ops = closing_history();
        ops.push(timed(
            bid_kind(1012, 5, 5),
            200,
            &[(210, res(Status::Ok, 1012, 5))],
        ));
        let f = check(&setup(), &ops, &closed_state(1012, 5, 3));
        assert_reported(&f, "bid accepted (OK) although sent at +200ms");
        // The close showed 1006, the final state has 1012.
        assert_reported(&f, "shown closed with high bid 1006");

        // First sent before, but evaluated afresh (not REPLAYED) by a retry
        // sent after the close was shown: that retry should have got CLOSED.
        let mut ops = closing_history();
        ops.push(timed(
            bid_kind(1012, 5, 5),
            100,
            &[(125, Answer::Timeout), (210, res(Status::Ok, 1012, 5))],
        ));
        let f = check(&setup(), &ops, &closed_state(1012, 5, 3));
        assert_reported(&f, "attempt 2: bid accepted (OK) although sent at +125ms");
        // Had the retry replayed it, it executed before the close... but
        // then the close must have shown it.
        let mut ops = closing_history();
        ops.push(timed(
            bid_kind(1012, 5, 5),
            100,
            &[(125, Answer::Timeout), (210, replayed(Status::Ok, 1012, 5))],
        ));
        let f = check(&setup(), &ops, &closed_state(1012, 5, 3));
        assert!(
            f.violations
                .iter()
                .all(|v| !v.contains("bid accepted (OK) although")),
            "{:#?}",
            f.violations
        );
        assert_reported(&f, "shown closed with high bid 1006");
    }

    #[test]
    fn closed_without_a_close_is_a_violation() {
        let ops = vec![
            timed(bid_kind(1000, 1, 1), 40, &[(50, res(Status::Ok, 1000, 1))]),
            timed(
                bid_kind(1003, 2, 2),
                60,
                &[(70, res(Status::Closed, 1000, 1))],
            ),
        ];
        let f = check(&setup(), &ops, &closed_state(1000, 1, 1));
        assert!(
            f.violations.iter().any(|v| v
                .contains("before it could close (no CLOSE_AUCTION was sent and it does not end")),
            "{:#?}",
            f.violations
        );
        assert_reported(&f, "CLOSED in the final state, but no CLOSE_AUCTION");
        // Shown closed, yet open in the final state (the close was lost).
        let mut ops = closing_history();
        ops.truncate(4);
        let f = check(&setup(), &ops, &state(1006, 2, 2, 0));
        assert_reported(&f, "OPEN in the final state, but it was shown closed");
    }

    #[test]
    fn end_times_and_double_closes_are_checked() {
        let mut su = setup();
        su.auctions[0].ends_ms = Some(1000);
        let ok = vec![
            timed(bid_kind(1000, 1, 1), 40, &[(50, res(Status::Ok, 1000, 1))]),
            timed(
                bid_kind(1006, 2, 2),
                900,
                &[(910, res(Status::Ok, 1006, 2))],
            ),
            // Within the slack before the end: the clocks may differ a little.
            timed(
                bid_kind(1009, 3, 3),
                940,
                &[(950, res(Status::Closed, 1006, 2))],
            ),
            timed(GET, 1200, &[(1210, view(true, 1006, 2))]),
        ];
        let f = check(&su, &ok, &closed_state(1006, 2, 2));
        assert!(f.violations.is_empty(), "{:#?}", f.violations);

        let cases = [
            (
                timed(
                    bid_kind(1012, 4, 4),
                    1200,
                    &[(1210, res(Status::Ok, 1012, 4))],
                ),
                "bid accepted (OK) although sent at +1200ms or later, after the auction's end at +1000ms",
            ),
            (
                timed(
                    bid_kind(1015, 5, 5),
                    700,
                    &[(800, res(Status::Closed, 1006, 2))],
                ),
                "shown closed at +800ms, before it could close (it ends at +1000ms)",
            ),
            (
                timed(GET, 1300, &[(1310, view(false, 1006, 2))]),
                "GET_AUCTION showed it OPEN although sent at +1300ms or later, after the auction's end",
            ),
        ];
        for (op, needle) in cases {
            // Nothing showed it closed: the end time is what counts.
            let mut ops = ok[..2].to_vec();
            ops.push(op);
            let f = check(&su, &ops, &closed_state(1006, 2, 2));
            assert_reported(&f, needle);
        }
        // Past its end, read open at the end.
        let f = check(&su, &ok[..2], &state(1006, 2, 2, 0));
        assert!(f.violations.is_empty(), "read_at_ms 0: not judged");
        let mut st = state(1006, 2, 2, 0);
        st.read_at_ms = 5000;
        let f = check(&su, &ok[..2], &st);
        assert_reported(&f, "OPEN in the final state, read at +5000ms");

        // Two CLOSE_AUCTIONs answered OK; one sent after the other's answer.
        let mut ops = closing_history();
        ops.push(timed(CLOSE, 99, &[(101, res(Status::Ok, 1006, 2))]));
        ops.push(timed(CLOSE, 300, &[(310, res(Status::Ok, 1006, 2))]));
        let f = check(&setup(), &ops, &closed_state(1006, 2, 2));
        assert_reported(&f, "closed (OK) again although sent at +300ms");
        assert_reported(&f, "CLOSE_AUCTION answered OK 2 times");
    }

    /// A history every rule accepts: outbid, in-doubt resolved by a replay,
    /// a lost answer whose retry replays, an unresolved bid that did win, a
    /// sell-out.
    fn good_history() -> Vec<Op> {
        vec![
            bid(1000, 1, 1, &[res(Status::Ok, 1000, 1)]),
            bid(1003, 2, 2, &[res(Status::Outbid, 1000, 1)]),
            bid(
                1006,
                3,
                3,
                &[Answer::Error(IN_DOUBT), replayed(Status::Ok, 1006, 3)],
            ),
            bid(
                1009,
                4,
                4,
                &[
                    Answer::Lost,
                    Answer::Error(UNAVAILABLE),
                    replayed(Status::Outbid, 1006, 3),
                ],
            ),
            // Sent, connection lost, never resolved: it may be the high bid.
            bid(1012, 5, 5, &[Answer::Timeout]),
            bid(1015, 6, 6, &[Answer::Error(BUSY)]),
            buy(3, 1, 10, &[res(Status::Ok, 7, 3)]),
            buy(2, 2, 11, &[Answer::Dropped, replayed(Status::Ok, 5, 2)]),
            buy(5, 3, 12, &[Answer::Error(IN_DOUBT), res(Status::Ok, 0, 5)]),
            buy(1, 4, 13, &[res(Status::SoldOut, 0, 0)]),
        ]
    }

    #[test]
    fn a_consistent_history_passes() {
        let f = check(&setup(), &good_history(), &state(1012, 5, 3, 10));
        assert!(f.violations.is_empty(), "{:#?}", f.violations);
        assert!(f.anomalies.is_empty(), "{:#?}", f.anomalies);
        // The unresolved bid did not execute: also fine.
        let f = check(&setup(), &good_history(), &state(1006, 3, 2, 10));
        assert!(f.violations.is_empty(), "{:#?}", f.violations);
    }

    #[test]
    fn a_lost_acknowledged_bid_is_a_violation() {
        let f = check(&setup(), &good_history(), &state(1000, 1, 1, 10));
        assert_reported(&f, "acknowledged bid lost");
    }

    #[test]
    fn a_forgotten_key_is_a_violation() {
        // The first attempt executed (it is the high bid), its answer was
        // lost, and the retry was evaluated afresh: OUTBID by itself.
        let mut ops = good_history();
        ops[4] = bid(1012, 5, 5, &[Answer::Timeout, res(Status::Outbid, 1012, 5)]);
        let f = check(&setup(), &ops, &state(1012, 5, 3, 10));
        assert_reported(
            &f,
            "the high bid 1012 is a bid that was answered as rejected",
        );
    }

    #[test]
    fn an_accepted_key_answering_otherwise_is_a_violation() {
        let mut ops = good_history();
        ops[0].push(500, res(Status::Outbid, 1006, 3));
        let f = check(&setup(), &ops, &state(1012, 5, 3, 10));
        assert_eq!(f.violations.len(), 1, "{:#?}", f.violations);
        assert!(f.violations[0].contains("accepted key answered RESULT OUTBID"));
        // A replay without the flag is also wrong.
        let mut ops = good_history();
        ops[0].push(500, res(Status::Ok, 1000, 1));
        assert_eq!(
            check(&setup(), &ops, &state(1012, 5, 3, 10))
                .violations
                .len(),
            1
        );
    }

    #[test]
    fn unavailable_then_replayed_is_a_violation() {
        // "Not executed", yet the retry replays: it had executed.
        let mut ops = good_history();
        ops[5] = bid(
            1015,
            6,
            6,
            &[Answer::Error(UNAVAILABLE), replayed(Status::Ok, 1015, 6)],
        );
        let f = check(&setup(), &ops, &state(1015, 6, 4, 10));
        assert_reported(&f, "refused as not executed had executed");
    }

    #[test]
    fn unresolved_in_doubt_is_a_violation() {
        let mut ops = good_history();
        ops.push(bid(1018, 7, 7, &[Answer::Error(IN_DOUBT), Answer::Timeout]));
        let f = check(&setup(), &ops, &state(1012, 5, 3, 10));
        assert_reported(&f, "never resolved");
    }

    #[test]
    fn oversold_and_double_sold_are_violations() {
        // sold above what OK + unknown orders account for.
        let mut ops = good_history();
        ops[9] = buy(1, 4, 13, &[res(Status::SoldOut, 0, 0)]);
        ops.retain(|o| !matches!(o.kind, OpKind::Buy { order_id: 12, .. }));
        let f = check(&setup(), &ops, &state(1012, 5, 3, 10));
        assert_reported(&f, "sold 10 > 5 units answered OK");
        // sold below what was answered OK.
        let f = check(&setup(), &good_history(), &state(1012, 5, 3, 8));
        assert_reported(&f, "acknowledged orders lost");
    }

    #[test]
    fn a_wrong_bid_count_and_a_changing_replay_are_violations() {
        let f = check(&setup(), &good_history(), &state(1012, 5, 7, 10));
        assert_reported(&f, "bid_count 7");
        let mut st = state(1012, 5, 3, 10);
        st.after_replays
            .as_mut()
            .unwrap()
            .sales
            .insert(7, Some(SaleSnap { stock: 10, sold: 9 }));
        let f = check(&setup(), &good_history(), &st);
        assert_reported(&f, "final replays changed");
    }

    #[test]
    fn in_doubt_evaluated_afresh_by_the_same_process_is_a_violation() {
        let mut su = setup();
        su.in_doubt_means_applied = true;
        let mut forgotten = bid(1010, 7, 7, &[]);
        forgotten.push_gen(10, Answer::Error(IN_DOUBT), 4, 4);
        forgotten.push_gen(20, res(Status::Outbid, 1012, 5), 4, 4);
        // A restart in between (generation moved): lost with the process.
        let mut restarted = bid(1011, 8, 8, &[]);
        restarted.push_gen(10, Answer::Error(IN_DOUBT), 4, 4);
        restarted.push_gen(30, res(Status::Outbid, 1012, 5), 6, 6);
        let mut ops = good_history();
        ops.push(forgotten);
        ops.push(restarted);
        let f = check(&su, &ops, &state(1012, 5, 3, 10));
        assert_eq!(f.violations.len(), 1, "{:#?}", f.violations);
        assert!(f.violations[0].contains("bid_id=7"), "{}", f.violations[0]);
        assert!(f.violations[0].contains("the applied request was forgotten"));
        // Cross-node mode: an IN_DOUBT script may not have run.
        su.in_doubt_means_applied = false;
        assert!(check(&su, &ops, &state(1012, 5, 3, 10))
            .violations
            .is_empty());
    }

    #[test]
    fn real_time_order_is_checked() {
        // Bid 1003 sent at +100ms, after the OK of 1000 arrived at +50ms:
        // it cannot be OK (1003 < 1000 + 5), nor see a high bid below 1000.
        let mut a = bid(1000, 1, 1, &[]);
        a.sent_ms = 40;
        a.push(50, res(Status::Ok, 1000, 1));
        let mut b = bid(1003, 2, 2, &[]);
        b.sent_ms = 100;
        b.push(110, res(Status::Ok, 1003, 2));
        let mut c = bid(1001, 3, 3, &[]);
        c.sent_ms = 100;
        c.push(110, res(Status::Outbid, 990, 9));
        // Sent before the OK arrived: concurrent, anything goes.
        let mut d = bid(1002, 4, 4, &[]);
        d.sent_ms = 45;
        d.push(60, res(Status::Ok, 1002, 4));
        let ops = [a, b, c, d];
        let mut f = Findings::default();
        let refs: Vec<&Op> = ops.iter().collect();
        realtime_auction(&setup().auctions[0], &refs, &mut f);
        assert_eq!(f.violations.len(), 2, "{:#?}", f.violations);
        assert!(f.violations[0].contains("RESULT OK value=1003"));
        assert!(f.violations[1].contains("RESULT OUTBID value=990"));

        // An order sent after an OK that left sold = 6 must leave >= 6 + 2.
        let mut a = buy(3, 1, 10, &[]);
        a.sent_ms = 10;
        a.push(20, res(Status::Ok, 4, 3));
        let mut b = buy(2, 2, 11, &[]);
        b.sent_ms = 30;
        b.push(40, res(Status::Ok, 5, 2));
        let mut c = buy(1, 3, 12, &[]);
        c.sent_ms = 30;
        c.push(40, res(Status::Ok, 2, 1));
        let ops = [a, b, c];
        let refs: Vec<&Op> = ops.iter().collect();
        let mut f = Findings::default();
        realtime_sale(&setup().sales[0], &refs, &mut f);
        assert_eq!(f.violations.len(), 1, "{:#?}", f.violations);
        assert!(f.violations[0].contains("sold = 5"));
    }

    #[test]
    fn a_conflict_error_and_a_wrong_ok_are_violations() {
        let mut ops = good_history();
        ops.push(bid(
            1021,
            8,
            8,
            &[Answer::Error(ErrorCode::IdempotencyConflict as u16)],
        ));
        ops.push(buy(1, 9, 14, &[res(Status::Ok, 9, 7)]));
        let f = check(&setup(), &ops, &state(1012, 5, 3, 10));
        assert_reported(&f, "IDEMPOTENCY_CONFLICT");
        assert_reported(&f, "RESULT OK value=9 aux=7 is wrong");
    }
}
