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

use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use flashsale::redis::functions::{
    AuditReply, CreateSaleReply, SaleFields, audit_call, create_sale_call, purchase_call,
};
use flashsale::redis::keys::Keys;
use flashsale_loadtest::bench::{GroupArgs, cpu_seconds, now_unix_ms};
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

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
    /// `--batch` of each worker.
    #[arg(long, default_value_t = 128)]
    batch: usize,
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

type Res<T> = Result<T, String>;

fn e2s(e: redis::RedisError) -> String {
    e.to_string()
}

async fn create_sale(c: &mut MultiplexedConnection, keys: &Keys, sku: &str, stock: u64) -> Res<()> {
    let now = now_unix_ms();
    let fields = SaleFields {
        sku,
        name: "worker bench",
        description: "",
        price_cents: 100,
        stock: stock as i64,
        starts_ms: now - 1000,
        ends_ms: now + 86_400_000,
        per_user_limit: 1,
        currency: "USD",
        image_url: "",
    };
    let r: CreateSaleReply = create_sale_call(keys, &fields)
        .query_async(c)
        .await
        .map_err(e2s)?;
    if r != CreateSaleReply::Created {
        return Err(format!("fs_create_sale replied {r:?}"));
    }
    Ok(())
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

async fn measure(args: &Args, keys: &Keys, k: usize) -> Res<Value> {
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
        let child = tokio::process::Command::new(&args.worker_bin)
            .arg("--batch")
            .arg(args.batch.to_string())
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
    if !args.keep {
        cleanup(&mut c, keys, &sku).await?;
    }
    let r = json!({
        "workers": k,
        "orders": args.orders,
        "batch": args.batch,
        "rate": args.orders as f64 / drain,
        "rate_from_spawn": args.orders as f64 / from_spawn,
        "drain_s": drain,
        "from_spawn_s": from_spawn,
        "worker_cpu_s": cpu,
        "exit_codes": exits,
        "audit": audit,
        "timeline": timeline,
    });
    eprintln!(
        "worker_bench: {k} worker(s): {:.0} orders/s ({:.0}/s from spawn), worker CPU {:.2} s, audit {}",
        r["rate"].as_f64().unwrap_or(0.0),
        r["rate_from_spawn"].as_f64().unwrap_or(0.0),
        cpu,
        r["audit"]
    );
    Ok(r)
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
    let mut results = Vec::new();
    let mut failed = false;
    for &k in &args.workers {
        if !(1..=64).contains(&k) {
            eprintln!("worker_bench: worker counts must be 1..=64");
            return std::process::ExitCode::from(2);
        }
        match measure(&args, &keys, k).await {
            Ok(r) => {
                let ok = r["audit"]["consistent"] == json!(true)
                    && r["audit"]["confirmed"] == json!(args.orders)
                    && r["audit"]["stream_pending"] == json!(0)
                    && r["exit_codes"]
                        .as_array()
                        .is_some_and(|v| v.iter().all(|c| c == &json!(0)));
                if !ok {
                    eprintln!("worker_bench: {k} worker(s): audit or exit codes not clean");
                    failed = true;
                }
                results.push(r);
            }
            Err(e) => {
                eprintln!("worker_bench: {k} worker(s): {e}");
                results.push(json!({"workers": k, "error": e}));
                failed = true;
            }
        }
    }
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
