//! `loadgen` — a closed-loop HTTP/1.1 load generator with a pool of shopper
//! tokens, for the scenarios oha cannot express: every purchase carries the
//! next token of the pool (`--tokens FILE`, one JWT per line, as written by
//! `flashsale token --users N --out FILE`), so no two requests in a row share
//! an identity and a live sale measures purchases, not the per-shopper 409.
//!
//! `-c` connections are opened first (keep-alive, one request in flight on
//! each), then every connection fires back to back from `--start-at-ms` (a
//! Unix time in ms, e.g. the second a sale opens) or as soon as all are
//! open (the clock starts then), until `--duration` seconds have passed or
//! `--requests` were sent, whichever comes first. Both are bounded.
//! Latencies go into HDR histograms (µs, 3 significant digits) overall and
//! per status, plus per-second counts per status, so a stampede reports when
//! the last 202 and the first 410 came.
//!
//! The request mix is `--req WEIGHT:METHOD:PATH`, repeatable (e.g. 45 % the
//! product page, 45 % the product JSON, 10 % purchases). POSTs carry `--body`
//! and a token; GETs carry no token.
//!
//! Output: a human summary on stderr, and `--out FILE` JSON (see `Report`).
//!
//! **Open loop** (`--rate R`): instead of every connection firing back to
//! back, requests *arrive* at R per second in total, a Poisson process
//! (exponential inter-arrival times drawn from a seeded RNG, `--seed`), from
//! the start until `--duration` (or `--requests` arrivals). Each arrival goes
//! to the first free one of the `-c` keep-alive connections; when all are
//! busy it waits in a backlog of at most `--backlog` requests, and an arrival
//! that finds the backlog full is counted as `dropped` (reported, never
//! silently skipped). Latency is measured from each request's *intended*
//! send time (its arrival), so a slow answer that holds a connection makes
//! the requests behind it later and that shows: no coordinated omission.
//! The service time (from the actual send) is reported beside it, so the
//! difference — the queueing the closed loop hides — is visible. The
//! arrivals are handed out by a thread of their own (`std::thread::sleep`,
//! tens of µs late; tokio's timer would round up to the next millisecond):
//! that lateness counts in the latency from the intended time and is
//! reported as `schedule_lag`, the generator's own floor. The hot path
//! passes one `u64` (the intended time) per request through a bounded
//! channel; what it allocates beyond that is hyper's request. The closed
//! loop stays the default.
//!
//! Why open loop here rather than in oha or k6: oha 1.16 has `-q` (a total
//! rate, evenly spaced, not Poisson) and `--latency-correction` (with `-q`,
//! latency from the scheduled time rather than the actual send; without it,
//! from the actual send), but it repeats one request — one shopper token, so
//! a purchase run is one 202 and then 409s — and reports neither the service
//! time beside the corrected latency nor the arrivals it could not send.
//! k6's `constant-arrival-rate` (`k6/openloop.js`) starts iterations on an
//! even schedule and counts `dropped_iterations` when no VU is free, but its
//! `http_req_duration` runs from the actual send, and k6 needs more than a
//! core of this 2-core machine for a few thousand requests per second.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use flashsale_loadtest::bench::{histogram_json, latency_histogram};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "HTTP/1.1 load generator with a shopper-token pool: closed loop, or open loop with --rate"
)]
struct Args {
    /// Base URL, plain HTTP: http://127.0.0.1:8080
    #[arg(long)]
    target: String,
    /// Request kind WEIGHT:METHOD:PATH (repeatable), e.g. 1:POST:/api/sales/x/purchase
    #[arg(long = "req", required = true)]
    reqs: Vec<String>,
    /// Body of POST requests.
    #[arg(long, default_value = "{\"qty\":1}")]
    body: String,
    /// Connections (each keeps one request in flight).
    #[arg(short = 'c', long, default_value_t = 256)]
    connections: usize,
    /// Open loop: requests per second in total, Poisson arrivals; latency
    /// from each request's intended send time. Without it: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Seed of the open loop's arrival times.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Open loop: arrivals that may wait for a free connection; one more
    /// is dropped (and counted).
    #[arg(long, default_value_t = 4096)]
    backlog: usize,
    /// Width of the timeline's slots in ms (answers, those over 10 ms and
    /// the slowest per slot; by intended send time in the open loop, by
    /// send time in the closed loop).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    timeline_ms: u64,
    /// Stop sending after this many seconds (1..=600).
    #[arg(short = 'z', long, default_value_t = 10.0)]
    duration: f64,
    /// Stop sending after this many requests.
    #[arg(short = 'n', long, default_value_t = 20_000_000)]
    requests: u64,
    /// File of shopper tokens, one per line; POSTs take them in turn.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Use only the first N tokens of the file.
    #[arg(long)]
    token_limit: Option<usize>,
    /// Start firing at this Unix time in milliseconds (at most 60 s ahead).
    #[arg(long)]
    start_at_ms: Option<u64>,
    /// Runtime worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Per-request timeout in milliseconds (the connection is reopened after one).
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Write the JSON report here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A label copied into the report.
    #[arg(long, default_value = "")]
    label: String,
}

