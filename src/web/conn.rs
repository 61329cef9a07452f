//! Connections: the accept loop on hyper's HTTP/1 server, and what a slow
//! or greedy client may hold.
//!
//! `axum::serve` sets no timer on hyper, so it has no header-read timeout at
//! all: a client that trickles its request head byte by byte (slowloris), or
//! connects and sends nothing, holds its connection forever. Here:
//!
//! - a request head must be complete within [`ConnLimits::header_read_timeout`]
//!   of its first byte — of the connection opening, for the first request
//!   ([`HeadDeadline`], a thin wrapper around the socket that watches for the
//!   blank line ending the head);
//! - a keep-alive connection may sit idle between requests for
//!   [`ConnLimits::idle_timeout`] (hyper's own `header_read_timeout`, which
//!   also runs from the previous response), longer than a proxy in front
//!   keeps its idle upstream connections, so the proxy never reuses one we
//!   are closing;
//! - request heads are capped in size (431 beyond);
//! - open connections are capped in total (beyond it new ones wait in the
//!   listen backlog, as mini-redis does) and per peer address (beyond it a
//!   new connection gets a 503 and is closed); the proxies in front
//!   (`FLASHSALE_TRUSTED_PROXIES`, loopback by default) are exempt from the
//!   per-address cap, since they carry every shopper's connections.
//!
//! Why one file of this size: the accept loop, the per-address caps and
//! the head deadline are one mechanism (each needs the others' state), and
//! about a fifth of the file is its tests, including a property test.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use super::proxies::TrustedProxies;

/// What one connection, or one client address, may hold.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// A request head (request line and headers) must be complete within
    /// this time of its first byte, or of the connection opening for the
    /// first request; otherwise the connection is closed.
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request. Keep
    /// it above the idle timeout of a proxy's upstream connections (nginx
    /// `keepalive_timeout` in the `upstream` block, 60 s in deploy/nginx).
    pub idle_timeout: Duration,
    /// Largest request head in bytes; beyond it hyper answers 431 and closes.
    pub max_header_bytes: usize,
    /// Connections open at once; beyond it new ones wait in the backlog.
    pub max_connections: usize,
    /// Connections open at once from one peer address (0: no cap); beyond
    /// it a new connection is answered 503 and closed.
    pub max_connections_per_ip: usize,
    /// Peers that are proxies (nginx, a load balancer): no per-address cap.
    pub trusted: TrustedProxies,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_header_bytes: 32 * 1024,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            trusted: TrustedProxies::default(),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the
/// open connections finish their requests (bounded).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout.max(limits.header_read_timeout))
        .max_header_size(limits.max_header_bytes.max(1024));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_ip = Arc::new(PerIp::default());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let Some(held) = per_ip.admit(peer.ip(), &limits) else {
            refuse(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = router.clone().map_request(
            move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            },
        );
        let io = HeadDeadline::new(stream, limits.header_read_timeout);
        let conn = graceful
            .watch(http.serve_connection(TokioIo::new(io), TowerToHyperService::new(service)));
        metrics::gauge!("flashsale_connections_open").increment(1.0);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
            metrics::gauge!("flashsale_connections_open").decrement(1.0);
            drop(held);
            drop(slot);
        });
    }
    drop(listener);
    // Idle connections close now, busy ones after their response; a
    // half-sent head is bounded by the header-read timeout.
    let drain = limits.header_read_timeout + Duration::from_secs(30);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown: connections still open after {drain:?}; leaving them");
    }
    Ok(())
}

/// Where a connection is between requests.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Reading a request head that began at `began` and must end within
    /// the limit; `seen` bytes of the end marker were the last ones read.
    Head { began: Instant, seen: u8 },
    /// The head is in; body and handler are bounded elsewhere.
    Request,
    /// A response was written; waiting (idle) for the next request.
    Idle,
}

/// The blank line that ends a request head.
const HEAD_END: &[u8; 4] = b"\r\n\r\n";

/// One byte through the matcher of [`HEAD_END`]: `seen` bytes of it were
/// matched before `b`; returns how many are matched after it.
fn head_end_step(seen: u8, b: u8) -> u8 {
    if b == HEAD_END[usize::from(seen)] {
        seen + 1
    } else if b == b'\r' {
        1
    } else {
        0
    }
}

