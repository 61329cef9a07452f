//! The watcher: follows the Sentinels and keeps the master link and the
//! replica set current.
//!
//! One task per process. It subscribes on every Sentinel (each subscription
//! reconnects on its own) to `+switch-master`, to the failover's own events
//! and to replica up/down events, and polls all Sentinels as a backstop
//! every `poll_interval` (≤ 1 s; every 100 ms while there is no usable
//! master). Each pass asks every Sentinel `SENTINEL MASTER <name>` in
//! parallel and trusts the answer with the highest `config-epoch` (a
//! Sentinel that has not yet heard of a failover reports an older epoch), or
//! the address a `+switch-master` or `+promoted-slave` just announced. The
//! address is only installed after `ROLE` there says `master`.
//!
//! A failover is seen before the promotion: `+try-failover`,
//! `+elected-leader`, `+selected-slave` and the other `failover-state`
//! events of a master retire its link at once (in the subscriber, not on
//! the next pass). Nothing is written to the old master from then on, so
//! the replicas stay where the promoted one is and can resync partially,
//! and purchases wait (the hold) for the new master instead of writing what
//! the demotion would discard. `+promoted-slave` names the new master
//! before `+switch-master` does (the latter waits for every replica to be
//! reconfigured): its link is built then.
//!
//! When no Sentinel answers (all down, frozen or cut off) the watcher does
//! not trust anything new about the group, with one exception: a stale
//! link (its node answered `READONLY`: demoted to a replica) is followed by
//! `ROLE`. The old master is asked, and failing that the shard's known
//! replicas; a node that reports being a replica of another address names
//! a candidate, and the candidate's link is installed only after `ROLE`
//! there says `master`, as always. The acknowledgement count is then the
//! Sentinels' rule applied to what this process knows: the replicas
//! counted before, less the new master, with the old master counted only
//! once the new master lists it as a replica (at least one); nothing else
//! changes it until a Sentinel answers again, and then it is trusted again.
//!
//! Why one file of this size: it is one task — the subscriptions, the
//! polling pass and the loop that ties them — and a pass reads top to
//! bottom; the parts without I/O are in `view.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;

use super::link::client;
use super::link::{replica_of, replicas_of_master};
use super::view::{Event, View, fields, parse_event, readable_replicas, required_replicas};
use super::{Addr, DbError, Inner, ROLE_CHECK_TIMEOUT, Shard, connect, url_host_port};
use crate::config::{Access, RedisTarget, ReplicaAcks};

const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);
const EVENTS: &[&str] = &[
    "+switch-master",
    "+try-failover",
    "+elected-leader",
    "+failover-state-select-slave",
    "+selected-slave",
    "+failover-state-send-slaveof-noone",
    "+failover-state-wait-promotion",
    "+promoted-slave",
    "+failover-state-reconf-slaves",
    "-failover-abort-not-elected",
    "-failover-abort-no-good-slave",
    "-failover-abort-slave-timeout",
    "+failover-end",
    "+failover-end-for-timeout",
    "+sdown",
    "-sdown",
    "+odown",
    "-odown",
    "+slave",
    "+convert-to-slave",
    "+slave-reconf-done",
];

/// What the watcher remembers between passes.
#[derive(Default)]
struct Memory {
    last_master: Option<Addr>,
    former_masters: HashSet<Addr>,
}

/// Persistent connections to the Sentinels, owned by the watcher task.
struct Sentinels {
    addrs: Vec<Addr>,
    access: Access,
    conns: Vec<Option<MultiplexedConnection>>,
}

impl Sentinels {
    async fn conn(&mut self, i: usize) -> Result<MultiplexedConnection, DbError> {
        if let Some(c) = &self.conns[i] {
            return Ok(c.clone());
        }
        let a = &self.addrs[i];
        let c = connect(
            &a.host,
            a.port,
            &self.access,
            SENTINEL_TIMEOUT,
            Some(SENTINEL_TIMEOUT),
        )
        .await?;
        self.conns[i] = Some(c.clone());
        Ok(c)
    }

