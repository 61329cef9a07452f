//! `pool_bench` — the purchase Function under the server's concurrency,
//! through two connection shapes: the product's few multiplexed connections
//! shared by every request, and a deadpool-redis pool of dedicated
//! connections (a request takes one, calls, gives it back). Same Function,
//! same node, same number of requests in flight; it reports calls/s,
//! latency and the client's CPU per call, so the choice between the shapes
//! is a measurement (see docs/ARCHITECTURE.md, "Connections").
//!
//! ```text
//! pool_bench --url redis://127.0.0.1:6379 --in-flight 256 --shape multiplexed:4 --shape pool:16
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use deadpool_redis::{Config, Runtime};
use flashsale::redis::functions::{PurchaseReply, SaleFields, purchase_call};
use flashsale::redis::keys::Keys;
use flashsale_loadtest::bench::{cpu_seconds, histogram_json, latency_histogram};
use redis::aio::MultiplexedConnection;
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "pool_bench",
    about = "FCALL fs_purchase through multiplexed connections vs a deadpool-redis pool"
)]
struct Args {
    /// redis:// URL of the node (a master; no WAIT is sent).
    #[arg(long)]
    url: String,
    /// Requests in flight at once (tasks), as in a busy server.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Seconds per shape (1..=120).
    #[arg(short = 'z', long, default_value_t = 5.0)]
    duration: f64,
    /// `multiplexed:N` (N shared connections, round-robin) or `pool:N`
    /// (deadpool-redis, at most N dedicated connections); repeatable.
    #[arg(long = "shape", required = true)]
    shapes: Vec<String>,
    /// Key prefix of the benchmark's sale.
    #[arg(long, default_value = "poolbench")]
    prefix: String,
}

enum Shape {
    Multiplexed(Vec<MultiplexedConnection>, AtomicUsize),
    Pool(deadpool_redis::Pool),
}

impl Shape {
    async fn call(&self, cmd: &redis::Cmd) -> redis::RedisResult<PurchaseReply> {
        match self {
            Shape::Multiplexed(conns, next) => {
                let i = next.fetch_add(1, Ordering::Relaxed) % conns.len();
                cmd.query_async(&mut conns[i].clone()).await
            }
            Shape::Pool(pool) => {
                let mut conn = pool.get().await.map_err(|e| {
                    redis::RedisError::from((redis::ErrorKind::Io, "pool", e.to_string()))
                })?;
                cmd.query_async(&mut *conn).await
            }
        }
    }
}

async fn build(url: &str, spec: &str) -> Result<Shape, String> {
    let (kind, n) = spec
        .split_once(':')
        .and_then(|(k, n)| Some((k, n.parse::<usize>().ok().filter(|n| *n > 0)?)))
        .ok_or_else(|| format!("--shape {spec}: want multiplexed:N or pool:N"))?;
    match kind {
        "multiplexed" => {
            let client = redis::Client::open(url).map_err(|e| e.to_string())?;
            let mut conns = Vec::with_capacity(n);
            for _ in 0..n {
                conns.push(
                    client
                        .get_multiplexed_async_connection()
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            Ok(Shape::Multiplexed(conns, AtomicUsize::new(0)))
        }
        "pool" => {
            let mut cfg = Config::from_url(url);
            cfg.pool = Some(deadpool_redis::PoolConfig::new(n));
            let pool = cfg
                .create_pool(Some(Runtime::Tokio1))
                .map_err(|e| e.to_string())?;
            // Open every connection before the clock starts.
            let mut held = Vec::with_capacity(n);
            for _ in 0..n {
                held.push(pool.get().await.map_err(|e| e.to_string())?);
            }
            drop(held);
            Ok(Shape::Pool(pool))
        }
        other => Err(format!("--shape {spec}: unknown kind {other}")),
    }
}

async fn run(
    args: &Args,
    spec: &str,
    keys: &Arc<Keys>,
    sku: &str,
) -> Result<serde_json::Value, String> {
    let shape = Arc::new(build(&args.url, spec).await?);
    let stop = Arc::new(AtomicBool::new(false));
    let run_id: u32 = rand::random();
    let cpu0 = cpu_seconds(std::process::id());
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.in_flight);
    for t in 0..args.in_flight {
        let (shape, stop, keys, sku) = (shape.clone(), stop.clone(), keys.clone(), sku.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut hist = latency_histogram();
            let mut errors = 0u64;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let order_id = format!("{sku}.{}", uuid::Uuid::new_v4().simple());
                let user = format!("pb{run_id:x}t{t}i{i}");
                let cmd = purchase_call(&keys, &sku, &user, 1, &order_id, None);
                let t0 = Instant::now();
                match shape.call(&cmd).await {
                    Ok(PurchaseReply::Created { .. }) => {
                        hist.saturating_record(t0.elapsed().as_micros().max(1) as u64)
                    }
                    _ => errors += 1,
                }
            }
            (hist, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    stop.store(true, Ordering::Relaxed);
    let mut hist = latency_histogram();
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.map_err(|e| e.to_string())?;
        hist.add(&h).map_err(|e| e.to_string())?;
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = match (cpu0, cpu_seconds(std::process::id())) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Ok(json!({
        "shape": spec,
        "in_flight": args.in_flight,
        "calls": hist.len(),
        "rps": hist.len() as f64 / elapsed,
        "errors": errors,
        "client_cpu_us_per_call": cpu.map(|c| c * 1e6 / hist.len().max(1) as f64),
        "latency": histogram_json(&hist),
    }))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if !(args.duration >= 1.0 && args.duration <= 120.0) || args.in_flight == 0 {
        eprintln!("pool_bench: --duration must be in [1, 120] and --in-flight at least 1");
        return std::process::ExitCode::from(2);
    }
    let keys = Arc::new(Keys::new(args.prefix.clone()));
    let sku = format!("pb{:x}", rand::random::<u32>());
    let created = async {
        let mut c = redis::Client::open(args.url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        let fields = SaleFields {
            sku: &sku,
            name: "pool bench",
            description: "",
            price_cents: 1,
            stock: 100_000_000,
            starts_ms: 0,
            ends_ms: 253_402_300_799_999,
            per_user_limit: 1,
            currency: "USD",
            image_url: "",
        };
        flashsale_loadtest::bench::create_indexed_sale(&mut c, &keys, &fields).await
    };
    if let Err(e) = created.await {
        eprintln!("pool_bench: creating the sale: {e}");
        return std::process::ExitCode::from(2);
    }
    for spec in &args.shapes {
        match run(&args, spec, &keys, &sku).await {
            Ok(report) => println!("{report}"),
            Err(e) => {
                eprintln!("pool_bench: {e}");
                return std::process::ExitCode::from(1);
            }
        }
    }
    std::process::ExitCode::SUCCESS
}
