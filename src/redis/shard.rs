//! One shard: a master link, the replicas read from, and how many of them
//! must acknowledge a write. A Sentinel group (or one development node) is
//! one shard; a Redis Cluster has one per primary that owns slots. The
//! watchers (`sentinel.rs`, `cluster.rs`) decide what a shard's master and
//! replicas are and install them here; nothing here asks any node who is
//! master.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use redis::aio::MultiplexedConnection;

use super::link::role_reply;
use super::{Addr, Inner, MasterLink, ROLE_CHECK_TIMEOUT, connect};
use crate::config::RedisTarget;

pub(crate) struct ReplicaLink {
    pub(crate) addr: Addr,
    pub(crate) conn: MultiplexedConnection,
}

/// One master and its replicas.
pub struct Shard {
    /// Stable for the life of the process: a failover keeps the shard (its
    /// members stay), only the master link changes.
    pub id: u64,
    pub(crate) master: ArcSwapOption<MasterLink>,
    pub(crate) replicas: ArcSwap<Vec<ReplicaLink>>,
    pub(crate) replica_next: AtomicUsize,
    pub(crate) required_acks: Arc<AtomicUsize>,
    /// Cluster node ids of the members (master and replicas) last seen,
    /// by which a later view's shard is recognised as this one.
    pub(crate) members: std::sync::Mutex<Vec<String>>,
}

impl Shard {
    pub(crate) fn new(id: u64, required: usize) -> Self {
        Self {
            id,
            master: ArcSwapOption::empty(),
            replicas: ArcSwap::from_pointee(Vec::new()),
            replica_next: AtomicUsize::new(0),
            required_acks: Arc::new(AtomicUsize::new(required)),
            members: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The master link, unless there is none or it is retired.
    pub fn current(&self) -> Option<Arc<MasterLink>> {
        self.master.load_full().filter(|l| !l.is_stale())
    }

    /// Replicas a write must reach before it is acknowledged right now.
    pub fn required_acks(&self) -> usize {
        self.required_acks.load(Ordering::Relaxed)
    }

    /// Sets the number of replicas required per acknowledgement.
    pub(crate) fn set_required(&self, n: usize) {
        if self.required_acks.swap(n, Ordering::SeqCst) != n {
            tracing::info!(
                shard = self.id,
                required = n,
                "replicas required per acknowledgement"
            );
        }
    }

    /// Retires the link when it points at `addr`: nothing more is written
    /// or acknowledged there.
    pub(crate) fn retire_if(&self, addr: &Addr, why: &str, inner: &Inner) {
        if let Some(l) = self.master.load_full()
            && l.addr == *addr
            && !l.is_stale()
        {
            tracing::warn!(shard = self.id, master = %l.addr, why, "retiring the master link");
            l.retire();
            inner.wake.notify_one();
        }
    }

    /// Keeps replica links for exactly the replicas that may be read (new
    /// ones are ROLE-checked concurrently, each within a short timeout, so
    /// a frozen node cannot hold up the watcher, and must report a
    /// connected link). In a cluster a replica answers reads only on a
    /// connection that said `READONLY`.
    pub(crate) async fn refresh_replicas(&self, inner: &Inner, up: &[Addr]) {
        let current = self.replicas.load();
        let same = current.len() == up.len() && current.iter().all(|r| up.contains(&r.addr));
        if same {
            return;
        }
        let s = &inner.settings;
        let cluster = matches!(s.target, RedisTarget::Cluster { .. });
        let fresh = futures_util::future::join_all(
            up.iter()
                .filter(|a| !current.iter().any(|r| &r.addr == *a))
                .map(|addr| async move {
                    let check = async {
                        let mut c = connect(
                            &addr.host,
                            addr.port,
                            inner.access(),
                            s.timeout,
                            Some(s.timeout),
                        )
                        .await?;
                        let r = role_reply(&mut c).await?;
                        if cluster {
                            let () = redis::cmd("READONLY").query_async(&mut c).await?;
                        }
                        Ok::<_, redis::RedisError>((c, r))
                    };
                    match tokio::time::timeout(s.timeout.min(ROLE_CHECK_TIMEOUT), check).await {
                        Ok(Ok((c, (role, state)))) if role == "slave" && state == "connected" => {
                            Some(ReplicaLink {
                                addr: addr.clone(),
                                conn: c,
                            })
                        }
                        Ok(Ok((_, (role, state)))) => {
                            tracing::debug!(replica = %addr, %role, %state, "not a connected replica; skipped");
                            None
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "replica check failed");
                            None
                        }
                        Err(_) => {
                            tracing::debug!(replica = %addr, "replica check timed out");
                            None
                        }
                    }
                }),
        )
        .await;
        let mut next: Vec<ReplicaLink> = current
            .iter()
            .filter(|r| up.contains(&r.addr))
            .map(|r| ReplicaLink {
                addr: r.addr.clone(),
                conn: r.conn.clone(),
            })
            .collect();
        next.extend(fresh.into_iter().flatten());
        tracing::info!(
            shard = self.id,
            replicas = next.len(),
            "replica set changed"
        );
        self.replicas.store(Arc::new(next));
    }
}
