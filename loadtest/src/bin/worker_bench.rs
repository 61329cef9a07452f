//! `worker_bench` — orders confirmed per second by 1, 2 and 4
//! `flashsale-worker` processes against the same Sentinel group.
//!
//! For each worker count K (`--workers 1,2,4`): a fresh sale under the key
//! prefix `--prefix` (default `fs`, as everywhere; give it a prefix of its
//! own — `run.sh` passes `wb` — when a `flashsale-worker` on `fs` runs against
//! the same group, or that worker takes the orders) is preloaded with `--orders` queued orders by
//! pipelined `FCALL fs_purchase` (the same Function the server calls); then K
//! workers are started and the sale's `confirmed` counter is polled every
//! 10 ms until it reaches the order count. Reported per K: orders/s from the
//! first confirmation to the last (`rate`), the same from the moment the
//! workers were spawned (`rate_from_spawn`, includes start-up), the CPU
//! seconds of the workers, and the audit afterwards (`consistent`, nothing
//! pending, every order confirmed once). The workers get SIGTERM and must
//! exit 0. Each sale's keys are removed afterwards unless `--keep`.
//!
//! The group comes from `FLASHSALE_REDIS_SENTINELS` / `_MASTER_NAME` /
//! `_PASSWORD` (e.g. `. run/redis-group/env`); `loadtest/run.sh workers`
//! starts one for it.
//!
//! **With the order ledger** (`--ledger on`, or `both`: each measurement
//! without, then with): the workers get `FLASHSALE_LEDGER_URL` — the test
//! kit's throw-away PostgreSQL (Debian's binaries, default durability), or
//! `--ledger-url` — and record every order there before confirming it, so
//! `rate` is then orders recorded in the ledger (and confirmed) per second.
//! The schema is applied once before the first measurement (not timed).
//! Each measurement also checks that the ledger holds exactly the sale's
//! orders (`ledger_rows`), reports the CPU of the PostgreSQL server (the
//! postmaster and its backends) and of the Redis master and replicas
//! (`INFO server` `process_id`; on this host) per order, and deletes the
//! sale's rows afterwards unless `--keep`. `--batch 64,128,512` measures
//! each batch size.

use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use flashsale::config::Secret;
use flashsale::ledger::{Ledger, LedgerSettings};
use flashsale::redis::functions::{AuditReply, audit_call, purchase_call};
use flashsale::redis::keys::Keys;
use flashsale_loadtest::bench::{GroupArgs, cpu_seconds, machine_busy_seconds, process_tree_cpu};
use flashsale_testkit::postgres::Postgres;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use sqlx::postgres::PgPool;

#[derive(Parser)]
#[command(
    name = "worker_bench",
    about = "Orders confirmed per second by 1, 2, 4 flashsale-workers"
)]
struct Args {
    #[command(flatten)]
    group: GroupArgs,
    /// The flashsale-worker binary.
    #[arg(long, default_value = "target/release/flashsale-worker")]
    worker_bin: std::path::PathBuf,
    /// Worker counts to measure, comma-separated.
    #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
    workers: Vec<usize>,
    /// Queued orders per measurement (1..=2000000).
    #[arg(long, default_value_t = 50_000)]
    orders: u64,
    /// `--batch` of each worker; comma-separated, each one measured.
    #[arg(long, default_value = "128", value_delimiter = ',')]
    batch: Vec<usize>,
    /// Record the orders in an order ledger: `off`, `on`, or `both` (each
    /// measurement without, then with).
    #[arg(long, value_enum, default_value_t = LedgerMode::Off)]
    ledger: LedgerMode,
    /// postgres:// URL of the ledger's database (the bench's sales' rows
    /// are deleted after each measurement); default: the test kit's
    /// throw-away PostgreSQL.
    #[arg(long, env = "WORKER_BENCH_LEDGER_URL", hide_env_values = true)]
    ledger_url: Option<String>,
    /// Give up on one measurement after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
    /// Directory for the workers' logs (default: discard them).
    #[arg(long)]
    log_dir: Option<std::path::PathBuf>,
    /// Keep each sale's keys afterwards.
    #[arg(long)]
    keep: bool,
    /// Write the JSON report here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LedgerMode {
    Off,
    On,
    Both,
}

