//! `flashsale`: the HTTP service (`serve`) and the operator's tools.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flashsale::cli::{EX_INCONSISTENT, Failure, exit, shutdown_signal};
use flashsale::config::{RedisArgs, ServeArgs, secret};
use flashsale::ledger::reconcile::LedgerCheck;
use flashsale::ledger::{Ledger, LedgerArgs, LedgerOrder, LedgerSettings};
use flashsale::logs::LogFormat;
use flashsale::redis::Redis;
use flashsale::redis::functions::SaleUpdate;
use flashsale::sale::purge::{self, compare_with_ledger};
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
    after_help = "Exit codes: 0 success; 1 failure (Redis or the order ledger unreachable, I/O, an unknown sale, a change `sale` refuses); 2 usage error; 3 `audit` found an inconsistent sale (with the ledger: orders Redis and the ledger disagree on); 78 configuration error."
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
    /// A sale's orders from the order ledger (FLASHSALE_LEDGER_URL): export
    /// them as CSV or JSON lines.
    Orders(OrdersArgs),
}

#[derive(clap::Args)]
#[command(
    after_help = "Output: one JSON object per sale and line, as GET /admin/sales/{sku} shows it (`state`: scheduled, open, paused, sold_out, ended).\nExit codes: 0 done; 1 unknown sale, a change that makes no sense (resume of a sale not paused: not_paused; any change of an ended sale: sale_ended; update of an open sale: sale_open; purge refused: not_ended, orders_pending, payments_pending, dead_letters, not_in_ledger), an invalid value, Redis unreachable; 2 usage error (also purge without --yes); 78 configuration error."
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
    /// not confirmed (orders_pending), while an order waits for its payment
    /// (payments_pending) or while dead letters wait (dead_letters). Order records are deleted: export them first when
    /// Redis is their only copy. With the order ledger
    /// (FLASHSALE_LEDGER_URL) it is also refused while an order is not in
    /// the ledger as it ended (not_in_ledger: missing there, another
    /// status, user, quantity or amount, or still waiting for its payment)
    /// or not recorded yet (orders_pending). An interrupted purge is
    /// finished by running it again.
    Purge {
        #[arg(long)]
        sku: String,
        /// Seconds since the end before a purge is allowed.
        #[arg(long, default_value_t = 3600)]
        min_ended_s: u64,
        /// Required: purging cannot be undone.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        ledger: LedgerArgs,
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
    after_help = "Output: one JSON object per sale and line, {sku, audit} (the counters of GET /admin/sales/{sku}/audit); with FLASHSALE_LEDGER_URL also `ledger`: {orders, recorded, pending, awaiting_payment, missing_in_ledger, missing_in_redis, status_differs, fields_differ, duplicated, unreadable (the first 20 order ids of each), totals (every one counted), purged, consistent}. With the ledger, a sale Redis no longer has but the ledger does is printed as purged (exit 0).\nExit codes: 0 every sale audited is consistent; 1 unknown sale, Redis or the ledger unreachable; 2 usage error; 3 a sale is inconsistent (its audit says which counters disagree, or which orders Redis and the ledger disagree on); 78 configuration error."
)]
struct AuditArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// The sale; every sale when absent.
    #[arg(long)]
    sku: Option<String>,
    /// With the order ledger, each sale's orders are compared with it.
    #[command(flatten)]
    ledger: LedgerArgs,
}

#[derive(clap::Args)]
#[command(
    after_help = "Exit codes: 0 exported (zero orders too: a sale the ledger has no order of, noted on stderr); 1 the ledger unreachable, the output could not be written; 2 usage error; 78 configuration error (FLASHSALE_LEDGER_URL missing or malformed; the URL is never shown)."
)]
struct OrdersArgs {
    #[command(flatten)]
    ledger: LedgerArgs,
    #[command(subcommand)]
    action: OrdersAction,
}