    async fn ask_one(
        mut conn: MultiplexedConnection,
        name: &str,
    ) -> Result<(HashMap<String, String>, Vec<HashMap<String, String>>), redis::RedisError> {
        let (master, replicas): (Value, Value) = redis::pipe()
            .cmd("SENTINEL")
            .arg("MASTER")
            .arg(name)
            .cmd("SENTINEL")
            .arg("REPLICAS")
            .arg(name)
            .query_async(&mut conn)
            .await?;
        let replicas = match &replicas {
            Value::Array(items) => items.iter().map(fields).collect(),
            _ => Vec::new(),
        };
        Ok((fields(&master), replicas))
    }

    /// Asks every Sentinel at once; the answer with the highest config epoch wins.
    async fn view(&mut self, name: &str) -> Result<View, DbError> {
        let mut conns = Vec::with_capacity(self.addrs.len());
        for i in 0..self.addrs.len() {
            conns.push(self.conn(i).await.ok());
        }
        let answers = futures_util::future::join_all(conns.into_iter().map(|c| async move {
            match c {
                Some(c) => tokio::time::timeout(SENTINEL_TIMEOUT, Self::ask_one(c, name))
                    .await
                    .ok(),
                None => None,
            }
        }))
        .await;
        let mut got = Vec::with_capacity(answers.len());
        for (i, answer) in answers.into_iter().enumerate() {
            match answer {
                Some(Ok(a)) => got.push(a),
                Some(Err(e)) => {
                    if e.code().is_none() {
                        self.conns[i] = None;
                    }
                }
                None => self.conns[i] = None,
            }
        }
        let best = View::from_answers(got);
        best.ok_or_else(|| {
            DbError::Discovery(format!(
                "no Sentinel of {} knows master `{name}`",
                self.addrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ))
        })
    }
}

/// `ROLE` of the node at `addr` (`None`: no answer within the role-check
/// timeout, or the process's own timeout if shorter).
async fn role_of(inner: &Inner, addr: &Addr) -> Option<Value> {
    let ask = async {
        let mut c = connect(
            &addr.host,
            addr.port,
            inner.access(),
            ROLE_CHECK_TIMEOUT,
            Some(ROLE_CHECK_TIMEOUT),
        )
        .await?;
        redis::cmd("ROLE").query_async::<Value>(&mut c).await
    };
    let limit = inner.settings.timeout.min(ROLE_CHECK_TIMEOUT);
    match tokio::time::timeout(limit, ask).await {
        Ok(Ok(role)) => Some(role),
        Ok(Err(e)) => {
            tracing::debug!(node = %addr, error = %e, "ROLE not answered");
            None
        }
        Err(_) => {
            tracing::debug!(node = %addr, "ROLE timed out");
            None
        }
    }
}

/// The master `addr` follows, by its own `ROLE` (`None`: it does not
/// answer in time, or is not a replica).
async fn master_of(inner: &Inner, addr: &Addr) -> Option<Addr> {
    replica_of(&role_of(inner, addr).await?)
}

/// With no Sentinel answering and the link to `old` stale: where the
/// nodes this process knows say the master went. Asks `ROLE` of the old
/// master and of the shard's known replicas at once; the first of them, in
/// that order, that is a replica of an address other than `old` names the
/// candidate. Returns (the node that answered, the candidate). The
/// candidate is a candidate only: its link is installed after `ROLE` there
/// says `master`.
async fn follow_roles(inner: &Inner, shard: &Shard, old: &Addr) -> Option<(Addr, Addr)> {
    let mut ask = vec![old.clone()];
    ask.extend(
        shard
            .replicas
            .load()
            .iter()
            .map(|r| r.addr.clone())
            .filter(|a| a != old),
    );
    let answers = futures_util::future::join_all(ask.iter().map(|a| master_of(inner, a))).await;
    ask.into_iter().zip(answers).find_map(|(asked, master)| {
        master
            .filter(|m| m != old && *m != asked)
            .map(|m| (asked, m))
    })
}

/// The acknowledgement count after following a switch by `ROLE` from
/// `old` to `new`, by the Sentinels' own rule as far as this process can
/// apply it without them: the replicas counted before, less the one that
/// is now the master (it cannot acknowledge its own writes), and the
/// former master only once it replicates from the new one (`ROLE` of the
/// new master lists it). At least one, as always. Without this the count
/// would wait for the old master, which the Sentinels turn into a replica
/// only some 10 s after a switch, and every purchase of that time would
/// end in a shortfall.
async fn required_after_following(inner: &Inner, shard: &Shard, old: &Addr, new: &Addr) -> usize {
    let before = shard.required_acks();
    let old_attached = match role_of(inner, new).await {
        Some(role) => replicas_of_master(&role).is_some_and(|r| r.contains(old)),
        // Unknown: keep the count as it was.
        None => return before,
    };
    if old_attached {
        before
    } else {
        before.saturating_sub(1).max(1)
    }
}

