//! `pg_scratch` — the test kit's throw-away PostgreSQL for the parts of the
//! load tests written in Python (`lt.py --ledger`): starts one (Debian's
//! binaries, a temp dir, a free loopback port; see
//! `crates/testkit/src/postgres.rs`), writes its URL (which holds its
//! password) to `--url-file` (mode 0600) once it accepts connections, and
//! runs until SIGTERM or SIGINT, when it stops the server and removes its
//! data. The URL is never printed.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use flashsale_testkit::postgres::Postgres;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    name = "pg_scratch",
    about = "A throw-away PostgreSQL until SIGTERM; its URL in --url-file"
)]
struct Args {
    /// Where to write `postgres://…` (created 0600; replaced).
    #[arg(long)]
    url_file: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("pg_scratch: cannot handle signals");
        return ExitCode::FAILURE;
    };
    let pg = Postgres::init().await;
    let tmp = args.url_file.with_extension("tmp");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| writeln!(f, "{}", pg.url()))
        .and_then(|()| std::fs::rename(&tmp, &args.url_file));
    if let Err(e) = written {
        eprintln!("pg_scratch: {}: {e}", args.url_file.display());
        return ExitCode::FAILURE;
    }
    eprintln!(
        "pg_scratch: PostgreSQL on 127.0.0.1:{} (pid {}), data in {}; SIGTERM stops it",
        pg.port(),
        pg.pid().unwrap_or(0),
        pg.dir().display()
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    drop(pg);
    let _ = std::fs::remove_file(&args.url_file);
    ExitCode::SUCCESS
}
