//! `flashsale-worker`: consumes the order streams (see `flashsale::worker`).

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: glibc's malloc/free were 12–16 % of the server's CPU under
/// load (loadtest/README.md, "Where the time goes").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    flashsale::telemetry::init_tracing();
    let args = flashsale::worker::WorkerArgs::parse();
    flashsale::worker::main(args).await
}
