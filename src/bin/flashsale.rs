//! `flashsale`: the HTTP service (`serve`) and the operator's tools.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flashsale::cli::{EX_INCONSISTENT, Failure, exit, shutdown_signal};
use flashsale::config::{RedisArgs, ServeArgs, secret};
use flashsale::redis::Redis;
use flashsale::redis::functions::SaleUpdate;
use flashsale::sale::{Shop, dead_letters, now_ms};
use flashsale::web::Application;

/// mimalloc: glibc's malloc/free were 12–16 % of the server's CPU under
/// load (loadtest/README.md, "Where the time goes").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "flashsale",
    version,
    about = "Flash-sale backend on a Redis Sentinel group",
    after_help = "Exit codes: 0 success; 1 failure (Redis unreachable, I/O, an unknown sale, a change `sale` refuses); 2 usage error; 3 `audit` found an inconsistent sale; 78 configuration error."
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
    /// Print the audit of a sale (or of every sale) as JSON; exit 3 when one
    /// is inconsistent.
    Audit(AuditArgs),
    /// List or replay the dead letters of a sale's order stream.
    DeadLetters(DeadLetterArgs),
    /// Show sales with their state, change one before it opens, pause,
    /// resume or end one on every instance at once (through Redis, as the
    /// admin API does), or purge an ended one from Redis.
    Sale(SaleArgs),
    /// The order ledger in PostgreSQL (FLASHSALE_LEDGER_URL): apply its schema.
    Ledger(LedgerCommandArgs),
}

#[derive(clap::Args)]
#[command(
    after_help = "Output: one JSON object per sale and line, as GET /admin/sales/{sku} shows it (`state`: scheduled, open, paused, sold_out, ended).\nExit codes: 0 done; 1 unknown sale, a change that makes no sense (resume of a sale not paused: not_paused; any change of an ended sale: sale_ended; update of an open sale: sale_open; purge refused: not_ended, orders_pending, dead_letters), an invalid value, Redis unreachable; 2 usage error (also purge without --yes); 78 configuration error."
)]
struct SaleArgs {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(subcommand)]
    action: SaleAction,
}