#[derive(Subcommand)]
enum OrdersAction {
    /// Write a sale's orders from the ledger, by purchase time, read in
    /// pages (never all in memory). Columns, in this order: order_id, sku,
    /// user_id, qty, status, amount_cents, created_at, confirmed_at, pay_by,
    /// paid_at, payment_id, expired_at, cancelled_at; times RFC 3339 in UTC;
    /// what an order does not have is empty (CSV) or null (JSONL). CSV has a
    /// header line. A progress bar goes to stderr when it is a terminal.
    #[command(
        after_help = "Exit codes: 0 exported (zero orders too: a sale the ledger has no order of, noted on stderr); 1 the ledger unreachable, the output could not be written (--out FILE is then left as it was); 2 usage error; 78 configuration error (FLASHSALE_LEDGER_URL missing or malformed; the URL is never shown)."
    )]
    Export {
        #[arg(long, value_parser = sku_arg)]
        sku: String,
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Write to this file (replaced whole once the export is complete)
        /// instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExportFormat {
    /// Comma-separated, RFC 4180 quoting, a header line.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// `--sku`: 1–64 of `[A-Za-z0-9_-]`.
fn sku_arg(s: &str) -> Result<String, String> {
    if flashsale::sale::valid_sku(s) {
        Ok(s.to_owned())
    } else {
        Err("not 1-64 of [A-Za-z0-9_-]".into())
    }
}

/// Connects to Redis with the shared flags.
async fn connect(args: &RedisArgs) -> Result<Redis, Failure> {
    Ok(Redis::connect(args.settings()?).await?)
}

async fn serve(args: &ServeArgs) -> Result<ExitCode, Failure> {
    let settings = args.settings()?;
    flashsale::telemetry::init_tracing(settings.log_format);
    let app = Application::build(settings).await?;
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
    let ledger_settings = a.ledger.settings()?;
    let shop = Shop::new(connect(&a.redis).await?, std::time::Duration::ZERO);
    let ledger = match &ledger_settings {
        Some(settings) => Some(connect_ledger(settings, "flashsale audit").await?),
        None => None,
    };
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
        let audit = match shop.catalog.audit(&sku).await {
            Ok(audit) => audit,
            Err(flashsale::sale::Error::UnknownSku) if ledger.is_some() => {
                // Gone from Redis: purged, if the ledger has its orders.
                let orders = ledger_orders_count(ledger.as_ref(), &sku).await?;
                if orders == 0 {
                    return Err(format!("{sku}: unknown sku").into());
                }
                let check = LedgerCheck::purged(orders);
                println!("{}", serde_json::json!({ "sku": sku, "ledger": check }));
                continue;
            }
            Err(e) => return Err(format!("{sku}: {e}").into()),
        };
        ok &= audit.counts.consistent;
        let mut line = serde_json::json!({ "sku": sku, "audit": audit });
        if let Some(ledger) = &ledger {
            let check = check_ledger(&shop.redis, ledger, &sku).await?;
            ok &= check.consistent;
            line["ledger"] = serde_json::to_value(&check).map_err(|e| e.to_string())?;
        }
        println!("{line}");
    }
    if let Some(ledger) = ledger {
        ledger.close().await;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EX_INCONSISTENT)
    })
}

/// Connects to the order ledger; a failure names the variable and where
/// (never the URL).
async fn connect_ledger(settings: &LedgerSettings, app: &str) -> Result<Ledger, Failure> {
    Ledger::connect(settings, app)
        .await
        .map_err(|e| ledger_failed(settings.describe(), e))
}

fn ledger_failed(at: impl std::fmt::Display, e: flashsale::ledger::LedgerError) -> Failure {
    Failure::from(format!("{} ({at}): {e}", flashsale::ledger::VAR))
}