/// Follows `bytes` through the end marker, `seen` of its bytes having been
/// matched before: `Ok(())` when the marker is complete, else how many of
/// its bytes the data now ends with. A marker completed across the boundary
/// ends within the first three bytes; any other lies wholly inside `bytes`
/// (found with `memmem`), and without one, the last three bytes alone tell
/// how much of the marker the data ends with.
fn follow_head_end(seen: u8, bytes: &[u8]) -> Result<(), u8> {
    let mut s = seen;
    for &b in bytes.iter().take(3) {
        s = head_end_step(s, b);
        if s == 4 {
            return Ok(());
        }
    }
    if bytes.len() > 3 {
        if memchr::memmem::find(bytes, HEAD_END).is_some() {
            return Ok(());
        }
        s = bytes[bytes.len() - 3..]
            .iter()
            .fold(0, |s, &b| head_end_step(s, b));
    }
    Err(s)
}

/// A socket that fails reads with `TimedOut` when a request head is not
/// complete within `limit` of its first byte (of the connection opening,
/// for the first). The end of a head is the first blank line (`\r\n\r\n`)
/// after the head begins; the next head begins with the first byte read
/// after the server writes.
///
/// One timer serves the whole connection: a new head only notes when it
/// began, and the timer is moved on when it fires early for a head that
/// began after it was set, so a keep-alive request costs no timer update.
pub struct HeadDeadline<IO> {
    io: IO,
    limit: Duration,
    phase: Phase,
    deadline: Pin<Box<Sleep>>,
}

impl<IO> HeadDeadline<IO> {
    pub fn new(io: IO, limit: Duration) -> Self {
        let began = Instant::now();
        Self {
            io,
            limit,
            phase: Phase::Head { began, seen: 0 },
            deadline: Box::pin(tokio::time::sleep_until(began + limit)),
        }
    }

    /// A write is the response: the next byte read begins the next head.
    /// An informational `100 Continue` is not (the body follows it).
    fn wrote(&mut self, data: &[u8]) {
        if !data.is_empty() && !data.starts_with(b"HTTP/1.1 1") {
            self.phase = Phase::Idle;
        }
    }