/// One pass: resolve the master (verifying ROLE), swap the link if needed,
/// refresh replicas and the number of acknowledgements required.
///
/// When no Sentinel answers (and no announcement came), a stale link is
/// followed by `ROLE` instead ([`follow_roles`]): a switch made by hand, or
/// one the frozen Sentinels did not live to announce, is followed to a node
/// that says `master`. The acknowledgement count follows
/// [`required_after_following`]; the replica set is left as it is.
async fn refresh(
    inner: &Inner,
    shard: &Shard,
    sentinels: Option<&mut Sentinels>,
    memory: &mut Memory,
    hint: Option<Addr>,
) -> Result<(), DbError> {
    let current = shard.master.load_full();
    // (the stale master, the node whose ROLE named the candidate)
    let mut followed: Option<(Addr, Addr)> = None;
    let (mut candidates, view) = match (&inner.settings.target, sentinels) {
        (RedisTarget::Url(url), _) => {
            if current.as_ref().is_some_and(|l| !l.is_stale()) {
                return Ok(());
            }
            (vec![url_host_port(url)?], None)
        }
        (RedisTarget::Sentinels { master_name, .. }, Some(s)) => {
            let view = s.view(master_name).await;
            let mut c = Vec::with_capacity(2);
            if let Some(h) = hint {
                c.push(h);
            }
            match &view {
                Ok(v) if !c.contains(&v.master) => c.push(v.master.clone()),
                Ok(_) => {}
                Err(e) if c.is_empty() => {
                    let stale = current.as_ref().filter(|l| l.is_stale());
                    let Some(old) = stale.map(|l| l.addr.clone()) else {
                        return Err(DbError::Discovery(e.to_string()));
                    };
                    let Some((asked, new)) = follow_roles(inner, shard, &old).await else {
                        return Err(DbError::Discovery(e.to_string()));
                    };
                    c.push(new);
                    followed = Some((old, asked));
                }
                Err(_) => {}
            }
            (c, view.ok())
        }
        (RedisTarget::Sentinels { .. }, None) | (RedisTarget::Cluster { .. }, _) => return Ok(()),
    };

    if let Some(v) = view.as_ref().filter(|v| v.failover) {
        // The master is being replaced: whatever it accepts now is lost when
        // it is demoted. Stop using it and wait for the announced one.
        shard.retire_if(&v.master, "failover in progress", inner);
        candidates.retain(|c| *c != v.master);
    }
    if let Some(v) = &view {
        if memory.last_master.as_ref().is_some_and(|m| *m != v.master)
            && let Some(m) = memory.last_master.take()
        {
            memory.former_masters.insert(m);
        }
        memory.last_master = Some(v.master.clone());
    }
    let usable = current.as_ref().filter(|l| !l.is_stale());
    let mut keep = false;
    if let Some(l) = usable {
        match candidates.first() {
            Some(target) if *target == l.addr => keep = true,
            Some(target) => {
                // The Sentinels name another master: this link must not
                // acknowledge anything more, even before the new one is verified.
                tracing::warn!(old = %l.addr, new = %target, "master moved; retiring the old link");
                l.retire();
                inner.wake.notify_one();
            }
            None => {}
        }
    }
    // Acknowledgements and reads follow the master we (will) write to.
    let settle = |master: &Addr| {
        let Some(v) = &view else { return Vec::new() };
        if inner.settings.replica_acks == ReplicaAcks::All {
            shard.set_required(required_replicas(v, master, &memory.former_masters));
        }
        readable_replicas(v, master)
    };
    if keep {
        let readable = settle(&current.as_ref().expect("kept link").addr);
        if view.is_some() {
            shard.refresh_replicas(inner, &readable).await;
        }
        return Ok(());
    }

    let mut last_err = None;
    for addr in candidates {
        match inner.build_link(&addr, shard, None).await {
            Ok(link) => {
                let from = current
                    .as_ref()
                    .map(|l| l.addr.to_string())
                    .unwrap_or_else(|| "-".into());
                let changed = current.as_ref().is_some_and(|l| l.addr != link.addr);
                if let Some((old, asked)) = &followed {
                    tracing::info!(%old, new = %addr, "no Sentinel answers; following ROLE of {asked} to {addr}");
                    if inner.settings.replica_acks == ReplicaAcks::All {
                        shard
                            .set_required(required_after_following(inner, shard, old, &addr).await);
                    }
                }
                tracing::info!(%from, to = %addr, epoch = link.epoch, "master link installed");
                if changed {
                    inner.switches.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("flashsale_master_switches_total").increment(1);
                }
                let readable = settle(&addr);
                inner.install(shard, Some(link));
                if view.is_some() {
                    shard.refresh_replicas(inner, &readable).await;
                }
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(master = %addr, error = %e, "master candidate rejected");
                last_err = Some(e);
            }
        }
    }
    if let Some(v) = &view {
        let readable = settle(&v.master);
        shard.refresh_replicas(inner, &readable).await;
    }
    Err(last_err.unwrap_or(DbError::NoMaster))
}

