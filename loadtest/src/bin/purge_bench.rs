//! `purge_bench` — what an ended sale costs in Redis memory, and what its
//! purge gives back and takes.
//!
//! One run: a Sentinel group (its own, started by the test kit as
//! `scripts/redis-group.sh` starts one, on the shipped settings; or the one
//! `FLASHSALE_REDIS_SENTINELS` / `_MASTER_NAME` / `_PASSWORD` name, e.g.
//! `. run/redis-group/env`, on a key prefix of its own), `INFO memory` of
//! the master as the baseline; a sale of `--orders` units (limit 1) whose
//! orders are made by pipelined `FCALL fs_purchase` on 4 connections (the
//! Function the server calls, as `worker_bench` preloads); one
//! `flashsale-worker` (`--purge-after-s 0`: it purges nothing itself)
//! confirms them — with `--ledger` it records them in a PostgreSQL ledger
//! first (the test kit's, unless `FLASHSALE_LEDGER_URL` names one) — and
//! is stopped; the sale is ended (`fs_end_sale`). Then, on the master:
//! `INFO memory` (`used_memory`, `used_memory_dataset`, `used_memory_rss`,
//! the overhead and the replication backlog within it),
//! the sale's keys by kind with the `MEMORY USAGE … SAMPLES 0` of every one
//! (order records, the units and first hashes, the stream as the worker
//! left it after trimming, the sale hash), and a sample of order records;
//! then the purge, timed: `sale::purge::purge`, the code path of `flashsale
//! sale purge` and of the workers' automatic purge (with `--ledger`, its
//! comparison of every order with the ledger included); then `INFO memory`
//! again once Redis has freed what `UNLINK` handed to its background thread
//! (`lazyfree_pending_objects` 0). Prints one JSON report (and writes it to
//! `--out`) and a summary on stderr.
//!
//! Rerun: `cargo build --release --bin flashsale-worker && cargo build
//! --release -p flashsale-loadtest --bin purge_bench &&
//! target/release/purge_bench` (add `--ledger`).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use flashsale::config::RedisArgs;
use flashsale::redis::functions::{Lifecycle, lifecycle_call, purchase_call};
use flashsale::redis::keys::Keys;
use flashsale::sale::Catalog;
use flashsale::sale::purge::{self, Unlisted};
use flashsale_loadtest::bench::GroupArgs;
use flashsale_loadtest::redis_group::{GroupOptions, RedisGroup};
use flashsale_testkit::postgres::Postgres;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    name = "purge_bench",
    about = "Redis memory of an ended sale before and after its purge, and the purge's time"
)]
struct Args {
    /// `host:port,…` of the Sentinels of a running group (default: start one).
    #[arg(long, env = "FLASHSALE_REDIS_SENTINELS")]
    sentinels: Option<String>,
    #[arg(long, env = "FLASHSALE_REDIS_MASTER_NAME", default_value = "mymaster")]
    master_name: String,
    #[arg(long, env = "FLASHSALE_REDIS_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Orders in the sale (1..=2000000).
    #[arg(long, default_value_t = 100_000)]
    orders: u64,
    /// Record the orders in a ledger and purge with it (the test kit's
    /// PostgreSQL unless FLASHSALE_LEDGER_URL is set).
    #[arg(long)]
    ledger: bool,
    #[arg(long, env = "FLASHSALE_LEDGER_URL", hide_env_values = true)]
    ledger_url: Option<String>,
    /// The flashsale-worker binary.
    #[arg(long, default_value = "target/release/flashsale-worker")]
    worker_bin: std::path::PathBuf,
    /// Order records whose MEMORY USAGE is reported one by one.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Write the JSON report here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

type Res<T> = Result<T, String>;

fn e2s(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// `INFO memory` of the master as numbers.
async fn memory(c: &mut MultiplexedConnection) -> Res<BTreeMap<String, i64>> {
    let text: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(c)
        .await
        .map_err(e2s)?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter_map(|(k, v)| Some((k.to_owned(), v.trim().parse::<i64>().ok()?)))
        .collect())
}

fn pick(m: &BTreeMap<String, i64>) -> Value {
    json!({
        "used_memory": m.get("used_memory"),
        "used_memory_dataset": m.get("used_memory_dataset"),
        "used_memory_rss": m.get("used_memory_rss"),
        "used_memory_overhead": m.get("used_memory_overhead"),
        "mem_replication_backlog": m.get("mem_replication_backlog"),
        "mem_clients_slaves": m.get("mem_clients_slaves"),
        "mem_clients_normal": m.get("mem_clients_normal"),
        "lazyfree_pending_objects": m.get("lazyfree_pending_objects"),
    })
}

/// Waits until the background thread has freed what UNLINK handed it.
async fn settled_memory(c: &mut MultiplexedConnection) -> Res<BTreeMap<String, i64>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = memory(c).await?;
        if m.get("lazyfree_pending_objects").copied().unwrap_or(0) == 0 || Instant::now() > deadline
        {
            return Ok(m);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_sale(c: &mut MultiplexedConnection, keys: &Keys, sku: &str, n: u64) -> Res<()> {
    flashsale_loadtest::bench::create_bench_sale(c, keys, sku, "purge bench", n, 3_600_000).await
}

/// `n` orders, one shopper each, by pipelined fs_purchase on 4 connections.
async fn preload(group: &GroupArgs, keys: &Keys, sku: &str, n: u64) -> Res<()> {
    const LANES: u64 = 4;
    const CHUNK: u64 = 1000;
    let mut tasks = Vec::new();
    for lane in 0..LANES {
        let mut c = group.master_conn().await?;
        let (keys, sku) = (keys.clone(), sku.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut i = lane * CHUNK;
            while i < n {
                let mut pipe = redis::pipe();
                for j in i..(i + CHUNK).min(n) {
                    // `<sku>.<32 hex>`, the server's order id format.
                    let order_id = format!("{sku}.{:032x}", u128::from(j) | (1u128 << 120));
                    let user = format!("shopper-{j:07}");
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
        t.await.map_err(e2s)??;
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

/// Every key of the sale, grouped by kind (`order`, `units`, `first`,
/// `stream`, `sale`, …): count and total `MEMORY USAGE … SAMPLES 0`; the
/// order records' usages one by one for the first `samples`.
async fn census(
    c: &mut MultiplexedConnection,
    keys: &Keys,
    sku: &str,
    samples: usize,
) -> Res<(Value, Vec<i64>)> {
    let tag = keys.sale_pattern(sku);
    let head = tag.trim_end_matches('*').to_owned();
    let mut kinds: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    let mut order_samples = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&tag)
            .arg("COUNT")
            .arg(2000)
            .query_async(c)
            .await
            .map_err(e2s)?;
        if !found.is_empty() {
            let mut pipe = redis::pipe();
            for k in &found {
                pipe.cmd("MEMORY").arg("USAGE").arg(k).arg("SAMPLES").arg(0);
            }
            let sizes: Vec<Option<i64>> = pipe.query_async(c).await.map_err(e2s)?;
            for (k, size) in found.iter().zip(sizes) {
                let size = size.unwrap_or(0);
                let rest = k.strip_prefix(&head).unwrap_or(k);
                let kind = rest.split(':').next().unwrap_or(rest).to_owned();
                if kind == "order" && order_samples.len() < samples {
                    order_samples.push(size);
                }
                let e = kinds.entry(kind).or_default();
                e.0 += 1;
                e.1 += size;
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let by_kind: serde_json::Map<String, Value> = kinds
        .into_iter()
        .map(|(k, (n, bytes))| (k, json!({"keys": n, "bytes": bytes})))
        .collect();
    Ok((Value::Object(by_kind), order_samples))
}

async fn stream_len(c: &mut MultiplexedConnection, keys: &Keys, sku: &str) -> Res<i64> {
    redis::cmd("XLEN")
        .arg(keys.stream(sku))
        .query_async(c)
        .await
        .map_err(e2s)
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn delta(a: &BTreeMap<String, i64>, b: &BTreeMap<String, i64>, k: &str) -> i64 {
    a.get(k).copied().unwrap_or(0) - b.get(k).copied().unwrap_or(0)
}

async fn run(args: &Args, group: &GroupArgs, ledger_url: Option<String>) -> Res<Value> {
    let keys = Keys::new(group.prefix.clone());
    let mut c = group.master_conn().await?;
    flashsale::redis::functions::ensure_loaded(&mut c)
        .await
        .map_err(|e| format!("loading the function library: {e}"))?;
    let sku = format!("pb{:08x}", rand::random::<u32>());
    let baseline = settled_memory(&mut c).await?;

    create_sale(&mut c, &keys, &sku, args.orders).await?;
    let t = Instant::now();
    preload(group, &keys, &sku, args.orders).await?;
    let made = sale_field(&mut c, &keys, &sku, "orders").await?;
    if made != args.orders {
        return Err(format!("{made} orders made, wanted {}", args.orders));
    }
    let preload_s = t.elapsed().as_secs_f64();
    eprintln!(
        "purge_bench: {sku}: {made} orders in {preload_s:.1} s; a worker confirms them{}",
        if ledger_url.is_some() {
            " (recording them in the ledger)"
        } else {
            ""
        }
    );

    let t = Instant::now();
    let mut worker = tokio::process::Command::new(&args.worker_bin);
    worker
        .args(["--discover-ms", "100", "--purge-after-s", "0"])
        .env("FLASHSALE_REDIS_SENTINELS", &group.sentinels)
        .env("FLASHSALE_REDIS_MASTER_NAME", &group.master_name)
        .env("FLASHSALE_KEY_PREFIX", &group.prefix)
        .env_remove("FLASHSALE_REDIS_URL")
        .env_remove("FLASHSALE_LEDGER_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(p) = &group.password {
        worker.env("FLASHSALE_REDIS_PASSWORD", p);
    }
    if let Some(url) = &ledger_url {
        worker.env("FLASHSALE_LEDGER_URL", url);
    }
    let mut worker = worker
        .spawn()
        .map_err(|e| format!("{}: {e}", args.worker_bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while sale_field(&mut c, &keys, &sku, "confirmed").await? < args.orders {
        if Instant::now() > deadline {
            return Err("the worker did not confirm every order within 600 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let confirm_s = t.elapsed().as_secs_f64();
    // Its last trim of the stream, then stopped: the purge is ours.
    tokio::time::sleep(Duration::from_secs(6)).await;
    if let Some(pid) = worker.id() {
        signal(pid, "TERM");
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), worker.wait()).await;
    let _: redis::Value = lifecycle_call(&keys, &sku, Lifecycle::End)
        .query_async(&mut c)
        .await
        .map_err(e2s)?;

    let before = settled_memory(&mut c).await?;
    let stream_entries = stream_len(&mut c, &keys, &sku).await?;
    let (by_kind, mut samples) = census(&mut c, &keys, &sku, args.samples).await?;
    samples.sort_unstable();
    let sample_stats = json!({
        "n": samples.len(),
        "min": samples.first(),
        "median": samples.get(samples.len() / 2),
        "max": samples.last(),
    });

    // The purge, as `flashsale sale purge` and the workers run it.
    let mut argv = vec![
        "purge_bench".to_owned(),
        "--redis-sentinels".into(),
        group.sentinels.clone(),
        "--redis-master-name".into(),
        group.master_name.clone(),
        "--key-prefix".into(),
        group.prefix.clone(),
    ];
    if let Some(p) = &group.password {
        argv.extend(["--redis-password".into(), p.clone()]);
    }
    #[derive(Parser)]
    struct R {
        #[command(flatten)]
        redis: RedisArgs,
    }
    let settings = R::try_parse_from(argv)
        .map_err(e2s)?
        .redis
        .settings()
        .map_err(e2s)?;
    let redis = flashsale::redis::Redis::connect(settings)
        .await
        .map_err(e2s)?;
    let catalog = Catalog::new(redis, Duration::ZERO);
    let ledger = match &ledger_url {
        Some(url) => {
            let s = flashsale::ledger::LedgerSettings::parse(&flashsale::config::Secret::new(
                url.clone(),
            ))
            .map_err(e2s)?;
            Some(
                flashsale::ledger::Ledger::connect(&s, "purge_bench")
                    .await
                    .map_err(e2s)?,
            )
        }
        None => None,
    };
    let t = Instant::now();
    let purged = purge::purge(
        &catalog,
        ledger.as_ref(),
        &sku,
        Duration::ZERO,
        Unlisted::Finish,
    )
    .await
    .map_err(|e| format!("purge: {e}"))?;
    let purge_s = t.elapsed().as_secs_f64();
    let after_immediately = memory(&mut c).await?;
    let after = settled_memory(&mut c).await?;
    let settle_s = t.elapsed().as_secs_f64() - purge_s;
    let left: (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg(keys.sale_pattern(&sku))
        .arg("COUNT")
        .arg(100_000)
        .query_async(&mut c)
        .await
        .map_err(e2s)?;
    if let Some(l) = &ledger {
        l.close().await;
    }

    let n = args.orders as f64;
    let held = delta(&before, &baseline, "used_memory");
    let held_dataset = delta(&before, &baseline, "used_memory_dataset");
    let freed = delta(&before, &after, "used_memory");
    let freed_dataset = delta(&before, &after, "used_memory_dataset");
    let order_bytes = by_kind["order"]["bytes"].as_i64().unwrap_or(0);
    let report = json!({
        "tool": "purge_bench",
        "orders": args.orders,
        "ledger": ledger_url.is_some(),
        "sku": sku,
        "preload_s": preload_s,
        "confirm_s": confirm_s,
        "memory": {
            "baseline": pick(&baseline),
            "before_purge": pick(&before),
            "after_purge_immediately": pick(&after_immediately),
            "after_purge": pick(&after),
        },
        "sale_used_memory": held,
        "sale_used_memory_dataset": held_dataset,
        "bytes_per_order_used_memory": held as f64 / n,
        "bytes_per_order_dataset": held_dataset as f64 / n,
        "purge_freed_used_memory": freed,
        "purge_freed_dataset": freed_dataset,
        "after_minus_baseline_used_memory": delta(&after, &baseline, "used_memory"),
        // What stays: mostly the replication backlog, which the preload
        // filled (a fixed cost up to repl-backlog-size, not the sale's).
        "after_minus_baseline_backlog": delta(&after, &baseline, "mem_replication_backlog"),
        "keys_by_kind": by_kind,
        "order_record_bytes_per_order": order_bytes as f64 / n,
        "order_record_sample": sample_stats,
        "stream_entries_left_by_the_worker": stream_entries,
        "purged": purged,
        "purge_s": purge_s,
        "lazyfree_settle_s": settle_s,
        "keys_left_after": left.1.len(),
    });
    eprintln!(
        "purge_bench: {} orders{}: the sale held {:.1} MB (used_memory; dataset {:.1} MB) = {:.0} B per order ({:.0} B dataset); an order record {} B (median of {}); purge of {} keys in {:.2} s freed {:.1} MB (dataset {:.1} MB); {} keys left; the replication backlog grew by {:.1} MB and stays",
        args.orders,
        if ledger_url.is_some() {
            " with the ledger"
        } else {
            ""
        },
        held as f64 / 1e6,
        held_dataset as f64 / 1e6,
        held as f64 / n,
        held_dataset as f64 / n,
        report["order_record_sample"]["median"],
        report["order_record_sample"]["n"],
        purged.keys,
        purge_s,
        freed as f64 / 1e6,
        freed_dataset as f64 / 1e6,
        left.1.len(),
        delta(&after, &baseline, "mem_replication_backlog") as f64 / 1e6,
    );
    Ok(report)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.orders == 0 || args.orders > 2_000_000 {
        eprintln!("purge_bench: --orders must be 1..=2000000");
        return std::process::ExitCode::from(2);
    }
    if !args.worker_bin.is_file() {
        eprintln!(
            "purge_bench: {} not found (cargo build --release --bin flashsale-worker)",
            args.worker_bin.display()
        );
        return std::process::ExitCode::from(2);
    }
    // A group of its own unless one is named; a prefix of its own either way.
    let own = match &args.sentinels {
        Some(_) => None,
        None => Some(RedisGroup::start(GroupOptions::default()).await),
    };
    let group = match &own {
        Some(g) => GroupArgs {
            sentinels: g.sentinels_env(),
            master_name: g.master_name().to_owned(),
            password: Some(g.password().to_owned()),
            prefix: "pb".into(),
        },
        None => GroupArgs {
            sentinels: args.sentinels.clone().unwrap_or_default(),
            master_name: args.master_name.clone(),
            password: args.password.clone(),
            prefix: format!("pb{:04x}", rand::random::<u16>()),
        },
    };
    let pg = match (args.ledger, &args.ledger_url) {
        (true, None) => Some(Postgres::init().await),
        _ => None,
    };
    let ledger_url = match (&pg, args.ledger) {
        (Some(pg), _) => Some(pg.url()),
        (None, true) => args.ledger_url.clone(),
        (None, false) => None,
    };
    let result = run(&args, &group, ledger_url).await;
    drop(pg);
    drop(own);
    match result {
        Ok(report) => {
            println!("{report}");
            if let Some(out) = &args.out
                && let Err(e) = std::fs::write(
                    out,
                    serde_json::to_string_pretty(&report).unwrap_or_default(),
                )
            {
                eprintln!("purge_bench: {}: {e}", out.display());
                return std::process::ExitCode::from(1);
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("purge_bench: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
