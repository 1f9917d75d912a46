//! `gavel-cli`: send one request to a gavel-server and print the reply.
//! See `gavel-cli --help`; the logic lives in `client_bench::cli`.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(client_bench::cli::main(std::env::args_os()))
}
