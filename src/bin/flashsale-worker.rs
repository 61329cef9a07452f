//! `flashsale-worker`: consumes the order streams (see `flashsale::worker`).

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    flashsale::telemetry::init_tracing();
    let args = flashsale::worker::WorkerArgs::parse();
    flashsale::worker::main(args).await
}
