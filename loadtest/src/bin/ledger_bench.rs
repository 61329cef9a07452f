//! `ledger_bench` — two ways of writing a batch of new orders into the
//! order ledger idempotently, at the worker's batch sizes, so the choice
//! in `src/ledger/` is a measurement (docs/ARCHITECTURE.md, "The order
//! ledger"):
//!
//! - `unnest`: the product's [`Ledger::record`] — one `INSERT … SELECT FROM
//!   UNNEST($1::text[], …) ON CONFLICT (order_id) DO NOTHING`;
//! - `copy`: in one transaction, `COPY` the batch into a temporary staging
//!   table (created once per connection, `ON COMMIT DELETE ROWS`), then
//!   `INSERT … SELECT … FROM stage ON CONFLICT (order_id) DO NOTHING`.
//!
//! Both go through a pool shaped like the product's (2 connections, no ping
//! before use), into the schema of `migrations/`, each batch committed on
//! its own as the worker does. Per round, batch size and strategy (rounds
//! interleave the strategies): a fresh table, `--rows` new orders written
//! in batches by `--writers` concurrent writers, then the same batches
//! again (every row a conflict, as after a redelivery). Reports rows/s,
//! batch latency, the client's CPU per row and, when it started the server
//! itself (the test kit's, Debian's binaries, PostgreSQL's default
//! durability: `fsync` and `synchronous_commit` on), the server's.
//!
//! ```text
//! ledger_bench                                   # its own server, 128 and 512, 3 rounds
//! ledger_bench --url postgres://u:p@host/db --batch 128 --rounds 5
//! ```

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use flashsale::config::Secret;
use flashsale::ledger::{Ledger, LedgerSettings, MIGRATOR, NewOrder, Record};
use flashsale_loadtest::bench::{cpu_seconds, histogram_json, latency_histogram, process_tree_cpu};
use flashsale_testkit::postgres::Postgres;
use hdrhistogram::Histogram;
use serde_json::json;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use time::OffsetDateTime;

#[derive(Parser)]
#[command(
    name = "ledger_bench",
    about = "Order ledger writes: INSERT … UNNEST … ON CONFLICT vs COPY into a staging table"
)]
struct Args {
    /// postgres:// URL of a scratch database (its `orders` table is
    /// emptied); default: start a throw-away server with the test kit.
    #[arg(long, env = "LEDGER_BENCH_URL", hide_env_values = true)]
    url: Option<String>,
    /// Batch sizes (repeatable).
    #[arg(long = "batch", default_values_t = [128usize, 512])]
    batches: Vec<usize>,
    /// `unnest` or `copy` (repeatable).
    #[arg(long = "strategy", default_values_t = ["unnest".to_owned(), "copy".to_owned()])]
    strategies: Vec<String>,
    /// New orders written per measurement.
    #[arg(long, default_value_t = 65_536)]
    rows: usize,
    /// Rounds (each measures every batch size and strategy once).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent writers (workers), each with its own pool and its share
    /// of the batches.
    #[arg(long, default_value_t = 1)]
    writers: usize,
}

const STAGE: &str = "CREATE TEMP TABLE IF NOT EXISTS ledger_stage (
    order_id text, sku text, user_id text, qty int4, created_at timestamptz
) ON COMMIT DELETE ROWS";
const FROM_STAGE: &str = "\
INSERT INTO orders (order_id, sku, user_id, qty, status, created_at, confirmed_at)
SELECT order_id, sku, user_id, qty, 'confirmed', created_at, now() FROM ledger_stage
ON CONFLICT (order_id) DO NOTHING";

enum Writer {
    Unnest(Ledger),
    Copy(PgPool),
}

impl Writer {
    async fn write(&self, batch: &[Record], text: &str) -> Result<u64, String> {
        match self {
            Writer::Unnest(l) => l
                .record(batch)
                .await
                .map(|r| r.new_orders)
                .map_err(|e| e.to_string()),
            Writer::Copy(pool) => {
                let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
                let mut copy = tx
                    .copy_in_raw("COPY ledger_stage FROM STDIN (FORMAT text)")
                    .await
                    .map_err(|e| e.to_string())?;
                copy.send(text.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                copy.finish().await.map_err(|e| e.to_string())?;
                let done = sqlx::query(FROM_STAGE)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| e.to_string())?;
                tx.commit().await.map_err(|e| e.to_string())?;
                Ok(done.rows_affected())
            }
        }
    }
}

