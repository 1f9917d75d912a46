//! `gavel-server`: parses the configuration, sets up logging and runs the
//! server (see `gavel_server::app`).

use clap::Parser;
use tracing_subscriber::EnvFilter;

use gavel_server::config::{Config, LogFormat};

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_logging(config.log_format);
    gavel_server::app::run(config)
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
