-- Gavel's PostgreSQL schema. gavel-server applies it at every start (under an
-- advisory lock, so several nodes may start at once); every statement is
-- idempotent. The SQLite equivalent is server/src/store/sqlite_schema.sql.
--
-- Wire values are u64; BIGINT is i64. They are stored bit-for-bit, so an
-- amount at or above 2^63 reads back exactly but looks negative to SQL.
-- The version guards below compare counts (bid_count, sold, held), which are
-- far below 2^63, so the guards are exact.
--
-- The logs carry no foreign keys: a per-row key lookup doubled the cost of a
-- batch insert here, and the writer already commits an OPEN in the same or
-- an earlier transaction than anything that refers to it.

CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO schema_version (version) VALUES (1) ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS auctions (
    id            BIGINT PRIMARY KEY,
    reserve       BIGINT NOT NULL,
    min_increment BIGINT NOT NULL,
    ends_at_ms    BIGINT NOT NULL,
    high_bid      BIGINT NOT NULL DEFAULT 0,
    high_bidder   BIGINT NOT NULL DEFAULT 0,
    -- The version of the row: state updates only apply when it rises, so
    -- writes from several batches (or nodes) commute.
    bid_count     BIGINT NOT NULL DEFAULT 0 CHECK (bid_count >= 0),
    closed        BOOLEAN NOT NULL DEFAULT false
);

-- The bid log. (auction_id, bid_id) is the idempotency key, so a bid is
-- recorded at most once; (auction_id, seq) cannot repeat either, so two
-- different bids can never both be "the n-th accepted bid" of an auction.
CREATE TABLE IF NOT EXISTS bids (
    auction_id BIGINT NOT NULL,
    bid_id     BIGINT NOT NULL,
    bidder_id  BIGINT NOT NULL,
    amount     BIGINT NOT NULL,
    seq        BIGINT NOT NULL,
    at_ms      BIGINT NOT NULL,
    PRIMARY KEY (auction_id, bid_id),
    UNIQUE (auction_id, seq)
);
CREATE INDEX IF NOT EXISTS bids_at_ms ON bids (at_ms);

CREATE TABLE IF NOT EXISTS sales (
    id              BIGINT PRIMARY KEY,
    stock           BIGINT NOT NULL,
    sold            BIGINT NOT NULL DEFAULT 0,
    per_buyer_limit BIGINT NOT NULL CHECK (per_buyer_limit BETWEEN 0 AND 4294967295),
    starts_at_ms    BIGINT NOT NULL,
    ends_at_ms      BIGINT NOT NULL,
    -- No oversell, even if a server were wrong (stock < 0 is a u64 >= 2^63).
    CONSTRAINT sales_not_oversold CHECK (sold >= 0 AND (stock < 0 OR sold <= stock))
);

CREATE TABLE IF NOT EXISTS holdings (
    sku_id   BIGINT NOT NULL,
    buyer_id BIGINT NOT NULL,
    held     BIGINT NOT NULL CHECK (held > 0),
    PRIMARY KEY (sku_id, buyer_id)
);

-- The order log. (sku_id, order_id) is the idempotency key: an order can be
-- booked once, and (sku_id, sold_after) cannot repeat, so two orders can
-- never be booked against the same units.
CREATE TABLE IF NOT EXISTS orders (
    sku_id     BIGINT NOT NULL,
    order_id   BIGINT NOT NULL,
    buyer_id   BIGINT NOT NULL,
    quantity   BIGINT NOT NULL CHECK (quantity > 0),
    sold_after BIGINT NOT NULL,
    held_after BIGINT NOT NULL,
    at_ms      BIGINT NOT NULL,
    PRIMARY KEY (sku_id, order_id),
    UNIQUE (sku_id, sold_after)
);
CREATE INDEX IF NOT EXISTS orders_at_ms ON orders (at_ms);

-- Idempotency keys and the outcome a retry replays, read at start for the
-- keys inside the window. Accepted requests are the ones whose replay
-- matters (a rejected one re-evaluated later is rejected again, or finds the
-- auction closed), so the keys are the logs' primary keys.
CREATE OR REPLACE VIEW idempotency_keys AS
    SELECT 'bid' AS kind, auction_id AS scope, bid_id AS key, bidder_id AS who,
           amount AS field, amount AS result_value, bidder_id AS result_aux, at_ms
      FROM bids
    UNION ALL
    SELECT 'order', o.sku_id, o.order_id, o.buyer_id, o.quantity,
           s.stock - o.sold_after, o.held_after, o.at_ms
      FROM orders o JOIN sales s ON s.id = o.sku_id;

-- The journal: the durable commit of every writer round, one row per commit
-- (the mutations of that commit in Gavel's compact binary record format,
-- checksummed). Append-only under a rising sequence, no secondary index.
-- Rows leave once the materializer has applied them to the tables above.
CREATE TABLE IF NOT EXISTS journal (
    seq    BIGINT PRIMARY KEY,
    record BYTEA NOT NULL
);

-- The materializer's progress: the last journal row applied to the tables,
-- written in the same transaction as what it applied.
CREATE TABLE IF NOT EXISTS materializer (
    id          INT PRIMARY KEY CHECK (id = 1),
    applied_seq BIGINT NOT NULL
);
INSERT INTO materializer (id, applied_seq) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;

-- Journal records the tables refused (a constraint: a bug, never expected),
-- set aside by the materializer with the error, for an operator.
CREATE TABLE IF NOT EXISTS quarantine (
    seq    BIGINT PRIMARY KEY,
    record BYTEA NOT NULL,
    error  TEXT NOT NULL
);
