//! `flashsale`: the HTTP service (`serve`) and the operator's tools.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flashsale::config::{RedisArgs, ServeArgs, secret};
use flashsale::redis::Redis;
use flashsale::sale::Shop;
use flashsale::web::Application;

/// mimalloc: glibc's malloc/free were 12–16 % of the server's CPU under
/// load (loadtest/README.md, "Where the time goes").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "flashsale",
    version,
    about = "Flash-sale backend on a Redis Sentinel group"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service.
    Serve(Box<ServeArgs>),
    /// Mint shopper tokens (development and load tests).
    Token(TokenArgs),
    /// Write every page as static HTML for nginx (index.html, p/<sku>.html).
    Render(RenderArgs),
    /// Print the audit of a sale (or of every sale) as JSON.
    Audit(AuditArgs),
    /// List or replay the dead letters of a sale's order stream.
    DeadLetters(flashsale::worker::DeadLetterArgs),
}

#[derive(clap::Args)]
struct TokenArgs {
    /// One user id.
    #[arg(long, conflicts_with = "users")]
    user: Option<String>,
    /// Mint this many tokens for users PREFIX0..PREFIX{N-1}, one per line.
    #[arg(long)]
    users: Option<u32>,
    /// User id prefix for --users.
    #[arg(long, default_value = "u")]
    prefix: String,
    /// Write the tokens to this file instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 86_400)]
    ttl: u64,
    /// HS256 key of shopper tokens.
    #[arg(long, env = "FLASHSALE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// File holding the HS256 key.
    #[arg(long, env = "FLASHSALE_JWT_SECRET_FILE")]
    jwt_secret_file: Option<String>,
}

#[derive(clap::Args)]
struct RenderArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Directory of the page assets (fingerprinted into the pages).
    #[arg(long, env = "FLASHSALE_STATIC_DIR", default_value = "static")]
    static_dir: String,
}

#[derive(clap::Args)]
struct AuditArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// The sale; every sale when absent.
    #[arg(long)]
    sku: Option<String>,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("flashsale: {msg}");
    ExitCode::FAILURE
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: finishing in-flight requests");
}

#[tokio::main]
async fn main() -> ExitCode {
    flashsale::telemetry::init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let settings = match args.settings() {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            let app = match Application::build(settings).await {
                Ok(a) => a,
                Err(e) => return fail(e),
            };
            match app.run_until(shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::Token(t) => {
            let key = match secret(
                "FLASHSALE_JWT_SECRET",
                t.jwt_secret,
                "FLASHSALE_JWT_SECRET_FILE",
                t.jwt_secret_file,
            ) {
                Ok(Some(k)) => k,
                Ok(None) => return fail("FLASHSALE_JWT_SECRET: required to mint tokens"),
                Err(e) => return fail(e),
            };
            let users: Vec<String> = match (t.user, t.users) {
                (Some(u), _) => vec![u],
                (None, Some(n)) => (0..n).map(|i| format!("{}{i}", t.prefix)).collect(),
                (None, None) => return fail("give --user ID or --users N"),
            };
            let mut out = String::with_capacity(users.len() * 200);
            for u in &users {
                match flashsale::web::auth::mint(&key, u, t.ttl) {
                    Ok(tok) => {
                        out.push_str(&tok);
                        out.push('\n');
                    }
                    Err(e) => return fail(format!("{u}: {e}")),
                }
            }
            match t.out {
                Some(path) => match std::fs::write(&path, out) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(format!("{}: {e}", path.display())),
                },
                None => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
            }
        }
        Command::Render(r) => {
            let redis = match Redis::from_args(&r.redis).await {
                Ok(x) => x,
                Err(e) => return fail(e),
            };
            let shop = Shop::new(redis, std::time::Duration::ZERO);
            let sales = match shop.catalog.load_all(false).await {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            match flashsale::web::pages::render_all(&sales, &r.static_dir, &r.out).await {
                Ok(n) => {
                    println!("wrote {n} pages to {}", r.out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Audit(a) => {
            let redis = match Redis::from_args(&a.redis).await {
                Ok(x) => x,
                Err(e) => return fail(e),
            };
            let shop = Shop::new(redis, std::time::Duration::ZERO);
            let skus: Vec<String> = match a.sku {
                Some(s) => vec![s],
                None => match shop.catalog.load_all(true).await {
                    Ok(all) => all.into_iter().map(|s| s.sku).collect(),
                    Err(e) => return fail(e),
                },
            };
            let mut ok = true;
            for sku in skus {
                match shop.catalog.audit(&sku).await {
                    Ok(audit) => {
                        ok &= audit.consistent;
                        println!("{}", serde_json::json!({ "sku": sku, "audit": audit }));
                    }
                    Err(e) => return fail(format!("{sku}: {e}")),
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Command::DeadLetters(d) => flashsale::worker::dead_letters_command(d).await,
    }
}