async fn ledger_orders_count(ledger: Option<&Ledger>, sku: &str) -> Result<u64, Failure> {
    let Some(ledger) = ledger else {
        return Ok(0);
    };
    let n = ledger
        .count_of(sku)
        .await
        .map_err(|e| ledger_failed(ledger.describe(), e))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// A sale's orders in Redis compared with its rows in the ledger (the
/// comparison every purge with the ledger makes, `sale::purge`).
async fn check_ledger(redis: &Redis, ledger: &Ledger, sku: &str) -> Result<LedgerCheck, Failure> {
    use flashsale::sale::purge::CompareError;
    compare_with_ledger(redis, ledger, sku)
        .await
        .map_err(|e| match e {
            CompareError::Redis(e) => Failure::from(e),
            CompareError::Ledger(e) => ledger_failed(ledger.describe(), e),
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
            ledger,
        } => {
            if !yes {
                eprintln!("flashsale sale purge: purging cannot be undone; add --yes");
                return Ok(ExitCode::from(2));
            }
            let min_ended = std::time::Duration::from_secs(min_ended_s);
            let ledger = match ledger.settings()? {
                Some(settings) => Some(connect_ledger(&settings, "flashsale sale purge").await?),
                None => None,
            };
            // The command finishes a purge that was interrupted.
            let purged = purge::purge(
                &shop.catalog,
                ledger.as_ref(),
                &sku,
                min_ended,
                purge::Unlisted::Finish,
            )
            .await;
            let at = ledger.as_ref().map(|l| l.describe().to_owned());
            if let Some(ledger) = ledger {
                ledger.close().await;
            }
            let purged = logged(
                &sku,
                "purge",
                purged.map_err(|e| match e {
                    purge::PurgeError::Ledger(e) => ledger_failed(at.unwrap_or_default(), e),
                    e => Failure::from(format!("{sku}: {e}")),
                }),
            )?;
            println!("{}", serde_json::to_string(&purged).unwrap_or_default());
            return Ok(ExitCode::SUCCESS);
        }
        SaleAction::Update(u) => {
            let (sku, change) = sale_update(u)?;
            let sale = logged(
                &sku,
                "update",
                shop.catalog
                    .update(&sku, &change)
                    .await
                    .map_err(|e| refused(&sku, e).into()),
            )?;
            print(&sale);
            return Ok(ExitCode::SUCCESS);
        }
    };
    let action = match change {
        Lifecycle::Pause => "pause",
        Lifecycle::Resume => "resume",
        Lifecycle::End => "end",
    };
    let sale = logged(
        &sku,
        action,
        shop.catalog
            .change(&sku, change)
            .await
            .map_err(|e| refused(&sku, e).into()),
    )?;
    print(&sale);
    Ok(ExitCode::SUCCESS)
}

/// Logs a change `flashsale sale` made or was refused, at info on target
/// `flashsale::admin` as the admin API logs its own (`via` = `cli`).
fn logged<T>(sku: &str, action: &'static str, result: Result<T, Failure>) -> Result<T, Failure> {
    match &result {
        Ok(_) => {
            tracing::info!(target: "flashsale::admin", sku, action, outcome = "ok", via = "cli", "admin action")
        }
        Err(e) => {
            tracing::info!(target: "flashsale::admin", sku, action, outcome = "refused", error = %e, via = "cli", "admin action")
        }
    }
    result
}

/// `flashsale orders export`: the sale's rows streamed from the ledger
/// into the output, one page at a time.
async fn orders_command(a: OrdersArgs) -> Result<ExitCode, Failure> {
    let settings = a.ledger.settings()?.ok_or_else(|| {
        Failure::Config(flashsale::config::ConfigError::Invalid {
            var: flashsale::ledger::VAR,
            msg: "not set (the order ledger's postgres:// URL)".into(),
        })
    })?;
    let OrdersAction::Export { sku, format, out } = a.action;
    let ledger = connect_ledger(&settings, "flashsale orders export").await?;
    let progress = if std::io::stderr().is_terminal() {
        let total = ledger_orders_count(Some(&ledger), &sku).await?;
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {human_pos}/{human_len} orders [{bar:30}] {elapsed}, about {eta} left",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let target = match &out {
        Some(path) => Output::file(path)?,
        None => Output::Stdout,
    };
    // Ctrl-C or SIGTERM: the partial file goes, as on any failure.
    let written = tokio::select! {
        written = export(&ledger, &sku, format, target.writer()?, &progress) => written,
        () = shutdown_signal() => Err("interrupted: the export is incomplete".into()),
    };
    progress.finish_and_clear();
    ledger.close().await;
    let n = match written {
        Ok(n) => n,
        Err(e) => {
            target.abandon();
            return Err(e);
        }
    };
    target.commit()?;
    if n == 0 {
        eprintln!(
            "flashsale orders export: the ledger holds no order of {sku} (an unknown sale, or one without orders)"
        );
    } else {
        let to = out
            .as_deref()
            .map_or("stdout".into(), |p| p.display().to_string());
        eprintln!("flashsale orders export: {n} orders of {sku} to {to}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes every row of `sku` in `format`; the number written.
async fn export(
    ledger: &Ledger,
    sku: &str,
    format: ExportFormat,
    sink: Box<dyn Write>,
    progress: &indicatif::ProgressBar,
) -> Result<u64, Failure> {
    use futures_util::TryStreamExt;
    let io = |e: std::io::Error| Failure::from(format!("writing the export: {e}"));
    let csv_err = |e: csv::Error| Failure::from(format!("writing the export: {e}"));
    let mut rows = ledger.orders_of(sku);
    let mut n = 0u64;
    let mut next = async || {
        rows.try_next()
            .await
            .map_err(|e| ledger_failed(ledger.describe(), e))
    };
    match format {
        ExportFormat::Csv => {
            let mut w = csv::Writer::from_writer(sink);
            w.write_record(LedgerOrder::EXPORT_COLUMNS)
                .map_err(csv_err)?;
            while let Some(row) = next().await? {
                w.write_record(row.csv_fields()).map_err(csv_err)?;
                n += 1;
                progress.inc(1);
            }
            w.flush().map_err(io)?;
        }
        ExportFormat::Jsonl => {
            let mut w = sink;
            while let Some(row) = next().await? {
                w.write_all(row.json_line().as_bytes()).map_err(io)?;
                w.write_all(b"\n").map_err(io)?;
                n += 1;
                progress.inc(1);
            }
            w.flush().map_err(io)?;
        }
    }
    Ok(n)
}

/// Where an export goes. A file is written beside its final name and
/// renamed over it once complete, so a failed export leaves no half file
/// behind (or the old one intact); something that is not a regular file
/// (a pipe, `/dev/stdout`) is written in place.
enum Output {
    Stdout,
    File {
        path: PathBuf,
        partial: Option<PathBuf>,
        file: std::fs::File,
    },
}

impl Output {
    fn file(path: &Path) -> Result<Output, Failure> {
        let shown = |e: std::io::Error| Failure::from(format!("{}: {e}", path.display()));
        let in_place = std::fs::metadata(path).is_ok_and(|m| !m.is_file());
        if in_place {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(shown)?;
            return Ok(Output::File {
                path: path.to_owned(),
                partial: None,
                file,
            });
        }
        let name = path
            .file_name()
            .ok_or_else(|| Failure::from(format!("{}: not a file name", path.display())))?;
        let mut partial_name = std::ffi::OsString::from(".");
        partial_name.push(name);
        partial_name.push(format!(".partial-{}", std::process::id()));
        let partial = path.with_file_name(partial_name);
        let file = std::fs::File::create(&partial)
            .map_err(|e| Failure::from(format!("{}: {e}", partial.display())))?;
        Ok(Output::File {
            path: path.to_owned(),
            partial: Some(partial),
            file,
        })
    }

    fn writer(&self) -> Result<Box<dyn Write>, Failure> {
        Ok(match self {
            Output::Stdout => Box::new(std::io::BufWriter::with_capacity(
                1 << 16,
                std::io::stdout(),
            )),
            Output::File { file, path, .. } => Box::new(std::io::BufWriter::with_capacity(
                1 << 16,
                file.try_clone()
                    .map_err(|e| Failure::from(format!("{}: {e}", path.display())))?,
            )),
        })
    }

    /// The export is complete: the file reaches the disk and takes its name.
    fn commit(self) -> Result<(), Failure> {
        if let Output::File {
            path,
            partial: Some(partial),
            file,
        } = self
        {
            let failed = |e: std::io::Error| Failure::from(format!("{}: {e}", path.display()));
            file.sync_all().map_err(failed)?;
            std::fs::rename(&partial, &path).map_err(failed)?;
        }
        Ok(())
    }

    /// The export failed: its partial file goes.
    fn abandon(self) {
        if let Output::File {
            partial: Some(partial),
            ..
        } = self
        {
            let _ = std::fs::remove_file(partial);
        }
    }
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
    let command = Cli::parse().command;
    // `serve` sets up logging from its settings; the operator's tools
    // from the variable alone (they have no flag for it).
    if !matches!(command, Command::Serve(_)) {
        match LogFormat::from_env() {
            Ok(format) => flashsale::telemetry::init_tracing(format),
            Err(e) => return exit("flashsale", Err(e.into())),
        }
    }
    let result = match command {
        Command::Serve(args) => serve(&args).await,
        Command::Token(t) => token(t),
        Command::Render(r) => render(r).await,
        Command::Audit(a) => audit(a).await,
        Command::DeadLetters(d) => dead_letters_command(d).await,
        Command::Sale(a) => sale_command(a).await,
        Command::Ledger(l) => ledger_command(l).await,
        Command::Orders(o) => orders_command(o).await,
    };
    exit("flashsale", result)
}