/// A batch as COPY's text format (no field here holds a tab, newline or
/// backslash: ids are `[A-Za-z0-9_.:-]`).
fn copy_text(batch: &[Record]) -> String {
    let mut out = String::with_capacity(batch.len() * 96);
    for r in batch {
        if let Record::NewOrder(o) = r {
            let at = o
                .created_at
                .format(&time::format_description::well_known::Rfc3339)
                .expect("rfc3339");
            out.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\n",
                o.order_id, o.sku, o.user_id, o.qty, at
            ));
        }
    }
    out
}

fn orders(sku: &str, n: usize) -> Vec<Record> {
    let t0 = OffsetDateTime::now_utc();
    (0..n)
        .map(|i| {
            Record::NewOrder(NewOrder {
                order_id: format!("{sku}.{}", uuid::Uuid::new_v4().simple()),
                sku: sku.to_owned(),
                user_id: format!("u{i}"),
                qty: 1,
                created_at: t0 + time::Duration::microseconds(i as i64),
                amount_cents: None,
                pay_by: None,
            })
        })
        .collect()
}

struct Pass {
    rows_per_s: f64,
    hist: Histogram<u64>,
    written: u64,
    client_cpu: Option<f64>,
    server_cpu: Option<f64>,
}

async fn pass(
    writers: &[Arc<Writer>],
    batches: &Arc<Vec<(Vec<Record>, String)>>,
    postmaster: Option<u32>,
) -> Result<Pass, String> {
    let (c0, s0) = (
        cpu_seconds(std::process::id()),
        process_tree_cpu(postmaster),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    let n = writers.len();
    for (w, writer) in writers.iter().enumerate() {
        let (writer, batches) = (writer.clone(), batches.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = latency_histogram();
            let mut written = 0u64;
            for (batch, text) in batches.iter().skip(w).step_by(n) {
                let t = Instant::now();
                written += writer.write(batch, text).await?;
                hist.saturating_record(t.elapsed().as_micros().max(1) as u64);
            }
            Ok::<_, String>((hist, written))
        }));
    }
    let mut hist = latency_histogram();
    let mut written = 0;
    for t in tasks {
        let (h, n) = t.await.map_err(|e| e.to_string())??;
        hist.add(&h).map_err(|e| e.to_string())?;
        written += n;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rows: usize = batches.iter().map(|(b, _)| b.len()).sum();
    let diff = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    Ok(Pass {
        rows_per_s: rows as f64 / elapsed,
        hist,
        written,
        client_cpu: diff(c0, cpu_seconds(std::process::id())),
        server_cpu: diff(s0, process_tree_cpu(postmaster)),
    })
}

