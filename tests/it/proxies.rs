//! Trusted proxies (`FLASHSALE_TRUSTED_PROXIES`) over real sockets: an
//! in-process app on port 0 that trusts only 127.0.0.2, clients bound to
//! 127.0.0.2 (the proxy) and 127.0.0.3 (anyone else). Behind the proxy the
//! per-address rate limit keys on each shopper's forwarded address, and the
//! proxy is not held to the per-address connection cap; the same headers
//! from an untrusted peer change nothing. The rate buckets are read back
//! from Redis to show which address each request was counted against.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use flashsale::web::proxies::TrustedProxies;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::app::{
    AppOptions, TestApp, assert_config_error, serve_settings, shared_group, unique,
};

const PROXY: &str = "127.0.0.2";
const OUTSIDER: &str = "127.0.0.3";

/// An app whose only trusted proxy is [`PROXY`], with `per_ip` requests per
/// second per client address on /api and `conn_cap` connections per address.
async fn app_behind_proxy(per_ip: u32, conn_cap: usize) -> TestApp {
    let prefix = unique("px");
    let opts = AppOptions {
        rate_limit_per_ip: per_ip,
        ..AppOptions::default()
    };
    let mut settings = serve_settings(shared_group(), &prefix, &opts);
    settings.trusted_proxies = TrustedProxies::parse(&format!("{PROXY}/32")).expect("list");
    settings.max_connections_per_ip = conn_cap;
    TestApp::spawn_settings(&prefix, settings).await
}

/// An HTTP client whose connections come from `local`.
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(Some(local.parse::<IpAddr>().expect("ip")))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// GET /api/products with the given forwarding headers; the status, a 429
/// checked to be the API's `rate_limited` with `Retry-After`.
async fn get(app: &TestApp, http: &reqwest::Client, xff: &str, real_ip: Option<&str>) -> u16 {
    let mut req = http
        .get(app.url("/api/products"))
        .header("x-forwarded-for", xff);
    if let Some(ip) = real_ip {
        req = req.header("x-real-ip", ip);
    }
    let r = req.send().await.expect("get");
    let s = r.status().as_u16();
    if s == 429 {
        assert!(r.headers().contains_key("retry-after"));
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"], "rate_limited");
    }
    assert!(s == 200 || s == 429, "{s}");
    s
}

/// The addresses that have a rate bucket of `app` in Redis now (a bucket
/// lives two seconds after its last request at 2/s).
async fn buckets(app: &TestApp) -> Vec<String> {
    let group = shared_group();
    let mut c = group.client(group.master_port().await).await;
    let pattern = format!("{}:rate:ip:", app.prefix);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{pattern}*"))
        .query_async(&mut c)
        .await
        .expect("keys");
    let mut ips: Vec<String> = keys
        .into_iter()
        .map(|k| k[pattern.len()..].to_owned())
        .collect();
    ips.sort();
    ips
}

