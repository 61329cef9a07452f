//! `fcall_bench` — the purchase Function straight from a Rust client, with
//! and without a `WAIT` after every call: the per-call cost of replication
//! safety that `redis-benchmark` cannot show (it cannot send `WAIT` after
//! each `FCALL` of a client).
//!
//! `-c` tasks, each on its own connection to the master (found through the
//! Sentinels of `FLASHSALE_REDIS_SENTINELS`), call `FCALL fs_purchase` on an
//! existing sale (`--sku`; give it a huge stock and per-shopper limit) with a
//! fresh user and order id every time, then — with `--wait N` — `WAIT N
//! 1000`, one call in flight per connection, for `--duration` seconds.
//!
//! Prints one JSON line (and writes `--out`): calls/s and latency of the pair.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use flashsale::redis::functions::purchase_call;
use flashsale::redis::keys::Keys;
use flashsale_loadtest::bench::{GroupArgs, histogram_json, latency_histogram};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "fcall_bench",
    about = "FCALL fs_purchase (+ WAIT) from a plain Rust client"
)]
struct Args {
    #[command(flatten)]
    group: GroupArgs,
    /// An existing sale with enough stock and per-shopper limit.
    #[arg(long)]
    sku: String,
    /// Connections, one call in flight on each.
    #[arg(short = 'c', long, default_value_t = 50)]
    connections: usize,
    /// Seconds (1..=600).
    #[arg(short = 'z', long, default_value_t = 5.0)]
    duration: f64,
    /// `WAIT N 1000` after every call; 0 = no WAIT.
    #[arg(long, default_value_t = 0)]
    wait: u32,
    /// Write the JSON report here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if !(args.duration > 0.0 && args.duration <= 600.0) || args.connections == 0 {
        eprintln!("fcall_bench: --duration must be in (0, 600] and -c at least 1");
        return std::process::ExitCode::from(2);
    }
    let (host, port) = match args.group.master_addr().await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fcall_bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let keys = Arc::new(Keys::new(args.group.prefix.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let run_id: u32 = rand::random();
    let mut conns = Vec::new();
    for _ in 0..args.connections {
        match args.group.conn_to(&host, port).await {
            Ok(c) => conns.push(c),
            Err(e) => {
                eprintln!("fcall_bench: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (t, mut conn) in conns.into_iter().enumerate() {
        let keys = keys.clone();
        let stop = stop.clone();
        let sku = args.sku.clone();
        let wait = args.wait;
        tasks.push(tokio::spawn(async move {
            let mut hist = latency_histogram();
            let mut errors = 0u64;
            let mut other = 0u64;
            let mut first_error = None;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let user = format!("fb{run_id:x}t{t}i{i}");
                // `<sku>.<32 hex>`, the server's order id format.
                let order_id = format!("{sku}.{}", uuid::Uuid::new_v4().simple());
                let fcall = purchase_call(&keys, &sku, &user, 1, &order_id, None);
                let t0 = Instant::now();
                let r: redis::RedisResult<redis::Value> = fcall.query_async(&mut conn).await;
                let ok = match r {
                    Ok(redis::Value::Array(v)) => {
                        if !matches!(v.first(), Some(redis::Value::BulkString(b)) if b == b"created")
                        {
                            other += 1;
                        }
                        true
                    }
                    Ok(_) => {
                        other += 1;
                        true
                    }
                    Err(e) => {
                        first_error.get_or_insert_with(|| e.to_string());
                        false
                    }
                };
                let ok = ok
                    && (wait == 0 || {
                        let w: redis::RedisResult<i64> = redis::cmd("WAIT")
                            .arg(wait)
                            .arg(1000)
                            .query_async(&mut conn)
                            .await;
                        match w {
                            Ok(n) if n >= i64::from(wait) => true,
                            Ok(_) => {
                                first_error.get_or_insert_with(|| "WAIT shortfall".into());
                                false
                            }
                            Err(e) => {
                                first_error.get_or_insert_with(|| e.to_string());
                                false
                            }
                        }
                    });
                if ok {
                    hist.saturating_record(t0.elapsed().as_micros().max(1) as u64);
                } else {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            (hist, errors, other, first_error)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    stop.store(true, Ordering::Relaxed);
    let mut hist = latency_histogram();
    let (mut errors, mut other, mut first_error) = (0, 0, None);
    for t in tasks {
        if let Ok((h, e, o, fe)) = t.await {
            hist.add(&h).expect("same bounds");
            errors += e;
            other += o;
            if first_error.is_none() {
                first_error = fe;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let report = json!({
        "tool": "fcall_bench",
        "connections": args.connections,
        "wait": args.wait,
        "elapsed_s": elapsed,
        "calls": hist.len(),
        "rps": hist.len() as f64 / elapsed,
        "not_created": other,
        "errors": errors,
        "first_error": first_error,
        "latency": histogram_json(&hist),
    });
    println!("{report}");
    if let Some(out) = &args.out
        && let Err(e) = std::fs::write(out, report.to_string())
    {
        eprintln!("fcall_bench: {}: {e}", out.display());
        return std::process::ExitCode::from(2);
    }
    if hist.is_empty() {
        eprintln!("fcall_bench: no call succeeded: {first_error:?}");
        return std::process::ExitCode::from(1);
    }
    std::process::ExitCode::SUCCESS
}