/// Follows one Sentinel's events. A failover's start retires the link here
/// and now; everything else goes to the watcher.
async fn subscribe(
    addr: Addr,
    access: Access,
    master_name: String,
    tx: mpsc::Sender<Event>,
    weak: Weak<Inner>,
) {
    loop {
        let open = async {
            let mut ps = client(&addr.host, addr.port, 0, &access)?
                .get_async_pubsub()
                .await?;
            ps.subscribe(EVENTS).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        if let Ok(Ok(ps)) = tokio::time::timeout(Duration::from_secs(1), open).await {
            let mut stream = ps.into_on_message();
            loop {
                let msg = tokio::select! {
                    m = stream.next() => m,
                    _ = tx.closed() => return,
                };
                let Some(msg) = msg else { break };
                let payload: String = msg.get_payload().unwrap_or_default();
                let Some(event) = parse_event(msg.get_channel_name(), &payload, &master_name)
                else {
                    continue;
                };
                if let Event::FailoverOf(old) = &event {
                    let Some(inner) = weak.upgrade() else { return };
                    if let Some(shard) = inner.topology().shards.first() {
                        shard.retire_if(old, msg.get_channel_name(), &inner);
                    }
                }
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tx.closed() => return,
        }
    }
}

/// The watcher task. Holds only a weak reference between passes, so dropping
/// the last [`super::Redis`] stops it (and with it the subscriptions).
pub(super) async fn watch(weak: Weak<Inner>) {
    let Some(inner) = weak.upgrade() else { return };
    let settings = inner.settings.clone();
    drop(inner);
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    let mut sentinels = match &settings.target {
        RedisTarget::Sentinels {
            addrs,
            master_name,
            access,
        } => {
            let addrs: Vec<Addr> = addrs.iter().map(|(h, p)| Addr::new(h, *p)).collect();
            for a in &addrs {
                tokio::spawn(subscribe(
                    a.clone(),
                    access.clone(),
                    master_name.clone(),
                    tx.clone(),
                    weak.clone(),
                ));
            }
            Some(Sentinels {
                conns: vec![None; addrs.len()],
                addrs,
                access: access.clone(),
            })
        }
        RedisTarget::Url(_) | RedisTarget::Cluster { .. } => None,
    };
    let mut hint = None;
    let mut memory = Memory::default();
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let Some(shard) = inner.topology().shards.first().cloned() else {
            return;
        };
        // A new master announced while a pass is under way (say, stuck on a
        // frozen master) cancels it: the next pass starts from the announcement.
        let announced = async {
            loop {
                match rx.recv().await {
                    Some(Event::NewMaster(a)) => return Some(a),
                    Some(_) => continue,
                    None => return None,
                }
            }
        };
        let result = tokio::select! {
            r = refresh(&inner, &shard, sentinels.as_mut(), &mut memory, hint.take()) => r,
            a = announced => {
                if let Some(a) = a {
                    tracing::info!(to = %a, "new master announced");
                    hint = Some(a);
                }
                continue;
            }
        };
        let period = inner.after_pass(&result, shard.current().is_none());
        let wake = inner.wake.clone();
        drop(shard);
        drop(inner);
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            ev = rx.recv() => {
                if let Some(Event::NewMaster(a)) = ev {
                    tracing::info!(to = %a, "new master announced");
                    hint = Some(a);
                }
            }
            _ = wake.notified() => {}
        }
    }
}
