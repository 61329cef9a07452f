//! The cluster watcher: follows a Redis Cluster and keeps one [`Shard`] per
//! primary that owns slots, each with its master link, its readable
//! replicas and its acknowledgement count, plus the map of which shard
//! owns which slot.
//!
//! One task per process. Every pass (every `poll_interval`, ≤ 1 s; every
//! 100 ms while a slot has no usable owner; at once when a caller reports
//! an error) asks every known node `CLUSTER NODES` in parallel, each within
//! 500 ms, and trusts the answer that knows the newest configuration: the
//! highest `configEpoch` of a primary owning slots (a node that has not yet
//! heard of a failover or a slot move reports older epochs), then the most
//! slots owned by healthy primaries. The nodes it names are asked from then
//! on, besides the seeds. `CLUSTER NODES` rather than `CLUSTER SHARDS`
//! because it carries the epochs that decide between two views.
//!
//! Per primary owning slots, its shard is the one of this process that
//! shares a member (the primary or a replica, by node id) with it, so a
//! failover keeps the shard and only replaces its link; a primary sharing
//! none is a new shard. A link is installed only after `ROLE` there says
//! `master` and the Function library there is ours (loaded when it is not:
//! a promoted replica has it through replication, a new node does not).
//! A shard whose primary moved is retired before the new link is built.
//!
//! Acknowledgement per shard: `FLASHSALE_REPLICA_ACKS=all` counts the
//! primary's replicas that the answer does not flag `fail` or `fail?`;
//! each link's rounds write their counter in a slot of its own shard
//! (`P:ack:{tag}`), so the `WAIT` after it covers that node's writes.
//! Reads go to those replicas on connections that said `READONLY`.
//!
//! Unlike with Sentinels (at least one replica), the count may be zero: a
//! shard of a 3 + 3 cluster whose primary failed over has no replica until
//! the old primary comes back as one, and no other node could take its
//! slots over meanwhile — there is no failover left to survive, only the
//! loss of the primary's own process, which its AOF covers (fsync every
//! second: see docs/ARCHITECTURE.md, "Redis Cluster"). A replica that
//! stops answering counts until the cluster flags it (`fail?` after the
//! node timeout): until then a purchase on that shard waits for it (the
//! hold), never promised on fewer replicas than the cluster believes up.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::slots::SLOTS;
use super::{Addr, DbError, Inner, Shard, Topology, UNOWNED, connect};
use crate::config::{RedisTarget, ReplicaAcks};

const NODE_TIMEOUT: Duration = Duration::from_millis(500);

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Node {
    pub id: String,
    pub addr: Option<Addr>,
    pub master: bool,
    /// Flagged `fail` or `fail?` (or without an address, or in handshake).
    pub failing: bool,
    /// The primary's id, for a replica.
    pub master_id: Option<String>,
    pub config_epoch: u64,
    /// Slot ranges owned (inclusive), for a primary.
    pub slots: Vec<(u16, u16)>,
}

/// Parses `CLUSTER NODES`. Lines that do not parse are skipped; importing
/// and migrating marks (`[slot->-id]`) are not ownership and are skipped.
pub(super) fn parse_nodes(text: &str) -> Vec<Node> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let flags: Vec<&str> = f[2].split(',').collect();
            let has = |x: &str| flags.contains(&x);
            let addr = f[1].split('@').next().and_then(|hp| {
                let (h, p) = hp.rsplit_once(':')?;
                let port: u16 = p.parse().ok()?;
                (!h.is_empty() && port != 0).then(|| Addr::new(h.trim_matches(['[', ']']), port))
            });
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => {
                        let x: u16 = s.parse().ok()?;
                        Some((x, x))
                    }
                })
                .filter(|&(a, b)| a <= b && b < SLOTS)
                .collect();
            Some(Node {
                id: f[0].to_owned(),
                failing: has("fail")
                    || has("fail?")
                    || has("noaddr")
                    || has("handshake")
                    || addr.is_none(),
                addr,
                master: has("master"),
                master_id: (f[3] != "-").then(|| f[3].to_owned()),
                config_epoch: f[6].parse().unwrap_or(0),
                slots,
            })
        })
        .collect()
}

/// How much an answer knows: the newest primary epoch, then slots owned
/// by primaries not flagged failing.
fn score(nodes: &[Node]) -> (u64, u32) {
    let epoch = nodes
        .iter()
        .filter(|n| n.master && !n.slots.is_empty())
        .map(|n| n.config_epoch)
        .max()
        .unwrap_or(0);
    let owned = nodes
        .iter()
        .filter(|n| n.master && !n.failing)
        .flat_map(|n| n.slots.iter())
        .map(|&(a, b)| u32::from(b - a) + 1)
        .sum();
    (epoch, owned)
}

