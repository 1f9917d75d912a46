//! `gavel-cli`: one request per invocation against a gavel-server.
//!
//! [`args`] defines the command line, [`format`] prints replies. [`main`]
//! maps outcomes to exit codes: 0 for any non-ERROR reply, 2 when the server
//! answered ERROR, 1 for usage and connection problems. Subcommands that need
//! no server can be added to [`args::Command`] and handled before connecting.

pub mod args;
pub mod decode;
pub mod format;
pub mod pcap;

use std::ffi::OsString;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gavel_protocol::{
    BidRequest, BuyRequest, Client, ClientError, Frame, OpenAuctionRequest, OpenSaleRequest, Push,
    Request, Response, Status, PROTOCOL_VERSION,
};

pub use args::{Cli, Command};

/// Exit status: a reply other than ERROR.
pub const EXIT_OK: u8 = 0;
/// Exit status: usage or connection problem.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status: the server answered ERROR.
pub const EXIT_SERVER_ERROR: u8 = 2;

/// Parses `args` (program name first), runs, and returns the exit status.
pub fn main<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from_args(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                EXIT_FAILURE
            } else {
                EXIT_OK
            };
        }
    };
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gavel-cli: {e}");
            EXIT_FAILURE
        }
    }
}

impl Cli {
    fn try_parse_from_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        <Cli as clap::Parser>::try_parse_from(args)
    }
}

fn connect(cli: &Cli) -> Result<Client, String> {
    let timeout = Duration::from_millis(cli.timeout_ms);
    let addr = crate::driver::resolve(&cli.addr).map_err(|e| format!("{e:#}"))?;
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let client = if cli.tls || cli.tls_ca.is_some() {
        let Some(ca) = &cli.tls_ca else {
            return Err(
                "--tls needs --tls-ca PEM (the CA that signed the server's certificate)".into(),
            );
        };
        let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
        let config = gavel_protocol::tls::client_config(&pem)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
        let name = match &cli.tls_server_name {
            Some(n) => n.clone(),
            None => crate::config::host_of(&cli.addr),
        };
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        Client::from_stream_tls(stream, &name, config)
            .map_err(|e| format!("TLS handshake with {addr} (as {name:?}) failed: {e}"))?
    } else {
        Client::from_stream(stream).map_err(|e| e.to_string())?
    };
    client
        .set_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    Ok(client)
}

fn io_err(e: ClientError) -> String {
    match e {
        ClientError::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            "timed out waiting for the server's reply".to_string()
        }
        other => other.to_string(),
    }
}

/// A fresh non-zero idempotency key, announced on stderr so it can be reused.
fn auto_key(flag: &str) -> u64 {
    let k = rand::random::<u64>() >> 1 | 1;
    eprintln!("gavel-cli: using --{flag} {k}");
    k
}