struct Spec {
    method: Method,
    uri: Uri,
    auth: bool,
}

struct Shared {
    addr: SocketAddr,
    host: HeaderValue,
    specs: Vec<Spec>,
    /// Cumulative weights, for picking a spec.
    cumulative: Vec<u32>,
    body: Bytes,
    tokens: Vec<HeaderValue>,
    next_token: AtomicU64,
    issued: AtomicU64,
    max_requests: u64,
    timeout: Duration,
    /// The timeline's slot width.
    slot_ns: u64,
}

/// What one status saw.
struct StatusStats {
    hist: Histogram<u64>,
    first_us: u64,
    last_us: u64,
    per_second: Vec<u64>,
}

/// One 100 ms slot of the open loop's timeline.
#[derive(Clone, Copy, Default)]
struct Slot {
    answers: u32,
    over_10ms: u32,
    max_us: u64,
}

#[derive(Default)]
struct TaskStats {
    by_status: BTreeMap<u16, StatusStats>,
    /// Open loop: from the actual send to the answer (the latency per
    /// status is from the intended send time).
    service: Option<Histogram<u64>>,
    /// Per slot (`--timeline-ms`) of send time (open loop: intended send
    /// time), the answers, those over 10 ms, and the slowest (µs) — to line
    /// stalls up with what the servers and Redis logged at that moment.
    timeline: Vec<Slot>,
    slot_ns: u64,
    io_errors: u64,
    timeouts: u64,
    connect_errors: u64,
    error_samples: Vec<String>,
}

impl TaskStats {
    fn record(&mut self, status: u16, latency_us: u64, done_us: u64) {
        let s = self.by_status.entry(status).or_insert_with(|| StatusStats {
            hist: latency_histogram(),
            first_us: u64::MAX,
            last_us: 0,
            per_second: Vec::new(),
        });
        s.hist.saturating_record(latency_us.max(1));
        s.first_us = s.first_us.min(done_us);
        s.last_us = s.last_us.max(done_us);
        let sec = (done_us / 1_000_000) as usize;
        if s.per_second.len() <= sec {
            s.per_second.resize(sec + 1, 0);
        }
        s.per_second[sec] += 1;
    }

    /// Open loop: one answer, its times in ns from the start. The latency is
    /// from the intended time (its arrival), whatever it waited for a
    /// connection; the service time from the actual send.
    fn record_open(&mut self, status: u16, intended_ns: u64, sent_ns: u64, done_ns: u64) {
        let latency_us = done_ns.saturating_sub(intended_ns) / 1000;
        let service_us = done_ns.saturating_sub(sent_ns.max(intended_ns)) / 1000;
        self.record(status, latency_us, done_ns / 1000);
        self.slot(intended_ns, latency_us);
        self.service
            .get_or_insert_with(latency_histogram)
            .saturating_record(service_us.max(1));
    }

    /// One answer into the timeline, at `at_ns` from the start.
    fn slot(&mut self, at_ns: u64, latency_us: u64) {
        let width = if self.slot_ns == 0 {
            100_000_000
        } else {
            self.slot_ns
        };
        let i = (at_ns / width) as usize;
        if self.timeline.len() <= i {
            self.timeline.resize(i + 1, Slot::default());
        }
        let slot = &mut self.timeline[i];
        slot.answers += 1;
        slot.over_10ms += u32::from(latency_us > 10_000);
        slot.max_us = slot.max_us.max(latency_us);
    }