async fn measure(
    args: &Args,
    url: &str,
    strategy: &str,
    batch: usize,
    postmaster: Option<u32>,
) -> Result<serde_json::Value, String> {
    let settings =
        LedgerSettings::parse(&Secret::new(url.to_owned())).map_err(|e| e.to_string())?;
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| e.to_string())?
        .options([("statement_timeout", "5000")]);
    let admin = PgPool::connect_with(options.clone())
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query("TRUNCATE orders")
        .execute(&admin)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query("CHECKPOINT")
        .execute(&admin)
        .await
        .map_err(|e| e.to_string())?;
    admin.close().await;
    let mut writers = Vec::with_capacity(args.writers);
    for _ in 0..args.writers {
        writers.push(Arc::new(match strategy {
            "unnest" => Writer::Unnest(
                Ledger::connect(&settings, "ledger_bench")
                    .await
                    .map_err(|e| e.to_string())?,
            ),
            "copy" => Writer::Copy(
                PgPoolOptions::new()
                    .max_connections(2)
                    .test_before_acquire(false)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            sqlx::query(STAGE).execute(conn).await?;
                            Ok(())
                        })
                    })
                    .connect_with(options.clone())
                    .await
                    .map_err(|e| e.to_string())?,
            ),
            other => return Err(format!("--strategy {other}: want unnest or copy")),
        }));
    }
    let sku = format!("lb{:x}", rand::random::<u32>());
    let batches: Arc<Vec<(Vec<Record>, String)>> = Arc::new(
        orders(&sku, args.rows)
            .chunks(batch)
            .map(|b| (b.to_vec(), copy_text(b)))
            .collect(),
    );
    let fresh = pass(&writers, &batches, postmaster).await?;
    if fresh.written != args.rows as u64 {
        return Err(format!(
            "{strategy}: wrote {} of {} new orders",
            fresh.written, args.rows
        ));
    }
    let again = pass(&writers, &batches, postmaster).await?;
    if again.written != 0 {
        return Err(format!(
            "{strategy}: the repeat wrote {} orders again",
            again.written
        ));
    }
    for w in &writers {
        match &**w {
            Writer::Unnest(l) => l.close().await,
            Writer::Copy(p) => p.close().await,
        }
    }
    let per_row_us = |cpu: Option<f64>| cpu.map(|c| c * 1e6 / args.rows as f64);
    Ok(json!({
        "strategy": strategy,
        "batch": batch,
        "rows": args.rows,
        "writers": args.writers,
        "rows_per_s": fresh.rows_per_s,
        "batch_latency": histogram_json(&fresh.hist),
        "client_cpu_us_per_row": per_row_us(fresh.client_cpu),
        "server_cpu_us_per_row": per_row_us(fresh.server_cpu),
        "repeat_rows_per_s": again.rows_per_s,
        "repeat_batch_latency": histogram_json(&again.hist),
    }))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.rows == 0 || args.rounds == 0 || args.writers == 0 || args.batches.contains(&0) {
        eprintln!("ledger_bench: --rows, --rounds, --writers and --batch must be at least 1");
        return std::process::ExitCode::from(2);
    }
    let server = match &args.url {
        Some(_) => None,
        None => Some(Postgres::init().await),
    };
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| server.as_ref().expect("server").url());
    let postmaster = server.as_ref().and_then(Postgres::pid);
    let schema = async {
        let mut c = sqlx::PgConnection::connect(&url).await?;
        MIGRATOR.run(&mut c).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    if let Err(e) = schema.await {
        eprintln!("ledger_bench: preparing the schema: {e}");
        return std::process::ExitCode::from(1);
    }
    let mut results: Vec<serde_json::Value> = Vec::new();
    for round in 1..=args.rounds {
        for &batch in &args.batches {
            for strategy in &args.strategies {
                match measure(&args, &url, strategy, batch, postmaster).await {
                    Ok(mut r) => {
                        r["round"] = json!(round);
                        println!("{r}");
                        results.push(r);
                    }
                    Err(e) => {
                        eprintln!("ledger_bench: {e}");
                        return std::process::ExitCode::from(1);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // Medians over the rounds, as a markdown table.
    println!(
        "\n| strategy | batch | writers | rows/s | batch p50 | batch p99 | client CPU/row | server CPU/row | repeat rows/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &batch in &args.batches {
        for strategy in &args.strategies {
            let of: Vec<&serde_json::Value> = results
                .iter()
                .filter(|r| r["strategy"] == *strategy && r["batch"] == batch)
                .collect();
            let m = |f: &dyn Fn(&serde_json::Value) -> Option<f64>| {
                median(of.iter().filter_map(|r| f(r)).collect())
            };
            println!(
                "| {strategy} | {batch} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.1} µs | {:.1} µs | {:.0} |",
                args.writers,
                m(&|r| r["rows_per_s"].as_f64()),
                m(&|r| r["batch_latency"]["p50_ms"].as_f64()),
                m(&|r| r["batch_latency"]["p99_ms"].as_f64()),
                m(&|r| r["client_cpu_us_per_row"].as_f64()),
                m(&|r| r["server_cpu_us_per_row"].as_f64()),
                m(&|r| r["repeat_rows_per_s"].as_f64()),
            );
        }
    }
    drop(server);
    std::process::ExitCode::SUCCESS
}
