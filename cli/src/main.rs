//! The `slotline` command: local Redis servers, chunk get/put for debugging, and the
//! benchmark against a naive one-round-trip-per-key client. The work lives in the
//! `slotline_cli` library;
//! this file only sets up logging and turns the outcome into an exit code.

use slotline_cli as cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    init_logging();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            e.print();
            ExitCode::from(e.code)
        }
    }
}

/// `SLOTLINE_LOG` wins over `RUST_LOG`; logs go to stderr so that stdout stays
/// parseable (`get --out -`, `bench --json`).
fn init_logging() {
    let spec = std::env::var("SLOTLINE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "slotline=info".to_string());
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("warning: ignoring log filter {spec:?}: {e}");
        EnvFilter::new("slotline=info")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