    fn error(&mut self, what: String) {
        if self.error_samples.len() < 5 {
            self.error_samples.push(what);
        }
    }

    fn merge(&mut self, other: TaskStats) {
        for (status, o) in other.by_status {
            match self.by_status.get_mut(&status) {
                None => {
                    self.by_status.insert(status, o);
                }
                Some(s) => {
                    s.hist.add(&o.hist).expect("same histogram bounds");
                    s.first_us = s.first_us.min(o.first_us);
                    s.last_us = s.last_us.max(o.last_us);
                    if s.per_second.len() < o.per_second.len() {
                        s.per_second.resize(o.per_second.len(), 0);
                    }
                    for (i, n) in o.per_second.into_iter().enumerate() {
                        s.per_second[i] += n;
                    }
                }
            }
        }
        match (&mut self.service, other.service) {
            (Some(s), Some(o)) => s.add(&o).expect("same histogram bounds"),
            (s @ None, o) => *s = o,
            (Some(_), None) => {}
        }
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize(other.timeline.len(), Slot::default());
        }
        for (s, o) in self.timeline.iter_mut().zip(other.timeline) {
            s.answers += o.answers;
            s.over_10ms += o.over_10ms;
            s.max_us = s.max_us.max(o.max_us);
        }
        self.io_errors += other.io_errors;
        self.timeouts += other.timeouts;
        self.connect_errors += other.connect_errors;
        for e in other.error_samples {
            self.error(e);
        }
    }
}

/// xorshift64*: a cheap per-task random source for the request mix.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Poisson arrivals at `rate` per second: exponential gaps (mean `1/rate`)
/// by inversion of a uniform draw from a seeded RNG, so one seed gives one
/// schedule.
struct PoissonSchedule {
    rng: StdRng,
    mean_gap_ns: f64,
    at_ns: f64,
}

impl PoissonSchedule {
    fn new(rate: f64, seed: u64) -> Self {
        PoissonSchedule {
            rng: StdRng::seed_from_u64(seed),
            mean_gap_ns: 1e9 / rate,
            at_ns: 0.0,
        }
    }

    /// The next arrival, in ns from the start.
    fn next_ns(&mut self) -> u64 {
        // u in [0, 1): 1 - u in (0, 1], so the logarithm is finite.
        let u: f64 = self.rng.random();
        self.at_ns += -(1.0 - u).ln() * self.mean_gap_ns;
        self.at_ns as u64
    }
}

fn parse_spec(s: &str) -> Result<(u32, Spec), String> {
    let mut parts = s.splitn(3, ':');
    let (w, m, p) = match (parts.next(), parts.next(), parts.next()) {
        (Some(w), Some(m), Some(p)) => (w, m, p),
        _ => return Err(format!("--req {s:?}: expected WEIGHT:METHOD:PATH")),
    };
    let weight: u32 = w
        .parse()
        .map_err(|_| format!("--req {s:?}: weight must be a number"))?;
    let method: Method = m
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| format!("--req {s:?}: bad method"))?;
    if !p.starts_with('/') {
        return Err(format!("--req {s:?}: path must start with /"));
    }
    let uri: Uri = p.parse().map_err(|e| format!("--req {s:?}: {e}"))?;
    let auth = method == Method::POST;
    Ok((weight, Spec { method, uri, auth }))
}

