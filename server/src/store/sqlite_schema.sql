-- Gavel's SQLite schema: the embedded equivalent of schema.sql (PostgreSQL).
-- Applied at every start; every statement is idempotent.
-- u64 values are stored bit-for-bit in INTEGER (i64): see store/mod.rs.

CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
INSERT OR IGNORE INTO schema_version (version) VALUES (1);

CREATE TABLE IF NOT EXISTS auctions (
    id            INTEGER PRIMARY KEY,
    reserve       INTEGER NOT NULL,
    min_increment INTEGER NOT NULL,
    ends_at_ms    INTEGER NOT NULL,
    high_bid      INTEGER NOT NULL DEFAULT 0,
    high_bidder   INTEGER NOT NULL DEFAULT 0,
    bid_count     INTEGER NOT NULL DEFAULT 0 CHECK (bid_count >= 0),
    closed        INTEGER NOT NULL DEFAULT 0 CHECK (closed IN (0, 1))
) WITHOUT ROWID;

-- The bid log. (auction_id, bid_id) is the idempotency key: a bid can be
-- recorded once; (auction_id, seq) orders the log and cannot repeat either.
CREATE TABLE IF NOT EXISTS bids (
    auction_id INTEGER NOT NULL,
    bid_id     INTEGER NOT NULL,
    bidder_id  INTEGER NOT NULL,
    amount     INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    at_ms      INTEGER NOT NULL,
    PRIMARY KEY (auction_id, bid_id),
    UNIQUE (auction_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS bids_at_ms ON bids (at_ms);

CREATE TABLE IF NOT EXISTS sales (
    id              INTEGER PRIMARY KEY,
    stock           INTEGER NOT NULL,
    sold            INTEGER NOT NULL DEFAULT 0,
    per_buyer_limit INTEGER NOT NULL,
    starts_at_ms    INTEGER NOT NULL,
    ends_at_ms      INTEGER NOT NULL,
    -- No oversell, even if the server were wrong (stock < 0 is a u64 >= 2^63).
    CHECK (sold >= 0 AND (stock < 0 OR sold <= stock))
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS holdings (
    sku_id   INTEGER NOT NULL,
    buyer_id INTEGER NOT NULL,
    held     INTEGER NOT NULL CHECK (held > 0),
    PRIMARY KEY (sku_id, buyer_id)
) WITHOUT ROWID;

-- The order log; (sku_id, order_id) is the idempotency key.
CREATE TABLE IF NOT EXISTS orders (
    sku_id     INTEGER NOT NULL,
    order_id   INTEGER NOT NULL,
    buyer_id   INTEGER NOT NULL,
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    sold_after INTEGER NOT NULL,
    held_after INTEGER NOT NULL,
    at_ms      INTEGER NOT NULL,
    PRIMARY KEY (sku_id, order_id),
    UNIQUE (sku_id, sold_after)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS orders_at_ms ON orders (at_ms);

-- The materializer's progress: the last journal record applied to the tables
-- above, written in the same transaction as what it applied.
CREATE TABLE IF NOT EXISTS materializer (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    applied_seq INTEGER NOT NULL
);
INSERT OR IGNORE INTO materializer (id, applied_seq) VALUES (1, 0);

-- Journal records the tables refused (a constraint: a bug, never expected),
-- set aside by the materializer with the error, for an operator.
CREATE TABLE IF NOT EXISTS quarantine (
    seq    INTEGER PRIMARY KEY,
    record BLOB NOT NULL,
    error  TEXT NOT NULL
);
