//! Group commit of replication acknowledgements.
//!
//! `WAIT n timeout` blocks the connection that sends it and covers every write
//! that connection made before it. Replication is in order, so a write made on
//! a dedicated *ack connection* after other connections' writes completed has a
//! larger replication offset than all of them: a `WAIT` behind that write
//! covers them too. The [`Acker`] owns such a connection and runs *rounds*:
//! `INCR <prefix>:ack` then `WAIT n timeout`, pipelined. A purchase whose
//! Function call has returned asks for the next round to *start* (its number
//! is read after the reply arrived, so the round's `INCR` is sent later and
//! covers it) and waits for that round's verdict. Every purchase that arrives
//! while a round is in flight shares the next one: one `WAIT` per batch, not
//! per purchase, and the purchase connections are never blocked by `WAIT`.
//!
//! Nothing here allocates per request: a request reads two atomics, wakes the
//! round task and waits on a `watch` channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::{Notify, watch};

use super::error::{Verdict, verdict};

/// Why a round did not confirm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckFault {
    /// WAIT returned fewer replicas than required.
    Shortfall,
    /// The ack connection failed (I/O, READONLY, NOREPLICAS, …): the master is stale.
    Link,
    /// The master refused the round's `INCR` for want of memory: the link
    /// stays (the node is the master), the round confirms nothing.
    Full,
}

#[derive(Clone, Copy, Debug, Default)]
struct RoundState {
    completed: u64,
    last_ok: u64,
    last_fault: Option<AckFault>,
}

struct Shared {
    started: AtomicU64,
    wanted: AtomicU64,
    closed: AtomicBool,
    wake: Notify,
    /// Verdicts of the even and of the odd rounds. A purchase waits on the
    /// channel of its round's parity, so the round in flight when it
    /// arrived (the other parity) does not wake it for nothing.
    done: [watch::Sender<RoundState>; 2],
}

/// Handle of one master link's round task. Dropping it stops the task and
/// closes its connection.
pub struct Acker {
    shared: Arc<Shared>,
}

/// What the round task needs from its owner.
pub struct AckConfig {
    pub counter_key: String,
    pub wait_timeout: Duration,
    /// Replicas required, read at the start of every round (it follows the
    /// Sentinels' view of which replicas are up).
    pub required: Arc<AtomicUsize>,
    /// Set when the link fails, so the owner re-resolves the master.
    pub on_link_fault: Arc<dyn Fn() + Send + Sync>,
    /// Set once the link is retired (the Sentinels name another master): a
    /// WAIT that returns after that confirms nothing.
    pub retired: Arc<AtomicBool>,
}

impl Acker {
    pub fn spawn(conn: MultiplexedConnection, cfg: AckConfig) -> Self {
        let done = [
            watch::channel(RoundState::default()).0,
            watch::channel(RoundState::default()).0,
        ];
        let shared = Arc::new(Shared {
            started: AtomicU64::new(0),
            wanted: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            wake: Notify::new(),
            done,
        });
        tokio::spawn(run(conn, cfg, shared.clone()));
        Self { shared }
    }

    /// Waits for one round that started after this call: `Ok` once the
    /// replicas hold every write made (and answered) before the call.
    pub async fn ack(&self) -> Result<(), AckFault> {
        let s = &self.shared;
        let target = s.started.load(Ordering::SeqCst) + 1;
        s.wanted.fetch_max(target, Ordering::SeqCst);
        s.wake.notify_one();
        let mut rx = s.done[(target % 2) as usize].subscribe();
        let state = match rx.wait_for(|r| r.completed >= target).await {
            Ok(r) => *r,
            Err(_) => return Err(AckFault::Link),
        };
        if state.last_ok >= target {
            Ok(())
        } else {
            Err(state.last_fault.unwrap_or(AckFault::Link))
        }
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }
}

async fn run(mut conn: MultiplexedConnection, cfg: AckConfig, s: Arc<Shared>) {
    let timeout_ms = cfg.wait_timeout.as_millis() as u64;
    let mut broken = false;
    loop {
        if s.closed.load(Ordering::SeqCst) {
            break;
        }
        if s.wanted.load(Ordering::SeqCst) <= s.started.load(Ordering::SeqCst) {
            s.wake.notified().await;
            continue;
        }
        let round = s.started.fetch_add(1, Ordering::SeqCst) + 1;
        let required = cfg.required.load(Ordering::SeqCst);
        let verdict = if broken || cfg.retired.load(Ordering::SeqCst) {
            Err(AckFault::Link)
        } else if required == 0 {
            Ok(())
        } else {
            let mut pipe = redis::pipe();
            pipe.cmd("INCR")
                .arg(&cfg.counter_key)
                .ignore()
                .cmd("WAIT")
                .arg(required)
                .arg(timeout_ms);
            let began = std::time::Instant::now();
            let reply = pipe.query_async::<(i64,)>(&mut conn).await;
            // How long the replicas took to confirm a round: the replication
            // lag every purchase waits out (about 1.5 rounds on average).
            metrics::histogram!("flashsale_ack_round_seconds")
                .record(began.elapsed().as_secs_f64());
            match reply {
                Ok(_) if cfg.retired.load(Ordering::SeqCst) => Err(AckFault::Link),
                Ok((acked,)) if acked >= required as i64 => Ok(()),
                Ok(_) => {
                    metrics::counter!("flashsale_wait_shortfalls_total").increment(1);
                    Err(AckFault::Shortfall)
                }
                Err(e) if verdict(&e) == Verdict::Full => Err(AckFault::Full),
                Err(e) => {
                    tracing::warn!(error = %e, "ack round failed; master link is stale");
                    broken = true;
                    (cfg.on_link_fault)();
                    Err(AckFault::Link)
                }
            }
        };
        s.done[(round % 2) as usize].send_modify(|st| {
            st.completed = round;
            match verdict {
                Ok(()) => st.last_ok = round,
                Err(f) => st.last_fault = Some(f),
            }
        });
    }
}
