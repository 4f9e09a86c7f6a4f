//! `kvmem`: the command line of the kvmem library.
#![deny(missing_docs)]

mod bench;
mod demo;
mod error;
mod info;
mod metrics;
mod replay;
mod replay_plot;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Memory for LLM-inference KV caches: GPU, pinned host, host, disk and remote tiers.
#[derive(Debug, Parser)]
#[command(name = "kvmem", version, about, long_about = None)]
struct Cli {
    /// Log filter (e.g. `info`, `kvmem=debug`); also read from `RUST_LOG`.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// What this machine offers: version, CUDA driver, NIXL runtime and plugins.
    Info(info::InfoArgs),
    /// A host-only walk through the memory model: storages, views, arena, disk round trip.
    Demo(demo::DemoArgs),
    /// Sweep the transfer paths over block sizes against same-run references (and fio).
    Bench(Box<bench::BenchArgs>),
    /// Replay a request trace (Mooncake format) through the block cache; report hit rates.
    Replay(Box<replay::ReplayArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Info(args) => info::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Replay(args) => replay::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvmem: error: {e}");
            if let Some(hint) = e.hint() {
                eprintln!("kvmem: hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}