/// The ledger the workers record in.
struct LedgerTarget {
    url: String,
    /// The server's postmaster, when the bench started it (its CPU is read).
    postmaster: Option<u32>,
    pool: PgPool,
}

type Res<T> = Result<T, String>;

fn e2s(e: redis::RedisError) -> String {
    e.to_string()
}

async fn create_sale(c: &mut MultiplexedConnection, keys: &Keys, sku: &str, stock: u64) -> Res<()> {
    flashsale_loadtest::bench::create_bench_sale(c, keys, sku, "worker bench", stock, 86_400_000)
        .await
}

/// Queues `n` orders (one per user) with pipelined fs_purchase on 4 connections.
async fn preload(group: &GroupArgs, keys: &Keys, sku: &str, n: u64) -> Res<()> {
    const LANES: u64 = 4;
    const CHUNK: u64 = 1000;
    let mut tasks = Vec::new();
    for lane in 0..LANES {
        let mut c = group.master_conn().await?;
        let keys = keys.clone();
        let sku = sku.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut i = lane * CHUNK;
            while i < n {
                let end = (i + CHUNK).min(n);
                let mut pipe = redis::pipe();
                for j in i..end {
                    let user = format!("w{j}");
                    // `<sku>.<32 hex>`, the server's order id format.
                    let order_id = format!("{sku}.{:032x}", u128::from(j) | (1u128 << 120));
                    pipe.add_command(purchase_call(&keys, &sku, &user, 1, &order_id, None))
                        .ignore();
                }
                let () = pipe.query_async(&mut c).await.map_err(e2s)?;
                i += LANES * CHUNK;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

async fn sale_field(c: &mut MultiplexedConnection, keys: &Keys, sku: &str, f: &str) -> Res<u64> {
    let v: Option<u64> = redis::cmd("HGET")
        .arg(keys.sale(sku))
        .arg(f)
        .query_async(c)
        .await
        .map_err(e2s)?;
    Ok(v.unwrap_or(0))
}

async fn audit(c: &mut MultiplexedConnection, keys: &Keys, sku: &str) -> Res<Value> {
    let AuditReply::Sale(a) = audit_call(keys, sku).query_async(c).await.map_err(e2s)? else {
        return Err(format!("fs_audit: no sale {sku}"));
    };
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(keys.stream(sku))
        .arg(flashsale::worker::GROUP)
        .query_async(c)
        .await
        .map_err(e2s)?;
    let pending_count = match &pending {
        redis::Value::Array(v) => match v.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => -1,
        },
        _ => -1,
    };
    Ok(json!({
        "stock_total": a.stock_total, "stock_left": a.stock_left, "sold": a.sold,
        "orders": a.orders, "buyers": a.buyers, "confirmed": a.confirmed,
        "consistent": a.consistent,
        "stream_pending": pending_count,
    }))
}

/// Removes every key of one sale (SCAN + UNLINK) and its index entry.
async fn cleanup(c: &mut MultiplexedConnection, keys: &Keys, sku: &str) -> Res<()> {
    let pattern = format!("{}:{{{sku}}}:*", keys.prefix());
    let mut cursor: u64 = 0;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(5000)
            .query_async(c)
            .await
            .map_err(e2s)?;
        if !found.is_empty() {
            let () = redis::cmd("UNLINK")
                .arg(&found)
                .query_async(c)
                .await
                .map_err(e2s)?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let () = redis::cmd("ZREM")
        .arg(keys.sales_index())
        .arg(sku)
        .query_async(c)
        .await
        .map(|_: i64| ())
        .map_err(e2s)?;
    Ok(())
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Rows of `sku` in the ledger.
async fn ledger_rows(l: &LedgerTarget, sku: &str) -> Res<i64> {
    sqlx::query_scalar("SELECT count(*) FROM orders WHERE sku = $1")
        .bind(sku)
        .fetch_one(&l.pool)
        .await
        .map_err(|e| e.to_string())
}

/// CPU seconds of all of `pids` (`None`: none known, or one gone).
fn cpu_sum(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

async fn measure(
    args: &Args,
    keys: &Keys,
    k: usize,
    batch: usize,
    ledger: Option<&LedgerTarget>,
) -> Res<Value> {
    let mut c = args.group.master_conn().await?;
    // A fresh group may not hold the Function library yet.
    flashsale::redis::functions::ensure_loaded(&mut c)
        .await
        .map_err(|e| format!("loading the function library: {e}"))?;
    let sku = format!("wb{k}x{:08x}", rand::random::<u32>());
    create_sale(&mut c, keys, &sku, args.orders).await?;
    let t = Instant::now();
    preload(&args.group, keys, &sku, args.orders).await?;
    let orders = sale_field(&mut c, keys, &sku, "orders").await?;
    if orders != args.orders {
        return Err(format!("preloaded {orders} orders, wanted {}", args.orders));
    }
    eprintln!(
        "worker_bench: {sku}: {orders} orders queued in {:.1} s; starting {k} worker(s)",
        t.elapsed().as_secs_f64()
    );

    let redis_pids = args.group.data_node_pids().await.unwrap_or_default();
    let postmaster = ledger.and_then(|l| l.postmaster);
    let (redis_cpu0, ledger_cpu0) = (cpu_sum(&redis_pids), process_tree_cpu(postmaster));
    let (machine0, me0) = (machine_busy_seconds(), cpu_seconds(std::process::id()));
    let mut children = Vec::new();
    let spawned = Instant::now();
    for i in 0..k {
        let (out, err) = match &args.log_dir {
            Some(d) => {
                let f = std::fs::File::create(d.join(format!("worker-{sku}-{i}.log")))
                    .map_err(|e| e.to_string())?;
                let f2 = f.try_clone().map_err(|e| e.to_string())?;
                (Stdio::from(f), Stdio::from(f2))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let mut cmd = tokio::process::Command::new(&args.worker_bin);
        if let Some(l) = ledger {
            cmd.env("FLASHSALE_LEDGER_URL", &l.url);
        }
        let child = cmd
            .arg("--batch")
            .arg(batch.to_string())
            .arg("--discover-ms")
            .arg("100")
            .env("FLASHSALE_REDIS_SENTINELS", &args.group.sentinels)
            .env("FLASHSALE_REDIS_MASTER_NAME", &args.group.master_name)
            .env("FLASHSALE_KEY_PREFIX", keys.prefix())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .envs(
                args.group
                    .password
                    .as_ref()
                    .map(|p| ("FLASHSALE_REDIS_PASSWORD", p.as_str())),
            )
            .spawn()
            .map_err(|e| format!("{}: {e}", args.worker_bin.display()))?;
        children.push(child);
    }
    let pids: Vec<u32> = children.iter().filter_map(|c| c.id()).collect();

    let deadline = spawned + Duration::from_secs(args.timeout_s);
    let mut first: Option<Instant> = None;
    let mut timeline = Vec::new();
    let mut last_sample = spawned;
    let done = loop {
        let n = sale_field(&mut c, keys, &sku, "confirmed").await?;
        let now = Instant::now();
        if n > 0 && first.is_none() {
            first = Some(now);
        }
        if now.duration_since(last_sample) >= Duration::from_millis(500) {
            timeline.push(json!([now.duration_since(spawned).as_secs_f64(), n]));
            last_sample = now;
        }
        if n >= args.orders {
            break now;
        }
        if now >= deadline {
            for p in &pids {
                signal(*p, "KILL");
            }
            return Err(format!(
                "{k} worker(s) confirmed only {n} of {} orders in {} s",
                args.orders, args.timeout_s
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let cpu: f64 = pids.iter().filter_map(|p| cpu_seconds(*p)).sum();
    let diff = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    let redis_cpu = diff(redis_cpu0, cpu_sum(&redis_pids));
    let ledger_cpu = diff(ledger_cpu0, process_tree_cpu(postmaster));
    // What the rest of the machine used meanwhile, in cores: anything
    // well above 0 means the figure is disturbed.
    let others_cores = diff(machine0, machine_busy_seconds()).map(|busy| {
        let ours = cpu
            + redis_cpu.unwrap_or(0.0)
            + ledger_cpu.unwrap_or(0.0)
            + diff(me0, cpu_seconds(std::process::id())).unwrap_or(0.0);
        ((busy - ours) / done.duration_since(spawned).as_secs_f64().max(1e-3)).max(0.0)
    });
    for p in &pids {
        signal(*p, "TERM");
    }
    let mut exits = Vec::new();
    for mut ch in children {
        match tokio::time::timeout(Duration::from_secs(20), ch.wait()).await {
            Ok(Ok(st)) => exits.push(json!(st.code())),
            _ => {
                let _ = ch.start_kill();
                let _ = ch.wait().await;
                exits.push(json!("killed after 20 s"));
            }
        }
    }
    let first = first.unwrap_or(done);
    let drain = done.duration_since(first).as_secs_f64().max(1e-3);
    let from_spawn = done.duration_since(spawned).as_secs_f64().max(1e-3);
    let audit = audit(&mut c, keys, &sku).await?;
    let rows = match ledger {
        Some(l) => Some(ledger_rows(l, &sku).await?),
        None => None,
    };
    if !args.keep {
        cleanup(&mut c, keys, &sku).await?;
        if let Some(l) = ledger {
            sqlx::query("DELETE FROM orders WHERE sku = $1")
                .bind(&sku)
                .execute(&l.pool)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let per_order_us = |cpu: Option<f64>| cpu.map(|c| c * 1e6 / args.orders as f64);
    let r = json!({
        "workers": k,
        "orders": args.orders,
        "batch": batch,
        "ledger": ledger.is_some(),
        "ledger_rows": rows,
        "rate": args.orders as f64 / drain,
        "rate_from_spawn": args.orders as f64 / from_spawn,
        "drain_s": drain,
        "from_spawn_s": from_spawn,
        "worker_cpu_s": cpu,
        "worker_cpu_us_per_order": per_order_us(Some(cpu)),
        "redis_cpu_us_per_order": per_order_us(redis_cpu),
        "ledger_cpu_us_per_order": per_order_us(ledger_cpu),
        "others_cores": others_cores,
        "exit_codes": exits,
        "audit": audit,
        "timeline": timeline,
    });
    eprintln!(
        "worker_bench: {k} worker(s), batch {batch}, ledger {}: {:.0} orders/s ({:.0}/s from spawn), worker CPU {:.2} s, audit {}{}",
        if ledger.is_some() { "on" } else { "off" },
        r["rate"].as_f64().unwrap_or(0.0),
        r["rate_from_spawn"].as_f64().unwrap_or(0.0),
        cpu,
        r["audit"],
        rows.map_or_else(String::new, |n| format!(", ledger rows {n}")),
    );
    Ok(r)
}

/// Connects to the ledger and applies its schema (as a worker would at
/// start-up, once, outside the measurements).
async fn ledger_target(url: &str, postmaster: Option<u32>) -> Res<LedgerTarget> {
    let settings =
        LedgerSettings::parse(&Secret::new(url.to_owned())).map_err(|e| e.to_string())?;
    let ledger = Ledger::connect(&settings, "worker_bench")
        .await
        .map_err(|e| e.to_string())?;
    ledger.migrate().await.map_err(|e| e.to_string())?;
    ledger.close().await;
    let pool = PgPool::connect(url).await.map_err(|e| e.to_string())?;
    Ok(LedgerTarget {
        url: url.to_owned(),
        postmaster,
        pool,
    })
}

/// One line per measurement on stderr, as a Markdown table.
fn summary(results: &[Value]) {
    eprintln!(
        "\n| workers | batch | ledger | orders/s | worker CPU µs/order | Redis CPU µs/order | ledger CPU µs/order | others' CPU (cores) |\n|---:|---:|---|---:|---:|---:|---:|---:|"
    );
    let us = |v: &Value| {
        v.as_f64()
            .map_or_else(|| "-".to_owned(), |x| format!("{x:.1}"))
    };
    for r in results {
        eprintln!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r["workers"],
            r["batch"],
            if r["ledger"] == json!(true) {
                "on"
            } else {
                "off"
            },
            r["rate"]
                .as_f64()
                .map_or_else(|| "error".to_owned(), |x| format!("{x:.0}")),
            us(&r["worker_cpu_us_per_order"]),
            us(&r["redis_cpu_us_per_order"]),
            us(&r["ledger_cpu_us_per_order"]),
            r["others_cores"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |x| format!("{x:.2}")),
        );
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.orders == 0 || args.orders > 2_000_000 {
        eprintln!("worker_bench: --orders must be 1..=2000000");
        return std::process::ExitCode::from(2);
    }
    if !args.worker_bin.is_file() {
        eprintln!(
            "worker_bench: {} not found (cargo build --release)",
            args.worker_bin.display()
        );
        return std::process::ExitCode::from(2);
    }
    let keys = Keys::new(args.group.prefix.clone());
    if args.workers.iter().any(|k| !(1..=64).contains(k)) {
        eprintln!("worker_bench: worker counts must be 1..=64");
        return std::process::ExitCode::from(2);
    }
    if args.batch.iter().any(|b| !(1..=10_000).contains(b)) {
        eprintln!("worker_bench: batch sizes must be 1..=10000");
        return std::process::ExitCode::from(2);
    }
    // The ledger, when asked for: the kit's server unless a URL is given.
    let mut server = None;
    let ledger = if args.ledger == LedgerMode::Off {
        None
    } else {
        let url = match &args.ledger_url {
            Some(u) => u.clone(),
            None => {
                let pg = Postgres::init().await;
                let url = pg.url();
                server = Some(pg);
                url
            }
        };
        match ledger_target(&url, server.as_ref().and_then(Postgres::pid)).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("worker_bench: the ledger: {e}");
                return std::process::ExitCode::from(1);
            }
        }
    };
    let modes: Vec<Option<&LedgerTarget>> = match args.ledger {
        LedgerMode::Off => vec![None],
        LedgerMode::On => vec![ledger.as_ref()],
        LedgerMode::Both => vec![None, ledger.as_ref()],
    };
    let mut results = Vec::new();
    let mut failed = false;
    for &batch in &args.batch {
        for &k in &args.workers {
            for &mode in &modes {
                let what = format!(
                    "{k} worker(s), batch {batch}, ledger {}",
                    if mode.is_some() { "on" } else { "off" }
                );
                match measure(&args, &keys, k, batch, mode).await {
                    Ok(r) => {
                        let ok = r["audit"]["consistent"] == json!(true)
                            && r["audit"]["confirmed"] == json!(args.orders)
                            && r["audit"]["stream_pending"] == json!(0)
                            && (mode.is_none() || r["ledger_rows"] == json!(args.orders))
                            && r["exit_codes"]
                                .as_array()
                                .is_some_and(|v| v.iter().all(|c| c == &json!(0)));
                        if !ok {
                            eprintln!(
                                "worker_bench: {what}: audit, ledger rows or exit codes not clean"
                            );
                            failed = true;
                        }
                        results.push(r);
                    }
                    Err(e) => {
                        eprintln!("worker_bench: {what}: {e}");
                        results.push(json!({"workers": k, "batch": batch, "ledger": mode.is_some(), "error": e}));
                        failed = true;
                    }
                }
            }
        }
    }
    if let Some(l) = &ledger {
        l.pool.close().await;
    }
    drop(server);
    summary(&results);
    let report = json!({"tool": "worker_bench", "results": results});
    println!("{report}");
    if let Some(out) = &args.out
        && let Err(e) = std::fs::write(
            out,
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        )
    {
        eprintln!("worker_bench: {}: {e}", out.display());
        return std::process::ExitCode::from(2);
    }
    if failed {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    }
}