async fn connect(sh: &Shared) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(sh.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn build(sh: &Shared, spec: &Spec) -> Request<Full<Bytes>> {
    let mut req = Request::new(if spec.method == Method::POST {
        Full::new(sh.body.clone())
    } else {
        Full::new(Bytes::new())
    });
    *req.method_mut() = spec.method.clone();
    *req.uri_mut() = spec.uri.clone();
    let h = req.headers_mut();
    h.insert(HOST, sh.host.clone());
    if spec.method == Method::POST {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if spec.auth && !sh.tokens.is_empty() {
        let i = sh.next_token.fetch_add(1, Ordering::Relaxed) as usize % sh.tokens.len();
        h.insert(AUTHORIZATION, sh.tokens[i].clone());
    }
    req
}

async fn one(
    sender: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<u16, String> {
    sender.ready().await.map_err(|e| format!("ready: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok(status)
}

type Sender = SendRequest<Full<Bytes>>;

/// A connection task's start: its statistics, its connection (`None` if it
/// could not be opened: counted), its request picker, and the clock, once
/// every task is connected and the start is set.
async fn ready(
    sh: &Shared,
    id: usize,
    barrier: &Barrier,
    go: &Barrier,
    start_at: &std::sync::OnceLock<(Instant, Instant)>,
) -> (TaskStats, Option<Sender>, Rng, (Instant, Instant)) {
    let mut stats = TaskStats {
        slot_ns: sh.slot_ns,
        ..TaskStats::default()
    };
    let rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((id as u64 + 1) * 0x1000_0000_01B3));
    let sender = match connect(sh).await {
        Ok(s) => Some(s),
        Err(e) => {
            stats.connect_errors += 1;
            stats.error(e);
            None
        }
    };
    barrier.wait().await;
    go.wait().await;
    let clock = *start_at.get().expect("start set before `go` opens");
    (stats, sender, rng, clock)
}

/// What became of one request.
enum Sent {
    /// Sent at the first instant, answered with the status at the second.
    Answered(Instant, Instant, u16),
    /// No connection could be opened for it (counted).
    NoConnection,
    /// Sent and failed or timed out (counted; the connection is dropped).
    Failed,
}

/// One request of the mix, on `sender`, opened again first if it was
/// dropped.
async fn request(
    sh: &Shared,
    sender: &mut Option<Sender>,
    rng: &mut Rng,
    stats: &mut TaskStats,
) -> Sent {
    if sender.is_none() {
        match connect(sh).await {
            Ok(s) => *sender = Some(s),
            Err(e) => {
                stats.connect_errors += 1;
                stats.error(e);
                return Sent::NoConnection;
            }
        }
    }
    let total: u32 = *sh.cumulative.last().unwrap_or(&1);
    let pick = (rng.next() % u64::from(total)) as u32;
    let spec = &sh.specs[sh.cumulative.iter().position(|&c| pick < c).unwrap_or(0)];
    let req = build(sh, spec);
    let s = sender.as_mut().expect("connected above");
    let t0 = Instant::now();
    let res = tokio::time::timeout(sh.timeout, one(s, req)).await;
    let t1 = Instant::now();
    match res {
        Ok(Ok(status)) => Sent::Answered(t0, t1, status),
        Ok(Err(e)) => {
            stats.io_errors += 1;
            stats.error(e);
            *sender = None;
            Sent::Failed
        }
        Err(_) => {
            stats.timeouts += 1;
            *sender = None;
            Sent::Failed
        }
    }
}

/// Closed loop: one connection sending back to back until the deadline or
/// the request budget.
async fn run_connection(
    sh: Arc<Shared>,
    id: usize,
    barrier: Arc<Barrier>,
    go: Arc<Barrier>,
    start_at: Arc<std::sync::OnceLock<(Instant, Instant)>>,
) -> TaskStats {
    let (mut stats, mut sender, mut rng, (start, deadline)) =
        ready(&sh, id, &barrier, &go, &start_at).await;
    tokio::time::sleep_until(start.into()).await;
    loop {
        if Instant::now() >= deadline {
            break;
        }
        if sh.issued.fetch_add(1, Ordering::Relaxed) >= sh.max_requests {
            break;
        }
        match request(&sh, &mut sender, &mut rng, &mut stats).await {
            Sent::Answered(t0, t1, status) => {
                let lat = t1.duration_since(t0).as_micros() as u64;
                let done = t1.saturating_duration_since(start).as_micros() as u64;
                stats.record(status, lat, done);
                stats.slot(t0.saturating_duration_since(start).as_nanos() as u64, lat);
            }
            Sent::NoConnection => tokio::time::sleep(Duration::from_millis(20)).await,
            Sent::Failed => {}
        }
    }
    stats
}

/// What the open loop's arrivals did.
struct Arrivals {
    /// Arrivals scheduled (handed to a connection or dropped).
    scheduled: u64,
    dropped: u64,
    /// How late the schedule itself handed each arrival out (µs after its
    /// intended time): the generator's own floor under the latency.
    lag: Histogram<u64>,
}

/// Open loop: the arrivals, at their intended times, into the backlog
/// (`tx`, bounded); one that finds it full is dropped. A thread of its
/// own sleeping with `std::thread::sleep` (tens of µs late on Linux, where
/// tokio's timer rounds up to the next millisecond).
fn schedule(
    tx: flume::Sender<u64>,
    rate: f64,
    seed: u64,
    start: Instant,
    duration: Duration,
    max_requests: u64,
) -> Arrivals {
    let mut arrivals = Arrivals {
        scheduled: 0,
        dropped: 0,
        lag: latency_histogram(),
    };
    let mut poisson = PoissonSchedule::new(rate, seed);
    let end_ns = duration.as_nanos() as u64;
    while arrivals.scheduled < max_requests {
        let at_ns = poisson.next_ns();
        if at_ns >= end_ns {
            break;
        }
        let at = start + Duration::from_nanos(at_ns);
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        let lag_us = Instant::now().saturating_duration_since(at).as_micros() as u64;
        arrivals.lag.saturating_record(lag_us.max(1));
        arrivals.scheduled += 1;
        match tx.try_send(at_ns) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(_)) => arrivals.dropped += 1,
            Err(flume::TrySendError::Disconnected(_)) => break,
        }
    }
    arrivals
}

/// Open loop: one connection taking the next waiting arrival whenever it is
/// free, until the schedule ends and the backlog is empty.
async fn run_open_connection(
    sh: Arc<Shared>,
    id: usize,
    rx: flume::Receiver<u64>,
    barrier: Arc<Barrier>,
    go: Arc<Barrier>,
    start_at: Arc<std::sync::OnceLock<(Instant, Instant)>>,
) -> TaskStats {
    let (mut stats, mut sender, mut rng, (start, _)) =
        ready(&sh, id, &barrier, &go, &start_at).await;
    // Ends when the schedule has ended (its sender dropped) and the
    // backlog is empty.
    while let Ok(intended_ns) = rx.recv_async().await {
        // An arrival without a connection is lost with it: counted.
        if let Sent::Answered(t0, t1, status) =
            request(&sh, &mut sender, &mut rng, &mut stats).await
        {
            let sent_ns = t0.saturating_duration_since(start).as_nanos() as u64;
            let done_ns = t1.saturating_duration_since(start).as_nanos() as u64;
            stats.record_open(status, intended_ns, sent_ns, done_ns);
        }
    }
    stats
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Log-spaced buckets (10 per decade) from 10 µs: `[upper_ms, count]`.
fn buckets(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    let mut out = Vec::new();
    let mut lo = 0u64;
    let mut k = 0;
    while lo <= h.max() && k < 80 {
        let hi = (10.0 * 10f64.powf(k as f64 / 10.0)).round() as u64;
        let n = h.count_between(lo, hi.saturating_sub(1).max(lo));
        out.push((ms(hi), n));
        lo = hi;
        k += 1;
    }
    out
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    if !(args.duration > 0.0 && args.duration <= 600.0) {
        return Err("--duration must be in (0, 600] seconds".into());
    }
    if args.connections == 0 || args.connections > 10_000 {
        return Err("--connections must be 1..=10000".into());
    }
    if let Some(rate) = args.rate
        && !(rate > 0.0 && rate <= 1_000_000.0)
    {
        return Err("--rate must be in (0, 1000000] requests per second".into());
    }
    if args.backlog == 0 || args.backlog > 10_000_000 {
        return Err("--backlog must be 1..=10000000".into());
    }
    let hostport = args
        .target
        .strip_prefix("http://")
        .ok_or("--target must start with http://")?
        .trim_end_matches('/');
    let addr: SocketAddr = hostport
        .parse()
        .map_err(|_| format!("--target {hostport:?}: expected IP:PORT"))?;
    let mut specs = Vec::new();
    let mut cumulative = Vec::new();
    let mut acc = 0u32;
    for r in &args.reqs {
        let (w, spec) = parse_spec(r)?;
        acc += w;
        cumulative.push(acc);
        specs.push(spec);
    }
    if acc == 0 {
        return Err("the --req weights add up to 0".into());
    }
    let mut tokens = Vec::new();
    if let Some(path) = &args.tokens {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if args.token_limit.is_some_and(|n| tokens.len() >= n) {
                break;
            }
            tokens.push(
                HeaderValue::from_str(&format!("Bearer {line}"))
                    .map_err(|_| format!("{}: a token is not a header value", path.display()))?,
            );
        }
        if tokens.is_empty() {
            return Err(format!("{}: no tokens", path.display()));
        }
    }
    let sh = Arc::new(Shared {
        addr,
        host: HeaderValue::from_str(hostport).map_err(|e| e.to_string())?,
        specs,
        cumulative,
        body: Bytes::from(args.body.clone()),
        tokens,
        next_token: AtomicU64::new(0),
        issued: AtomicU64::new(0),
        max_requests: args.requests,
        timeout: Duration::from_millis(args.timeout_ms.max(1)),
        slot_ns: args.timeline_ms * 1_000_000,
    });

    let n_tokens = sh.tokens.len();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.clamp(1, 64))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let duration = Duration::from_secs_f64(args.duration);
    let start_at_ms = args.start_at_ms;
    let connections = args.connections;
    let open = args.rate.map(|rate| (rate, args.seed, args.backlog));
    let (stats, arrivals, start, end) = rt.block_on(async move {
        let barrier = Arc::new(Barrier::new(connections + 1));
        let go = Arc::new(Barrier::new(connections + 1));
        let start_cell = Arc::new(std::sync::OnceLock::new());
        let mut tasks = Vec::with_capacity(connections);
        // Open loop: the backlog, filled by the schedule once the clock starts.
        // Many receivers (the connections), one sender (the schedule).
        let (tx, rx) = flume::bounded(open.map_or(1, |(_, _, backlog)| backlog));
        for id in 0..connections {
            if open.is_some() {
                tasks.push(tokio::spawn(run_open_connection(
                    sh.clone(),
                    id,
                    rx.clone(),
                    barrier.clone(),
                    go.clone(),
                    start_cell.clone(),
                )));
            } else {
                tasks.push(tokio::spawn(run_connection(
                    sh.clone(),
                    id,
                    barrier.clone(),
                    go.clone(),
                    start_cell.clone(),
                )));
            }
        }
        // Connections open first; the clock starts once all are open (a
        // connect can take a second when a SYN is retransmitted, and that
        // second must not count as measured time) or at the start time.
        barrier.wait().await;
        let mut start = Instant::now();
        if let Some(at) = start_at_ms {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let ahead = at.saturating_sub(now_ms).min(60_000);
            start += Duration::from_millis(ahead);
        }
        let _ = start_cell.set((start, start + duration));
        go.wait().await;
        let scheduler = open.map(|(rate, seed, _)| {
            let max_requests = sh.max_requests;
            tokio::task::spawn_blocking(move || {
                schedule(tx, rate, seed, start, duration, max_requests)
            })
        });
        let arrivals = match scheduler {
            Some(t) => match t.await {
                Ok(a) => Some(a),
                Err(e) => return Err(format!("schedule: {e}")),
            },
            None => None,
        };
        let mut all = TaskStats::default();
        for t in tasks {
            match t.await {
                Ok(s) => all.merge(s),
                Err(e) => all.error(format!("task: {e}")),
            }
        }
        Ok((all, arrivals, start, Instant::now()))
    })?;

    let elapsed = end.saturating_duration_since(start).as_secs_f64().max(1e-9);
    // The wall-clock time of the start, to line the timeline up with logs.
    let start_unix_ms = SystemTime::now()
        .checked_sub(Instant::now().saturating_duration_since(start))
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    let mut overall = latency_histogram();
    let mut status = serde_json::Map::new();
    let mut by_status = serde_json::Map::new();
    for (code, s) in &stats.by_status {
        overall.add(&s.hist).expect("same bounds");
        status.insert(code.to_string(), json!(s.hist.len()));
        let mut j = histogram_json(&s.hist);
        j["first_ms"] = json!(ms(s.first_us));
        j["last_ms"] = json!(ms(s.last_us));
        j["per_second"] = json!(s.per_second);
        by_status.insert(code.to_string(), j);
    }
    let completed = overall.len();
    let timeline = json!({
        "slot_ms": args.timeline_ms,
        "start_unix_ms": start_unix_ms,
        "answers": stats.timeline.iter().map(|s| s.answers).collect::<Vec<_>>(),
        "over_10ms": stats.timeline.iter().map(|s| s.over_10ms).collect::<Vec<_>>(),
        "max_ms": stats.timeline.iter().map(|s| ms(s.max_us)).collect::<Vec<_>>(),
    });
    let mode = if args.rate.is_some() {
        "open"
    } else {
        "closed"
    };
    let mut report = json!({
        "tool": "loadgen",
        "mode": mode,
        "label": args.label,
        "target": args.target,
        "reqs": args.reqs,
        "connections": args.connections,
        "threads": args.threads,
        "tokens": n_tokens,
        "tokens_file": args.tokens.as_ref().map(|p| p.display().to_string()),
        "elapsed_s": elapsed,
        "requests": completed,
        "rps": completed as f64 / elapsed,
        "status": status,
        "errors": {
            "io": stats.io_errors,
            "timeout": stats.timeouts,
            "connect": stats.connect_errors,
            "samples": stats.error_samples,
        },
        "latency": histogram_json(&overall),
        "by_status": by_status,
        "histogram_ms": buckets(&overall),
        "timeline": timeline,
    });
    if let (Some(rate), Some(a)) = (args.rate, &arrivals) {
        let service = stats.service.clone().unwrap_or_else(latency_histogram);
        let window = duration.as_secs_f64();
        report["open_loop"] = json!({
            "rate": rate,
            "seed": args.seed,
            "backlog": args.backlog,
            "scheduled": a.scheduled,
            "dropped": a.dropped,
            "offered_rps": a.scheduled as f64 / window,
            "sent_rps": (a.scheduled - a.dropped) as f64 / window,
            "latency_from": "intended send time",
            "service": histogram_json(&service),
            "schedule_lag": histogram_json(&a.lag),
            "timeline": timeline,
        });
        eprintln!(
            "loadgen {} open loop at {:.0} req/s (seed {}): {} arrivals, {} dropped (backlog {}); service time p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; the schedule's own lateness p50 {:.3} ms, p99 {:.3} ms; latencies below are from the intended send time",
            args.label,
            rate,
            args.seed,
            a.scheduled,
            a.dropped,
            args.backlog,
            ms(service.value_at_quantile(0.5)),
            ms(service.value_at_quantile(0.99)),
            ms(service.value_at_quantile(0.999)),
            ms(service.max()),
            ms(a.lag.value_at_quantile(0.5)),
            ms(a.lag.value_at_quantile(0.99)),
        );
    }
    eprintln!(
        "loadgen {}: {} requests in {:.2} s = {:.0} req/s; p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; status {}; errors io {} timeout {} connect {}",
        args.label,
        completed,
        elapsed,
        completed as f64 / elapsed,
        ms(overall.value_at_quantile(0.5)),
        ms(overall.value_at_quantile(0.9)),
        ms(overall.value_at_quantile(0.99)),
        ms(overall.value_at_quantile(0.999)),
        ms(overall.max()),
        Value::Object(status),
        stats.io_errors,
        stats.timeouts,
        stats.connect_errors,
    );
    if let Some(out) = &args.out {
        std::fs::write(
            out,
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("{}: {e}", out.display()))?;
    }
    if completed == 0 {
        return Err(format!(
            "no request completed ({:?})",
            report["errors"]["samples"]
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over many draws with a fixed seed the mean gap is 1/rate (within 1 %),
    /// the gaps are exponential (standard deviation ≈ mean, unlike an even
    /// spacing), and the same seed gives the same schedule.
    #[test]
    fn poisson_schedule_has_the_asked_rate() {
        let rate = 2_000.0;
        let n = 200_000;
        let mut p = PoissonSchedule::new(rate, 42);
        let mut prev = 0u64;
        let mut gaps = Vec::with_capacity(n);
        for _ in 0..n {
            let at = p.next_ns();
            assert!(at >= prev, "arrivals go forward");
            gaps.push((at - prev) as f64);
            prev = at;
        }
        let mean = gaps.iter().sum::<f64>() / n as f64;
        let expected = 1e9 / rate;
        assert!(
            (mean / expected - 1.0).abs() < 0.01,
            "mean gap {mean} ns, expected {expected} ns"
        );
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n as f64;
        let cv = var.sqrt() / mean;
        assert!((cv - 1.0).abs() < 0.02, "coefficient of variation {cv}");
        let achieved = n as f64 / (prev as f64 / 1e9);
        assert!((achieved / rate - 1.0).abs() < 0.01, "rate {achieved}");

        let mut a = PoissonSchedule::new(rate, 7);
        let mut b = PoissonSchedule::new(rate, 7);
        let mut c = PoissonSchedule::new(rate, 8);
        let sa: Vec<u64> = (0..100).map(|_| a.next_ns()).collect();
        let sb: Vec<u64> = (0..100).map(|_| b.next_ns()).collect();
        let sc: Vec<u64> = (0..100).map(|_| c.next_ns()).collect();
        assert_eq!(sa, sb);
        assert_ne!(sa, sc);
    }

    /// One connection, a request arriving every millisecond, each answered
    /// 10 ms after it is sent: request k waits for the k before it, so its
    /// latency from the intended time is 10 + 9k ms while its service time
    /// stays 10 ms — the queueing a closed loop would not show.
    #[test]
    fn open_loop_latency_counts_from_the_intended_time() {
        const MS: u64 = 1_000_000;
        let mut stats = TaskStats::default();
        let mut free_at = 0u64;
        for k in 0..10u64 {
            let intended = k * MS;
            let sent = intended.max(free_at);
            let done = sent + 10 * MS;
            free_at = done;
            stats.record_open(202, intended, sent, done);
        }
        let s = &stats.by_status[&202];
        assert_eq!(s.hist.len(), 10);
        let lat = |q: f64| s.hist.value_at_quantile(q);
        // Histogram values are within 0.1 % (3 significant digits).
        let near = |v: u64, want_ms: u64| (v as f64 / (want_ms * 1000) as f64 - 1.0).abs() < 0.002;
        assert!(near(s.hist.min(), 10), "min {}", s.hist.min());
        assert!(near(lat(1.0), 10 + 9 * 9), "max {}", lat(1.0));
        assert!(near(lat(0.5), 10 + 9 * 4), "median {}", lat(0.5));
        let service = stats
            .service
            .as_ref()
            .expect("open loop records service times");
        assert_eq!(service.len(), 10);
        assert!(near(service.min(), 10) && near(service.max(), 10));
        // Done times: the last answer at 100 ms.
        assert_eq!(s.last_us, 100_000);
        assert_eq!(s.per_second, vec![10]);

        // A request sent on time, answered in 2 ms: both figures equal.
        let mut one = TaskStats::default();
        one.record_open(200, 5 * MS, 5 * MS, 7 * MS);
        assert!(near(one.by_status[&200].hist.max(), 2));
        assert!(near(one.service.as_ref().map_or(0, |h| h.max()), 2));

        // The timeline (100 ms slots by default): all ten arrivals are in
        // the first slot, nine of them over 10 ms, the slowest at 91 ms.
        assert_eq!(stats.timeline.len(), 1);
        assert_eq!(stats.timeline[0].answers, 10);
        assert_eq!(stats.timeline[0].over_10ms, 9);
        assert_eq!(stats.timeline[0].max_us, 91_000);

        // Merging keeps both histograms and adds the timelines slot by slot.
        stats.merge(one);
        assert_eq!(stats.service.as_ref().map(|h| h.len()), Some(11));
        assert_eq!(stats.by_status.len(), 2);
        assert_eq!(stats.timeline[0].answers, 11);
        assert_eq!(stats.timeline[0].max_us, 91_000);

        // Narrower slots (`--timeline-ms 10`) by intended time.
        let mut narrow = TaskStats {
            slot_ns: 10 * MS,
            ..TaskStats::default()
        };
        narrow.record_open(202, 5 * MS, 5 * MS, 7 * MS);
        narrow.record_open(202, 25 * MS, 30 * MS, 45 * MS);
        let answers: Vec<u32> = narrow.timeline.iter().map(|s| s.answers).collect();
        assert_eq!(answers, vec![1, 0, 1]);
        assert_eq!(narrow.timeline[2].over_10ms, 1);
        assert_eq!(narrow.timeline[2].max_us, 20_000);
    }
}
