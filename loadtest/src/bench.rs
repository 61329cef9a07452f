//! Helpers of the benchmarks (`fcall_bench`, `worker_bench`): finding the
//! master of a Sentinel group from the same environment `flashsale serve`
//! reads, and small measurement utilities.

use std::time::Duration;

use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};

/// Where the group is: `FLASHSALE_REDIS_SENTINELS`, `_MASTER_NAME`, `_PASSWORD`.
#[derive(Clone, Debug, clap::Args)]
pub struct GroupArgs {
    /// `host:port,…` of the Sentinels.
    #[arg(long, env = "FLASHSALE_REDIS_SENTINELS")]
    pub sentinels: String,
    /// The monitored master's name.
    #[arg(long, env = "FLASHSALE_REDIS_MASTER_NAME", default_value = "mymaster")]
    pub master_name: String,
    /// Password of the data nodes.
    #[arg(long, env = "FLASHSALE_REDIS_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Key prefix (as `FLASHSALE_KEY_PREFIX`).
    #[arg(long, env = "FLASHSALE_KEY_PREFIX", default_value = "fs")]
    pub prefix: String,
}

fn config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)))
}

impl GroupArgs {
    /// The master's address as the first Sentinel that answers names it.
    pub async fn master_addr(&self) -> Result<(String, u16), String> {
        let mut last = String::from("no Sentinel given");
        for s in self
            .sentinels
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let client = Client::open(format!("redis://{s}/")).map_err(|e| e.to_string())?;
            let mut c = match client
                .get_multiplexed_async_connection_with_config(&config())
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    last = format!("{s}: {e}");
                    continue;
                }
            };
            let r: Result<Option<(String, u16)>, _> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&self.master_name)
                .query_async(&mut c)
                .await;
            match r {
                Ok(Some(addr)) => return Ok(addr),
                Ok(None) => last = format!("{s}: does not know {}", self.master_name),
                Err(e) => last = format!("{s}: {e}"),
            }
        }
        Err(format!("no master found: {last}"))
    }

    /// A new connection to the master (one per caller: WAIT is per connection).
    pub async fn master_conn(&self) -> Result<MultiplexedConnection, String> {
        let (host, port) = self.master_addr().await?;
        self.conn_to(&host, port).await
    }

    /// PIDs of the master and of its replicas (each one's `INFO server`
    /// `process_id`; the replicas as the master's `INFO replication` lists
    /// them), for CPU accounting when they run on this host.
    pub async fn data_node_pids(&self) -> Result<Vec<u32>, String> {
        let (host, port) = self.master_addr().await?;
        let mut c = self.conn_to(&host, port).await?;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        let mut nodes = vec![(host, port)];
        for line in info.lines().filter(|l| l.starts_with("slave")) {
            let field = |k: &str| {
                line.split([':', ','])
                    .find_map(|f| f.strip_prefix(k).map(str::to_owned))
            };
            if let (Some(ip), Some(p)) = (field("ip="), field("port=").and_then(|p| p.parse().ok()))
            {
                nodes.push((ip, p));
            }
        }
        let mut pids = Vec::new();
        for (h, p) in nodes {
            let mut c = self.conn_to(&h, p).await?;
            let info: String = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(pid) = info
                .lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .and_then(|v| v.trim().parse().ok())
            {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    pub async fn conn_to(&self, host: &str, port: u16) -> Result<MultiplexedConnection, String> {
        let url = match &self.password {
            Some(p) => format!(
                "redis://:{}@{host}:{port}/",
                crate::redis_group::url_encode(p)
            ),
            None => format!("redis://{host}:{port}/"),
        };
        let client = Client::open(url).map_err(|e| e.to_string())?;
        client
            .get_multiplexed_async_connection_with_config(&config())
            .await
            .map_err(|e| format!("{host}:{port}: {e}"))
    }
}

/// An HDR histogram of latencies in µs (1 µs .. 120 s, 3 digits).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

/// `{count, mean_ms, p50_ms, p90_ms, p99_ms, p999_ms, max_ms}`.
pub fn histogram_json(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |us: u64| us as f64 / 1000.0;
    serde_json::json!({
        "count": h.len(),
        "mean_ms": h.mean() / 1000.0,
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

/// User + system CPU seconds of a process, from `/proc/PID/stat` (assumes
/// the usual 100 clock ticks per second).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of stat(5), so utime (14) is f[11], stime (15) f[12].
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU seconds of a process and of every process it started that is still
/// running (a PostgreSQL server: the postmaster and its backends; those
/// that exited are in its own `cutime` only once reaped, and not counted).
pub fn process_tree_cpu(root: Option<u32>) -> Option<f64> {
    let root = root?;
    let mut total = cpu_seconds(root)?;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(root) {
            total += cpu_seconds(pid).unwrap_or(0.0);
        }
    }
    Some(total)
}

/// CPU seconds every CPU of the machine spent busy (not idle, not waiting
/// for I/O), from `/proc/stat`: around a measurement, minus what the
/// measured processes used, what the rest of the machine took.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    let total: f64 = f.iter().take(8).sum();
    let idle = f.get(3)? + f.get(4)?;
    Some((total - idle) / 100.0)
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Creates a sale straight on one master the way the service does: the
/// sale (`fs_create_sale`), then its place in the catalog index (the
/// index may be in another slot, so the Function does not write it).
pub async fn create_indexed_sale(
    conn: &mut MultiplexedConnection,
    keys: &flashsale::redis::Keys,
    fields: &flashsale::redis::functions::SaleFields<'_>,
) -> redis::RedisResult<flashsale::redis::functions::CreateSaleReply> {
    use flashsale::redis::functions::{CreateSaleReply, create_sale_call, index_call};
    let r: CreateSaleReply = create_sale_call(keys, fields).query_async(conn).await?;
    if matches!(r, CreateSaleReply::Created | CreateSaleReply::Replayed) {
        let _: i64 = index_call(keys, fields.sku, fields.starts_ms)
            .query_async(conn)
            .await?;
    }
    Ok(r)
}

/// [`create_indexed_sale`] of an open sale for a bench: `stock` units, one
/// per shopper, open since a second ago for `open_ms`. Anything but a new
/// sale is an error.
pub async fn create_bench_sale(
    conn: &mut MultiplexedConnection,
    keys: &flashsale::redis::Keys,
    sku: &str,
    name: &str,
    stock: u64,
    open_ms: i64,
) -> Result<(), String> {
    use flashsale::redis::functions::{CreateSaleReply, SaleFields};
    let now = now_unix_ms();
    let fields = SaleFields {
        sku,
        name,
        description: "",
        price_cents: 1999,
        stock: stock as i64,
        starts_ms: now - 1000,
        ends_ms: now + open_ms,
        per_user_limit: 1,
        currency: "USD",
        image_url: "",
    };
    match create_indexed_sale(conn, keys, &fields).await {
        Ok(CreateSaleReply::Created) => Ok(()),
        Ok(r) => Err(format!("fs_create_sale replied {r:?}")),
        Err(e) => Err(e.to_string()),
    }
}