#[derive(Subcommand)]
enum SaleAction {
    /// Every sale with its state, by start time (read from the master).
    List,
    /// One sale with its state.
    Show {
        #[arg(long)]
        sku: String,
    },
    /// Pause a sale: purchases answer 423 `paused` on every instance until
    /// it is resumed. Pausing a paused sale again succeeds.
    Pause {
        #[arg(long)]
        sku: String,
    },
    /// Resume a paused sale.
    Resume {
        #[arg(long)]
        sku: String,
    },
    /// End a sale now: purchases answer 410 `ended`.
    End {
        #[arg(long)]
        sku: String,
    },
    /// Change a sale before it opens (only the fields given); after the
    /// opening it is refused (sale_open).
    Update(UpdateArgs),
    /// Remove every key of an ended sale from Redis (sale, buyers, orders,
    /// stream, dead letters) and print what was removed. Refused while the
    /// sale ended less than --min-ended-s ago (not_ended), while an order is
    /// not confirmed (orders_pending) or while dead letters wait
    /// (dead_letters). Order records are deleted: export them first when
    /// Redis is their only copy. An interrupted purge is finished by running
    /// it again.
    Purge {
        #[arg(long)]
        sku: String,
        /// Seconds since the end before a purge is allowed.
        #[arg(long, default_value_t = 3600)]
        min_ended_s: u64,
        /// Required: purging cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(clap::Args)]
struct UpdateArgs {
    #[arg(long)]
    sku: String,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    description: Option<String>,
    #[arg(long)]
    price_cents: Option<i64>,
    /// Units for sale (only while nothing is sold).
    #[arg(long)]
    stock: Option<i64>,
    /// RFC 3339.
    #[arg(long)]
    starts_at: Option<String>,
    /// RFC 3339, after the (new or stored) start.
    #[arg(long)]
    ends_at: Option<String>,
    #[arg(long)]
    per_user_limit: Option<i64>,
    /// ISO 4217 code of the price (EUR, JPY, ...).
    #[arg(long)]
    currency: Option<String>,
    /// The product's picture: an http(s) URL or a path on this site; "" removes it.
    #[arg(long)]
    image_url: Option<String>,
}

/// The change `update` asks for, its times parsed.
fn sale_update(u: UpdateArgs) -> Result<(String, SaleUpdate), Failure> {
    let time = |t: Option<String>, flag: &str| -> Result<Option<i64>, Failure> {
        t.map(|t| {
            flashsale::sale::parse_rfc3339(&t)
                .ok_or_else(|| Failure::from(format!("--{flag}: not RFC 3339: {t}")))
        })
        .transpose()
    };
    let change = SaleUpdate {
        starts_ms: time(u.starts_at, "starts-at")?,
        ends_ms: time(u.ends_at, "ends-at")?,
        name: u.name,
        description: u.description,
        price_cents: u.price_cents,
        stock: u.stock,
        per_user_limit: u.per_user_limit,
        currency: u
            .currency
            .map(|c| {
                flashsale::sale::Currency::parse(&c)
                    .map(|c| c.code().to_owned())
                    .ok_or_else(|| {
                        Failure::from(format!(
                            "--currency: not an ISO 4217 code with minor units: {c}"
                        ))
                    })
            })
            .transpose()?,
        image_url: u
            .image_url
            .map(|i| {
                if i.is_empty() || flashsale::sale::money::valid_image_url(&i) {
                    Ok(i)
                } else {
                    Err(Failure::from(
                        "--image-url: not an http(s) URL or a path on this site".to_owned(),
                    ))
                }
            })
            .transpose()?,
    };
    if change == SaleUpdate::default() {
        return Err("nothing to change: give at least one field".into());
    }
    Ok((u.sku, change))
}

#[derive(clap::Args)]
#[command(
    after_help = "Exit codes: 0 done; 1 unknown sale or entry, Redis unreachable; 2 usage error; 78 configuration error."
)]
struct DeadLetterArgs {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(subcommand)]
    action: DeadLetterAction,
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// Print the dead letters of a sale, one JSON object per line.
    List {
        #[arg(long)]
        sku: String,
    },
    /// Put dead letters back on the order stream (all, or one by --id) and
    /// remove them from the dead-letter stream.
    Replay {
        #[arg(long)]
        sku: String,
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(clap::Args)]
#[command(
    after_help = "Exit codes: 0 tokens written; 1 the output file could not be written; 2 usage error; 78 configuration error (no FLASHSALE_JWT_SECRET)."
)]
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
#[command(
    after_help = "Exit codes: 0 pages written; 1 Redis unreachable or a page could not be written; 2 usage error; 78 configuration error."
)]
struct RenderArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Directory of the page assets (fingerprinted into the pages).
    #[arg(long, env = "FLASHSALE_STATIC_DIR", default_value = "static")]
    static_dir: String,
    /// Seconds an ended sale stays on the index page after its end (its own
    /// page is written as long as the sale exists).
    #[arg(long, env = "FLASHSALE_ENDED_LISTED_S", default_value_t = 3600)]
    ended_listed_s: u64,
}

#[derive(clap::Args)]
#[command(
    after_help = "Exit codes: 0 every sale audited is consistent; 1 unknown sale, Redis unreachable; 2 usage error; 3 a sale is inconsistent (its audit says which counters disagree); 78 configuration error."
)]
struct AuditArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// The sale; every sale when absent.
    #[arg(long)]
    sku: Option<String>,
}

/// Connects to Redis with the shared flags.
async fn connect(args: &RedisArgs) -> Result<Redis, Failure> {
    Ok(Redis::connect(args.settings()?).await?)
}

