//! Command line of `gavel-cli`.

use clap::{Parser, Subcommand};

/// Send one request to a gavel-server and print its reply.
///
/// Replies are printed readably (`RESULT OK value=1500 aux=7`, AUCTION and SALE
/// as key=value lines) or, with --json, as one JSON object per line.
///
/// Exit status: 0 when the server answered with RESULT (whatever its status,
/// NOT_FOUND included), AUCTION, SALE, WELCOME or PONG; 2 when it answered
/// ERROR (code and message go to stderr); 1 for usage or connection problems.
///
/// `gavel-cli decode` needs no server: it decodes frames from a hex dump or
/// a packet capture (exit 0 when every byte decoded, 1 otherwise).
#[derive(Debug, Clone, Parser)]
#[command(name = "gavel-cli", version, about, long_about)]
pub struct Cli {
    /// Server address (host:port).
    #[arg(
        long,
        global = true,
        env = "GAVEL_CLI_ADDR",
        default_value = "127.0.0.1:7070"
    )]
    pub addr: String,

    /// Print replies as JSON objects, one per line.
    #[arg(long, global = true)]
    pub json: bool,

    /// Send HELLO with this token before the request.
    #[arg(
        long,
        global = true,
        env = "GAVEL_CLI_AUTH_TOKEN",
        hide_env_values = true
    )]
    pub auth_token: Option<String>,

    /// How long to wait for the connection and for each reply, in ms
    /// (`subscribe` waits for pushes without limit).
    #[arg(long, global = true, env = "GAVEL_CLI_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,

    /// Speak TLS to the server (a gavel-server started with --tls-cert).
    #[arg(long, global = true, env = "GAVEL_CLI_TLS")]
    pub tls: bool,

    /// PEM file of the CA certificate(s) to trust for --tls (implies --tls).
    #[arg(long, global = true, env = "GAVEL_CLI_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Name to check the server's certificate against (DNS name or IP
    /// address); default: the host part of --addr.
    #[arg(long, global = true, env = "GAVEL_CLI_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// PING: the server echoes the payload in a PONG.
    Ping {
        /// Bytes to send (UTF-8 text).
        #[arg(long, default_value = "")]
        payload: String,
    },
    /// OPEN_AUCTION.
    OpenAuction {
        #[arg(long)]
        auction: u64,
        /// Lowest acceptable bid, in minor units.
        #[arg(long, default_value_t = 0)]
        reserve: u64,
        /// A bid must beat the high bid by at least this much (0 counts as 1).
        #[arg(long, default_value_t = 1)]
        min_increment: u64,
        /// End time, ms since the Unix epoch (0 = no scheduled end).
        #[arg(long, default_value_t = 0)]
        ends_at_ms: u64,
    },
    /// BID on an auction.
    Bid {
        #[arg(long)]
        auction: u64,
        #[arg(long)]
        bidder: u64,
        #[arg(long)]
        amount: u64,
        /// Idempotency key, non-zero (default: random, printed on stderr).
        #[arg(long)]
        bid_id: Option<u64>,
    },
    /// CLOSE_AUCTION: the reply carries the winning bid and winner.
    CloseAuction {
        #[arg(long)]
        auction: u64,
    },
    /// GET_AUCTION.
    GetAuction {
        #[arg(long)]
        auction: u64,
    },
    /// OPEN_SALE.
    OpenSale {
        #[arg(long)]
        sku: u64,
        #[arg(long)]
        stock: u64,
        /// Most units one buyer may hold (0 = no limit).
        #[arg(long, default_value_t = 0)]
        per_buyer_limit: u32,
        /// Start time, ms since the Unix epoch (0 = open now).
        #[arg(long, default_value_t = 0)]
        starts_at_ms: u64,
        /// End time, ms since the Unix epoch (0 = no scheduled end).
        #[arg(long, default_value_t = 0)]
        ends_at_ms: u64,
    },
    /// BUY from a sale.
    Buy {
        #[arg(long)]
        sku: u64,
        #[arg(long)]
        buyer: u64,
        #[arg(long, default_value_t = 1)]
        quantity: u32,
        /// Idempotency key, non-zero (default: random, printed on stderr).
        #[arg(long)]
        order_id: Option<u64>,
    },
    /// GET_SALE.
    GetSale {
        #[arg(long)]
        sku: u64,
    },
    /// SUBSCRIBE to an auction and print its pushes as they arrive.
    Subscribe {
        #[arg(long)]
        auction: u64,
        /// Stop after this many pushes (default: until the server closes).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Decode frames from hex bytes or a packet capture (no server needed)
    ///
    /// Prints one frame per line (`BID request_id=1 auction_id=42 ...`), or
    /// one JSON object per line with --json. Problems (truncated frames,
    /// unknown types, malformed payloads, holes in a capture) are reported on
    /// stderr with their offset, and the exit status is then 1.
    ///
    /// Examples:
    ///   gavel-cli decode 11 00 00 20 01 02 03 04 00 00 00 00 00 00 00 2a ...
    ///   gavel-cli decode --hex-file dump.txt
    ///   xxd -p frames.bin | gavel-cli decode
    ///   gavel-cli decode --pcap capture.pcapng --port 7070
    #[command(verbatim_doc_comment)]
    Decode {
        /// Hex bytes; several arguments are joined. Whitespace, `:`, `,`,
        /// `-` and `0x` prefixes are ignored. Without HEX, --hex-file or
        /// --pcap, hex is read from standard input.
        #[arg(value_name = "HEX", conflicts_with_all = ["hex_file", "pcap"])]
        hex: Vec<String>,
        /// Read the hex dump from FILE (`-` for standard input).
        #[arg(long, value_name = "FILE", conflicts_with = "pcap")]
        hex_file: Option<std::path::PathBuf>,
        /// Decode the TCP payload of a capture (pcap or pcapng). Each
        /// connection's two directions are reassembled in sequence order:
        /// `→` lines are requests (client to server), `←` lines replies and
        /// pushes; each line starts with the packet number that completed it.
        #[arg(long, value_name = "FILE")]
        pcap: Option<std::path::PathBuf>,
        /// With --pcap: the Gavel server's TCP port. Only connections using
        /// it are decoded and that side is the server. Default: every TCP
        /// connection, the server being the side that received the SYN (or
        /// port 7070, or the side whose first byte is a reply type).
        #[arg(long, requires = "pcap")]
        port: Option<u16>,
        /// Which decoder to use for hex input: by type code (requests are
        /// below 0x80), or force the request or the reply decoder.
        #[arg(long = "as", value_enum, default_value_t = DecodeAs::Auto, conflicts_with = "pcap")]
        decode_as: DecodeAs,
    },
}

/// `gavel-cli decode --as`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DecodeAs {
    /// Requests for types below 0x80, replies and pushes from 0x80 up.
    Auto,
    /// Client → server messages only.
    Request,
    /// Server → client messages (replies and pushes) only.
    Reply,
}