    /// Follows the bytes just read through the head's end marker.
    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let (began, seen) = match self.phase {
            Phase::Request => return,
            Phase::Idle => (Instant::now(), 0),
            Phase::Head { began, seen } => (began, seen),
        };
        self.phase = match follow_head_end(seen, bytes) {
            Ok(()) => Phase::Request,
            Err(seen) => Phase::Head { began, seen },
        };
    }

    /// Whether the head being read is past its limit. The timer may still
    /// be set for an earlier head; then it is moved to this head's end.
    fn head_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Phase::Head { began, .. } = self.phase else {
            return false;
        };
        let due = began + self.limit;
        while self.deadline.as_mut().poll(cx).is_ready() {
            if self.deadline.deadline() >= due {
                return true;
            }
            self.deadline.as_mut().reset(due);
        }
        false
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for HeadDeadline<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.head_expired(cx) {
            metrics::counter!("flashsale_header_timeouts_total").increment(1);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not complete in time",
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        this.saw(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for HeadDeadline<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, data))?;
        this.wrote(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        this.wrote(&first[..n.min(first.len())]);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Open connections per client address.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

/// One admitted connection's share of its address's count.
struct Held(Option<(Arc<PerIp>, IpAddr)>);

impl PerIp {
    fn admit(self: &Arc<Self>, ip: IpAddr, limits: &ConnLimits) -> Option<Held> {
        let ip = ip.to_canonical();
        if limits.max_connections_per_ip == 0 || limits.trusted.contains(ip) {
            return Some(Held(None));
        }
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= limits.max_connections_per_ip {
            return None;
        }
        *n += 1;
        Some(Held(Some((self.clone(), ip))))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((per_ip, ip)) = self.0.take() {
            let mut map = per_ip.0.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// Answers a connection over its address's cap with a 503 (best effort,
/// without waiting) and closes it.
fn refuse(stream: TcpStream) {
    metrics::counter!("flashsale_connections_refused_total").increment(1);
    const BODY: &str = r#"{"type":"urn:flashsale:error:unavailable","title":"Unavailable","status":503,"error":"unavailable","message":"too many connections from this address; retry shortly"}"#;
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: 1\r\ncache-control: no-store\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.try_write(resp.as_bytes());
}

/// An accept error: per-connection ones are skipped; others (out of file
/// descriptors) pause the loop briefly instead of spinning.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "accept failed; pausing 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn admitted(per_ip: &Arc<PerIp>, ip: &str, limits: &ConnLimits) -> Option<Held> {
        per_ip.admit(ip.parse().expect("ip"), limits)
    }

    #[test]
    fn per_address_cap_and_release() {
        let limits = ConnLimits {
            max_connections_per_ip: 2,
            trusted: TrustedProxies::parse("127.0.0.0/8,10.9.0.0/16").expect("list"),
            ..ConnLimits::default()
        };
        let per_ip = Arc::new(PerIp::default());
        let a = admitted(&per_ip, "10.0.0.1", &limits).expect("first");
        let _b = admitted(&per_ip, "10.0.0.1", &limits).expect("second");
        assert!(admitted(&per_ip, "10.0.0.1", &limits).is_none());
        assert!(admitted(&per_ip, "10.0.0.2", &limits).is_some());
        drop(a);
        assert!(admitted(&per_ip, "10.0.0.1", &limits).is_some());
        let proxy: Vec<Held> = (0..10)
            .map(|_| admitted(&per_ip, "127.0.0.1", &limits).expect("loopback is exempt"))
            .chain((0..10).map(|_| admitted(&per_ip, "10.9.3.4", &limits).expect("trusted")))
            .collect();
        assert_eq!(proxy.len(), 20);
        // An IPv4 peer on a dual-stack listener is the same address.
        let _c = admitted(&per_ip, "::ffff:10.0.0.3", &limits).expect("first");
        let _d = admitted(&per_ip, "10.0.0.3", &limits).expect("second");
        assert!(admitted(&per_ip, "10.0.0.3", &limits).is_none());
        assert!(admitted(&per_ip, "::ffff:10.9.0.1", &limits).is_some());
        // No trusted peers: loopback is capped like any address.
        let limits = ConnLimits {
            trusted: TrustedProxies::none(),
            ..limits
        };
        let _e = admitted(&per_ip, "127.0.0.1", &limits).expect("first");
        let _f = admitted(&per_ip, "127.0.0.1", &limits).expect("second");
        assert!(admitted(&per_ip, "127.0.0.1", &limits).is_none());
    }

    const LIMIT: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn a_head_must_end_in_time_but_idle_is_not_a_head() {
        let (client, server) = tokio::io::duplex(1024);
        let mut server = HeadDeadline::new(server, LIMIT);
        let mut client = client;
        let mut buf = [0u8; 64];
        // A whole head in time: readable, then the response.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(n, 18);
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        // Idle past the head limit: no error (idle is hyper's timer).
        tokio::time::sleep(LIMIT * 2).await;
        client.write_all(b"GET /x HT").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 9);
        // The head began: it must end within the limit of its first byte.
        tokio::time::sleep(LIMIT + LIMIT / 2).await;
        let e = server.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    proptest::proptest! {
        /// However a byte stream is cut into reads, the marker is found
        /// exactly where a byte-by-byte scan finds it.
        #[test]
        fn the_end_marker_is_found_across_any_cuts(
            data in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(b'\r'),
                    proptest::strategy::Just(b'\n'),
                    proptest::strategy::Just(b'a')
                ], 0..40),
            cuts in proptest::collection::vec(1usize..8, 0..12),
        ) {
            let naive = data.windows(4).position(|w| w == HEAD_END).map(|i| i + 4);
            let mut seen = 0;
            let mut at: usize = 0;
            let mut found = None;
            for len in cuts.iter().copied().chain(std::iter::once(usize::MAX)) {
                let part = &data[at..data.len().min(at.saturating_add(len))];
                let start = at;
                at += part.len();
                match follow_head_end(seen, part) {
                    Ok(()) => { found = Some((start, at)); break; }
                    Err(s) => seen = s,
                }
                if at == data.len() { break; }
            }
            // Found within the read that completes the marker.
            match (naive, found) {
                (None, None) => {}
                (Some(end), Some((start, read_end))) => {
                    proptest::prop_assert!(start < end && end <= read_end)
                }
                other => proptest::prop_assert!(false, "{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn the_end_marker_may_be_split_across_reads() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = HeadDeadline::new(server, LIMIT);
        let mut buf = [0u8; 64];
        for part in [&b"GET / HTTP/1.1\r\nA: b\r"[..], b"\n\r", b"\nbody"] {
            client.write_all(part).await.unwrap();
            assert_eq!(server.read(&mut buf).await.unwrap(), part.len());
        }
        // Past the limit, the request phase is not timed here.
        tokio::time::sleep(LIMIT * 2).await;
        client.write_all(b"more").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 4);
    }
}