/// The answer to trust of several (see the module doc).
pub(super) fn best(answers: Vec<Vec<Node>>) -> Option<Vec<Node>> {
    answers
        .into_iter()
        .filter(|a| a.iter().any(|n| n.master && !n.slots.is_empty()))
        .max_by_key(|a| score(a))
}

/// What the watcher keeps between passes.
struct Memory {
    known: Vec<Addr>,
    conns: HashMap<Addr, MultiplexedConnection>,
}

impl Memory {
    async fn ask(&mut self, inner: &Inner) -> Vec<Vec<Node>> {
        let s = &inner.settings;
        let asks = self.known.iter().map(|a| {
            let cached = self.conns.get(a).cloned();
            async move {
                let one = async {
                    let mut c = match cached {
                        Some(c) => c,
                        None => {
                            connect(
                                &a.host,
                                a.port,
                                inner.access(),
                                NODE_TIMEOUT,
                                Some(NODE_TIMEOUT),
                            )
                            .await?
                        }
                    };
                    let text: String = redis::cmd("CLUSTER")
                        .arg("NODES")
                        .query_async(&mut c)
                        .await?;
                    Ok::<_, redis::RedisError>((c, text))
                };
                let _ = s;
                (a.clone(), tokio::time::timeout(NODE_TIMEOUT, one).await)
            }
        });
        let answers = futures_util::future::join_all(asks).await;
        let mut out = Vec::with_capacity(answers.len());
        for (addr, r) in answers {
            match r {
                Ok(Ok((c, text))) => {
                    self.conns.insert(addr, c);
                    out.push(parse_nodes(&text));
                }
                Ok(Err(e)) => {
                    tracing::debug!(node = %addr, error = %e, "CLUSTER NODES failed");
                    self.conns.remove(&addr);
                }
                Err(_) => {
                    tracing::debug!(node = %addr, "CLUSTER NODES timed out");
                    self.conns.remove(&addr);
                }
            }
        }
        out
    }
}