/// Prints a reply and returns the exit status it maps to.
fn print_reply(cli: &Cli, f: &Frame<Response>, extra: Option<(&str, u64)>) -> u8 {
    let mut out = std::io::stdout().lock();
    if cli.json {
        let mut v = format::response_json(f);
        if let (Some((k, n)), Some(obj)) = (extra, v.as_object_mut()) {
            obj.insert(k.to_string(), n.into());
        }
        let _ = writeln!(out, "{v}");
    }
    if let Response::Error { code, message } = &f.body {
        eprintln!("ERROR {}: {message}", code.name());
        if let Some(hint) = format::error_hint(*code) {
            eprintln!("gavel-cli: {hint}");
        }
        return EXIT_SERVER_ERROR;
    }
    if !cli.json {
        let mut line = format::response_text(f);
        if let Some((k, n)) = extra {
            line.push_str(&format!(" {k}={n}"));
        }
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
    EXIT_OK
}

fn print_push(cli: &Cli, p: &Push) {
    let mut out = std::io::stdout().lock();
    if cli.json {
        let _ = writeln!(out, "{}", format::push_json(p));
    } else {
        let _ = writeln!(out, "{}", format::push_text(p));
    }
    let _ = out.flush();
}

/// Runs the parsed command; `Err` is a connection-level problem (exit 1).
pub fn run(cli: &Cli) -> Result<u8, String> {
    if let Command::Decode {
        hex,
        hex_file,
        pcap,
        port,
        decode_as,
    } = &cli.command
    {
        let input = match (pcap, hex_file) {
            (Some(p), _) => decode::Input::Pcap(p, *port),
            (None, Some(f)) => decode::Input::HexFile(f),
            (None, None) if !hex.is_empty() => decode::Input::Hex(hex.join(" ")),
            (None, None) => decode::Input::Stdin,
        };
        return Ok(decode::run(input, *decode_as, cli.json));
    }
    let request = match &cli.command {
        Command::Ping { payload } => Request::Ping(Bytes::from(payload.clone().into_bytes())),
        &Command::OpenAuction {
            auction,
            reserve,
            min_increment,
            ends_at_ms,
        } => Request::OpenAuction(OpenAuctionRequest {
            auction_id: auction,
            reserve,
            min_increment,
            ends_at_ms,
        }),
        &Command::Bid {
            auction,
            bidder,
            amount,
            bid_id,
        } => Request::Bid(BidRequest {
            auction_id: auction,
            bidder_id: bidder,
            amount,
            bid_id: bid_id.unwrap_or_else(|| auto_key("bid-id")),
        }),
        &Command::CloseAuction { auction } => Request::CloseAuction {
            auction_id: auction,
        },
        &Command::GetAuction { auction } => Request::GetAuction {
            auction_id: auction,
        },
        &Command::OpenSale {
            sku,
            stock,
            per_buyer_limit,
            starts_at_ms,
            ends_at_ms,
        } => Request::OpenSale(OpenSaleRequest {
            sku_id: sku,
            stock,
            per_buyer_limit,
            starts_at_ms,
            ends_at_ms,
        }),
        &Command::Buy {
            sku,
            buyer,
            quantity,
            order_id,
        } => Request::Buy(BuyRequest {
            sku_id: sku,
            buyer_id: buyer,
            quantity,
            order_id: order_id.unwrap_or_else(|| auto_key("order-id")),
        }),
        &Command::GetSale { sku } => Request::GetSale { sku_id: sku },
        &Command::Subscribe { auction, .. } => Request::Subscribe {
            auction_id: auction,
        },
        Command::Decode { .. } => unreachable!("handled above"),
    };

    let mut client = connect(cli)?;
    if let Some(token) = &cli.auth_token {
        if token.len() > u8::MAX as usize {
            return Err("--auth-token is longer than 255 bytes".into());
        }
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            token: Bytes::from(token.clone().into_bytes()),
        };
        let f = client.call(&hello).map_err(io_err)?;
        match &f.body {
            Response::Welcome { .. } => {}
            Response::Error { .. } => return Ok(print_reply(cli, &f, None)),
            other => return Err(format!("unexpected reply to HELLO: {other:?}")),
        }
    }

    let sent_at = Instant::now();
    let reply = client.call(&request).map_err(io_err)?;
    let rtt = matches!(cli.command, Command::Ping { .. })
        .then(|| ("rtt_us", sent_at.elapsed().as_micros() as u64));
    let code = print_reply(cli, &reply, rtt);

    if let Command::Subscribe { count, .. } = cli.command {
        let subscribed = matches!(&reply.body, Response::Result(r) if r.status == Status::Ok);
        if code != EXIT_OK || !subscribed || count == Some(0) {
            return Ok(code);
        }
        client.set_timeout(None).map_err(|e| e.to_string())?;
        let mut seen = 0u64;
        while count.is_none_or(|n| seen < n) {
            match client.next_push() {
                Ok(p) => {
                    print_push(cli, &p);
                    seen += 1;
                }
                Err(ClientError::Closed) if count.is_none() => break,
                Err(ClientError::Closed) => {
                    return Err(format!(
                        "server closed the connection after {seen} of {} pushes",
                        count.unwrap_or(0)
                    ))
                }
                Err(e) => return Err(io_err(e)),
            }
        }
    }
    let _ = client.shutdown_write();
    Ok(code)
}