/// The most requests a bucket of `rate`/s (burst `rate`) lets through in
/// `elapsed`.
fn budget(rate: u32, elapsed: Duration) -> usize {
    rate as usize + (elapsed.as_secs_f64() * f64::from(rate)).ceil() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_shopper_has_its_own_rate_limit() {
    const RATE: u32 = 2;
    let app = app_behind_proxy(RATE, 256).await;
    let proxy = client_from(PROXY);

    // Shopper A exhausts its budget through the proxy...
    let a = "203.0.113.10";
    let mut statuses = Vec::new();
    while !statuses.contains(&429) && statuses.len() < 20 {
        statuses.push(get(&app, &proxy, a, None).await);
    }
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert!(statuses.contains(&429), "A is limited: {statuses:?}");
    // ...and B, through the same proxy right after, has all of its own.
    let b = "2001:db8::b";
    for i in 0..RATE {
        assert_eq!(get(&app, &proxy, b, None).await, 200, "B's request {i}");
    }

    // A shopper that writes entries of its own in front of the one the
    // proxy appends is still counted as itself: each request below names
    // another address on the left, and C is limited all the same.
    let c = "203.0.113.11";
    let t = Instant::now();
    let mut spoofed = Vec::new();
    for i in 0..8 {
        let xff = format!("198.51.100.{i}, 127.0.0.2, {c}");
        spoofed.push(get(&app, &proxy, &xff, Some("198.51.100.99")).await);
    }
    let served = spoofed.iter().filter(|s| **s == 200).count();
    assert!(spoofed.contains(&429), "{spoofed:?}");
    assert!(served <= budget(RATE, t.elapsed()), "{spoofed:?}");

    // The buckets are the shoppers', never the proxy's or a spoofed entry's.
    let ips = buckets(&app).await;
    assert_eq!(ips, [b, a, c], "buckets: {ips:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_is_limited_as_itself_whatever_it_forwards() {
    const RATE: u32 = 2;
    let app = app_behind_proxy(RATE, 256).await;
    let outsider = client_from(OUTSIDER);

    // The same headers a proxy would send, naming five shoppers in turn: all
    // are counted against 127.0.0.3, so most are refused (through the proxy
    // every one of them would have had two).
    let t = Instant::now();
    let mut statuses = Vec::new();
    for i in 0..10 {
        let shopper = format!("203.0.113.{}", 20 + i % 5);
        statuses.push(get(&app, &outsider, &shopper, Some(&shopper)).await);
    }
    let served = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(served <= budget(RATE, t.elapsed()), "{statuses:?}");
    let ips = buckets(&app).await;
    assert_eq!(ips, [OUTSIDER], "buckets: {ips:?}");

    // A trusted hop written by the outsider itself changes nothing either.
    get(&app, &outsider, "203.0.113.30, 127.0.0.2", None).await;
    let ips = buckets(&app).await;
    assert_eq!(ips, [OUTSIDER], "buckets: {ips:?}");
}

/// A connection from `local` to `to`.
async fn connect_from(local: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(format!("{local}:0").parse().expect("local addr"))
        .expect("bind");
    s.connect(to).await.expect("connect")
}

/// The status line's code of the next response on `s` (None: closed or
/// nothing within `wait`).
async fn next_status(s: &mut TcpStream, wait: Duration) -> Option<u16> {
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    // Whatever body follows is small; drain what is there (the next read
    // begins at the next response).
    if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut have = got.len() - end - 4;
        while have < len {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => have += n,
                _ => break,
            }
        }
    }
    let text = String::from_utf8_lossy(&got);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Opens `n` connections from `local` and keeps them all open: a refused
/// one is answered 503 at once without a request; every other one then
/// serves a keep-alive request. The statuses, in order of opening.
async fn hold_connections(local: &str, to: SocketAddr, n: usize) -> (Vec<u16>, Vec<TcpStream>) {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(connect_from(local, to).await);
    }
    let mut statuses = Vec::new();
    for s in &mut conns {
        // A refusal is written as the connection is accepted.
        let status = match next_status(s, Duration::from_millis(250)).await {
            Some(refused) => refused,
            None => {
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .expect("write");
                next_status(s, Duration::from_secs(10)).await.unwrap_or(0)
            }
        };
        statuses.push(status);
    }
    (statuses, conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_spares_the_trusted_proxy_only() {
    const CAP: usize = 3;
    const OPEN: usize = 12;
    let app = app_behind_proxy(0, CAP).await;
    let addr: SocketAddr = app
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("addr");

    // The proxy holds four times the cap, every connection served.
    let (statuses, mut proxy_conns) = hold_connections(PROXY, addr, OPEN).await;
    assert_eq!(statuses, [200; OPEN], "from the proxy");

    // Anyone else is refused past the cap, while the proxy's are still open.
    let (statuses, _outsider_conns) = hold_connections(OUTSIDER, addr, OPEN).await;
    let served = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!((served, refused), (CAP, OPEN - CAP), "{statuses:?}");
    assert_eq!(&statuses[..CAP], [200; CAP], "the first {CAP} are admitted");

    // The proxy's connections were all kept: each serves another request.
    for s in &mut proxy_conns {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(next_status(s, Duration::from_secs(10)).await, Some(200));
    }
}

/// A bad list stops `flashsale serve` with a configuration error naming the
/// variable (exit 78, one line); `serve --help` documents it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_trusted_proxy_list_is_a_configuration_error() {
    let bin = env!("CARGO_BIN_EXE_flashsale");
    for bad in ["10.0.0.0/33", "nginx", "127.0.0.1,fd00::/129"] {
        assert_config_error(
            bin,
            &["serve"],
            &[
                ("FLASHSALE_REDIS_URL", "redis://127.0.0.1:1"),
                ("FLASHSALE_JWT_SECRET", "0123456789abcdef0123"),
                ("FLASHSALE_TRUSTED_PROXIES", bad),
            ],
            "FLASHSALE_TRUSTED_PROXIES",
        )
        .await;
    }
    let out = tokio::process::Command::new(bin)
        .args(["serve", "--help"])
        .env_clear()
        .output()
        .await
        .expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("FLASHSALE_TRUSTED_PROXIES"), "{help}");
    assert!(help.contains("127.0.0.0/8,::1/128"), "the default: {help}");
}