/// One pass: read the cluster, match its primaries to shards, keep or
/// replace each shard's link, refresh replicas and acknowledgement counts,
/// and install the slot map.
async fn refresh(inner: &Inner, memory: &mut Memory) -> Result<(), DbError> {
    let answers = memory.ask(inner).await;
    let Some(view) = best(answers) else {
        return Err(DbError::Discovery(format!(
            "no node of {} answered CLUSTER NODES with slots",
            memory
                .known
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )));
    };
    for n in &view {
        if let Some(a) = &n.addr
            && !memory.known.contains(a)
        {
            memory.known.push(a.clone());
        }
    }
    let mut primaries: Vec<&Node> = view
        .iter()
        .filter(|n| n.master && !n.slots.is_empty() && n.addr.is_some())
        .collect();
    primaries.sort_by_key(|n| n.slots.iter().map(|s| s.0).min());

    let old = inner.topology();
    let mut taken: Vec<u64> = Vec::new();
    let mut shards: Vec<Arc<Shard>> = Vec::with_capacity(primaries.len());
    let mut map = vec![UNOWNED; SLOTS as usize].into_boxed_slice();
    let mut last_err = None;
    for p in &primaries {
        let replicas: Vec<&Node> = view
            .iter()
            .filter(|n| !n.master && n.master_id.as_deref() == Some(p.id.as_str()))
            .collect();
        let members: Vec<String> = std::iter::once(p.id.clone())
            .chain(replicas.iter().map(|r| r.id.clone()))
            .collect();
        let shard = old
            .shards
            .iter()
            .find(|s| {
                !taken.contains(&s.id)
                    && s.members
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .any(|m| members.contains(m))
            })
            .cloned()
            .unwrap_or_else(|| inner.new_shard());
        taken.push(shard.id);
        *shard.members.lock().unwrap_or_else(|e| e.into_inner()) = members;
        let index = shards.len() as u16;
        for &(a, b) in &p.slots {
            for s in a..=b {
                map[s as usize] = index;
            }
        }
        let up: Vec<Addr> = replicas
            .iter()
            .filter(|r| !r.failing)
            .filter_map(|r| r.addr.clone())
            .collect();
        if inner.settings.replica_acks == ReplicaAcks::All {
            // Zero after a failover until the old primary is back as a
            // replica (see the module doc).
            shard.set_required(up.len());
        }
        let addr = p.addr.clone().expect("filtered on an address");
        let current = shard.master.load_full();
        let keep = current
            .as_ref()
            .is_some_and(|l| !l.is_stale() && l.addr == addr);
        if !keep {
            if let Some(l) = current.as_ref().filter(|l| !l.is_stale()) {
                tracing::warn!(shard = shard.id, old = %l.addr, new = %addr, "primary moved; retiring the old link");
                l.retire();
            }
            let ack_slot = p.slots.iter().map(|s| s.1).max();
            match inner.build_link(&addr, &shard, ack_slot).await {
                Ok(link) => {
                    let changed = current.as_ref().is_some_and(|l| l.addr != link.addr);
                    tracing::info!(
                        shard = shard.id,
                        from = %current.as_ref().map(|l| l.addr.to_string()).unwrap_or_else(|| "-".into()),
                        to = %addr,
                        epoch = link.epoch,
                        "master link installed"
                    );
                    if changed {
                        inner.switches.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("flashsale_master_switches_total").increment(1);
                    }
                    inner.install(&shard, Some(link));
                }
                Err(e) => {
                    tracing::debug!(shard = shard.id, master = %addr, error = %e, "primary candidate rejected");
                    last_err = Some(e);
                }
            }
        }
        shard.refresh_replicas(inner, &up).await;
        shards.push(shard);
    }
    // Shards no longer in the cluster: their links stop acknowledging.
    for s in old.shards.iter().filter(|s| !taken.contains(&s.id)) {
        if let Some(l) = s.current() {
            tracing::warn!(shard = s.id, master = %l.addr, "shard left the cluster; retiring its link");
            l.retire();
        }
    }
    let same = old.shards.len() == shards.len()
        && old.shards.iter().zip(&shards).all(|(a, b)| a.id == b.id)
        && old.slots.as_deref() == Some(&map[..]);
    drop(old);
    if !same {
        tracing::info!(shards = shards.len(), "cluster topology installed");
        inner.set_topology(Topology {
            shards,
            slots: Some(map),
        });
    }
    match last_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The watcher task. Holds only a weak reference between passes, so
/// dropping the last [`super::Redis`] stops it.
pub(super) async fn watch(weak: Weak<Inner>) {
    let Some(inner) = weak.upgrade() else { return };
    let RedisTarget::Cluster { seeds } = &inner.settings.target else {
        return;
    };
    let seeds = seeds.clone();
    drop(inner);
    let mut memory = Memory {
        known: seeds.iter().map(|(h, p)| Addr::new(h, *p)).collect(),
        conns: HashMap::new(),
    };
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let result = refresh(&inner, &mut memory).await;
        let t = inner.topology();
        let missing = t.shards.is_empty()
            || t.shards.iter().any(|s| s.current().is_none())
            || t.slots.as_deref().is_some_and(|m| m.contains(&UNOWNED));
        drop(t);
        let period = inner.after_pass(&result, missing);
        let wake = inner.wake.clone();
        drop(inner);
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383
6ec2 127.0.0.1:30005@31005 slave,fail? 67ed 0 1426238316232 2 connected
824f 127.0.0.1:30006@31006 slave 292f 0 1426238317741 3 connected
e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 [5461->-67ed]
";

    #[test]
    fn nodes_parse() {
        let n = parse_nodes(NODES);
        assert_eq!(n.len(), 6);
        let e = n.iter().find(|x| x.id == "e7d1").unwrap();
        assert!(e.master && !e.failing);
        assert_eq!(e.slots, vec![(0, 5460)]);
        assert_eq!(e.addr, Some(Addr::new("127.0.0.1", 30001)));
        let r = n.iter().find(|x| x.id == "6ec2").unwrap();
        assert!(!r.master && r.failing);
        assert_eq!(r.master_id.as_deref(), Some("67ed"));
        assert_eq!(n.iter().find(|x| x.id == "292f").unwrap().config_epoch, 3);
    }

    #[test]
    fn the_newest_answer_wins() {
        let before = parse_nodes(NODES);
        // The replica of 67ed has been promoted (epoch 7) and took its slots.
        let after = parse_nodes(
            &NODES
                .replace(
                    "67ed 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922",
                    "67ed 127.0.0.1:30002@31002 master,fail - 0 1426238316232 2 disconnected",
                )
                .replace(
                    "6ec2 127.0.0.1:30005@31005 slave,fail? 67ed 0 1426238316232 2 connected",
                    "6ec2 127.0.0.1:30005@31005 master - 0 1426238316232 7 connected 5461-10922",
                ),
        );
        let b = best(vec![before.clone(), after.clone(), before]).unwrap();
        assert_eq!(b, after);
        assert!(best(vec![parse_nodes("x :0@0 myself,master - 0 0 0 connected")]).is_none());
    }
}