async fn serve(args: &ServeArgs) -> Result<ExitCode, Failure> {
    let app = Application::build(args.settings()?).await?;
    app.run_until(async {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

fn token(t: TokenArgs) -> Result<ExitCode, Failure> {
    let key = secret(
        "FLASHSALE_JWT_SECRET",
        t.jwt_secret,
        "FLASHSALE_JWT_SECRET_FILE",
        t.jwt_secret_file,
    )?
    .ok_or_else(|| {
        Failure::Config(flashsale::config::ConfigError::Invalid {
            var: "FLASHSALE_JWT_SECRET",
            msg: "required to mint tokens".into(),
        })
    })?;
    let users: Vec<String> = match (t.user, t.users) {
        (Some(u), _) => vec![u],
        (None, Some(n)) => (0..n).map(|i| format!("{}{i}", t.prefix)).collect(),
        (None, None) => return Err("give --user ID or --users N".into()),
    };
    let mut out = String::with_capacity(users.len() * 200);
    for u in &users {
        let tok = flashsale::web::auth::mint(&key, u, t.ttl).map_err(|e| format!("{u}: {e}"))?;
        out.push_str(&tok);
        out.push('\n');
    }
    match t.out {
        Some(path) => std::fs::write(&path, out).map_err(|e| format!("{}: {e}", path.display()))?,
        None => print!("{out}"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn render(r: RenderArgs) -> Result<ExitCode, Failure> {
    let shop = Shop::new(connect(&r.redis).await?, std::time::Duration::ZERO);
    let sales = shop.catalog.load_all(false).await?;
    let listed = std::time::Duration::from_secs(r.ended_listed_s);
    let n = flashsale::web::pages::render_all(&sales, listed, &r.static_dir, &r.out)
        .await
        .map_err(|e| e.to_string())?;
    println!("wrote {n} pages to {}", r.out.display());
    Ok(ExitCode::SUCCESS)
}

async fn audit(a: AuditArgs) -> Result<ExitCode, Failure> {
    let shop = Shop::new(connect(&a.redis).await?, std::time::Duration::ZERO);
    let skus: Vec<String> = match a.sku {
        Some(s) => vec![s],
        None => shop
            .catalog
            .load_all(true)
            .await?
            .into_iter()
            .map(|s| s.sku)
            .collect(),
    };
    let mut ok = true;
    for sku in skus {
        let audit = shop
            .catalog
            .audit(&sku)
            .await
            .map_err(|e| format!("{sku}: {e}"))?;
        ok &= audit.counts.consistent;
        println!("{}", serde_json::json!({ "sku": sku, "audit": audit }));
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EX_INCONSISTENT)
    })
}

async fn dead_letters_command(d: DeadLetterArgs) -> Result<ExitCode, Failure> {
    let redis = connect(&d.redis).await?;
    match d.action {
        DeadLetterAction::List { sku } => {
            for dl in dead_letters::list(&redis, &sku).await? {
                let fields: serde_json::Map<String, serde_json::Value> = dl
                    .fields
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect();
                println!("{}", serde_json::json!({ "id": dl.id, "fields": fields }));
            }
        }
        DeadLetterAction::Replay { sku, id } => {
            let done = dead_letters::replay(&redis, &sku, id.as_deref()).await?;
            for skipped in &done.skipped {
                eprintln!("flashsale: skipped {skipped}: its original entry was already gone");
            }
            println!("replayed {} dead letter(s) of {sku}", done.replayed);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn sale_command(a: SaleArgs) -> Result<ExitCode, Failure> {
    use flashsale::redis::functions::Lifecycle;
    use flashsale::web::api::AdminSaleJson;

    let refused = |sku: &str, e: flashsale::sale::Error| match e {
        flashsale::sale::Error::StateConflict { code, message } => {
            format!("{sku}: {code}: {message}")
        }
        e => format!("{sku}: {e}"),
    };

    let shop = Shop::new(connect(&a.redis).await?, std::time::Duration::ZERO);
    let print = |sale: &flashsale::sale::Sale| {
        println!(
            "{}",
            serde_json::to_string(&AdminSaleJson::new(sale, now_ms())).unwrap_or_default()
        );
    };
    let (sku, change) = match a.action {
        SaleAction::List => {
            for sale in shop.catalog.load_all(true).await? {
                print(&sale);
            }
            return Ok(ExitCode::SUCCESS);
        }
        SaleAction::Show { sku } => {
            let sale = shop
                .catalog
                .get_fresh(&sku)
                .await
                .map_err(|e| format!("{sku}: {e}"))?;
            print(&sale);
            return Ok(ExitCode::SUCCESS);
        }
        SaleAction::Pause { sku } => (sku, Lifecycle::Pause),
        SaleAction::Resume { sku } => (sku, Lifecycle::Resume),
        SaleAction::End { sku } => (sku, Lifecycle::End),
        SaleAction::Purge {
            sku,
            min_ended_s,
            yes,
        } => {
            if !yes {
                eprintln!("flashsale sale purge: purging cannot be undone; add --yes");
                return Ok(ExitCode::from(2));
            }
            let purged = shop
                .catalog
                .purge(&sku, std::time::Duration::from_secs(min_ended_s))
                .await
                .map_err(|e| refused(&sku, e))?;
            println!("{}", serde_json::to_string(&purged).unwrap_or_default());
            return Ok(ExitCode::SUCCESS);
        }
        SaleAction::Update(u) => {
            let (sku, change) = sale_update(u)?;
            let sale = shop
                .catalog
                .update(&sku, &change)
                .await
                .map_err(|e| refused(&sku, e))?;
            print(&sale);
            return Ok(ExitCode::SUCCESS);
        }
    };
    let sale = shop
        .catalog
        .change(&sku, change)
        .await
        .map_err(|e| refused(&sku, e))?;
    print(&sale);
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
#[command(
    after_help = "Exit codes: 0 the schema is up to date; 1 the ledger is unreachable or a migration failed; 2 usage error; 78 configuration error (FLASHSALE_LEDGER_URL missing or malformed; the URL is never shown)."
)]
struct LedgerCommandArgs {
    #[command(flatten)]
    ledger: flashsale::ledger::LedgerArgs,
    #[command(subcommand)]
    action: LedgerAction,
}

#[derive(Subcommand)]
enum LedgerAction {
    /// Apply the migrations not applied yet (`flashsale-worker` also does
    /// at start-up); safe to run again and beside running workers.
    Migrate,
}

async fn ledger_command(a: LedgerCommandArgs) -> Result<ExitCode, Failure> {
    use flashsale::ledger::{Ledger, VAR};
    let settings = a.ledger.settings()?.ok_or_else(|| {
        Failure::Config(flashsale::config::ConfigError::Invalid {
            var: VAR,
            msg: "not set (the order ledger's postgres:// URL)".into(),
        })
    })?;
    let failed =
        |e: flashsale::ledger::LedgerError| format!("{VAR} ({}): {e}", settings.describe());
    match a.action {
        LedgerAction::Migrate => {
            let ledger = Ledger::connect(&settings, "flashsale ledger")
                .await
                .map_err(failed)?;
            let version = ledger.migrate().await.map_err(failed)?;
            ledger.close().await;
            println!(
                "order ledger at {}: schema version {version}",
                settings.describe()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> ExitCode {
    flashsale::telemetry::init_tracing();
    let result = match Cli::parse().command {
        Command::Serve(args) => serve(&args).await,
        Command::Token(t) => token(t),
        Command::Render(r) => render(r).await,
        Command::Audit(a) => audit(a).await,
        Command::DeadLetters(d) => dead_letters_command(d).await,
        Command::Sale(a) => sale_command(a).await,
        Command::Ledger(l) => ledger_command(l).await,
    };
    exit("flashsale", result)
}
