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
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{Client, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Value};
use tokio::sync::mpsc;

use super::{Addr, DbError, Inner, ReplicaLink, connect, text, url_host_port};
use crate::config::{RedisTarget, ReplicaAcks, Secret};

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

/// What a Sentinel event means to this process.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// A failover of this master has started: stop writing to it.
    FailoverOf(Addr),
    /// This replica was promoted (or announced as the new master).
    NewMaster(Addr),
    /// Something about the group changed: check again.
    Topology,
}

/// Parses a Sentinel event of master `name` (None: another master's, or
/// not understood). Payloads: `+switch-master <name> <old ip> <old port>
/// <new ip> <new port>`; others `<type> <instance name> <ip> <port>` and,
/// for an instance that is not a master, `@ <master name> <ip> <port>`.
fn parse_event(channel: &str, payload: &str, name: &str) -> Option<Event> {
    let parts: Vec<&str> = payload.split(' ').collect();
    let addr = |ip: &str, port: &str| port.parse().ok().map(|p| Addr::new(ip, p));
    if channel == "+switch-master" {
        return match parts.as_slice() {
            [n, _, _, ip, port, ..] if *n == name => addr(ip, port).map(Event::NewMaster),
            _ => None,
        };
    }
    // (this instance, its master)
    let (instance, master) = match parts.as_slice() {
        ["master", n, ip, port, ..] if *n == name => {
            let a = addr(ip, port)?;
            (a.clone(), a)
        }
        [_, _, ip, port, "@", n, mip, mport, ..] if *n == name => {
            (addr(ip, port)?, addr(mip, mport)?)
        }
        _ => return None,
    };
    Some(match channel {
        "+try-failover"
        | "+elected-leader"
        | "+failover-state-select-slave"
        | "+selected-slave"
        | "+failover-state-send-slaveof-noone"
        | "+failover-state-wait-promotion" => Event::FailoverOf(master),
        "+promoted-slave" => Event::NewMaster(instance),
        _ => Event::Topology,
    })
}

/// Persistent connections to the Sentinels, owned by the watcher task.
struct Sentinels {
    addrs: Vec<Addr>,
    password: Option<Secret>,
    conns: Vec<Option<MultiplexedConnection>>,
}

/// One replica as a Sentinel reports it.
#[derive(Clone, Debug)]
struct Replica {
    addr: Addr,
    /// It still reports the master role (being promoted, or a former master
    /// not yet demoted).
    claims_master: bool,
    /// Its last INFO says its link to a master is up (a node Sentinel has no
    /// INFO from yet reports `err`).
    attached: bool,
}

/// What the Sentinels say about the master and its replicas.
struct View {
    master: Addr,
    epoch: i64,
    /// Replicas without a down flag in the chosen answer.
    up_replicas: Vec<Replica>,
    /// Every replica that any Sentinel of the newest epoch considers up: a
    /// leader of the next failover may promote any of them.
    any_up: Vec<Replica>,
    /// A Sentinel is failing this master over: it must not take writes.
    failover: bool,
}

/// A flat `[k, v, k, v, …]` (or RESP3 map) reply as a map.
fn fields(v: &Value) -> HashMap<String, String> {
    let mut m = HashMap::new();
    match v {
        Value::Array(items) => {
            for pair in items.chunks(2) {
                if let [k, v] = pair
                    && let (Some(k), Some(v)) = (text(k), text(v))
                {
                    m.insert(k, v);
                }
            }
        }
        Value::Map(pairs) => {
            for (k, v) in pairs {
                if let (Some(k), Some(v)) = (text(k), text(v)) {
                    m.insert(k, v);
                }
            }
        }
        _ => {}
    }
    m
}

fn addr_of(m: &HashMap<String, String>) -> Option<Addr> {
    Some(Addr::new(
        m.get("ip")?.clone(),
        m.get("port")?.parse().ok()?,
    ))
}

fn is_down(flags: &str) -> bool {
    flags
        .split(',')
        .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"))
}

/// A replica the Sentinels consider up: no down flag.
fn is_up_replica(r: &HashMap<String, String>) -> bool {
    !r.get("flags").is_some_and(|f| is_down(f))
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
            self.password.as_ref(),
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
        // (view, this Sentinel is in the middle of a failover of that master)
        let mut seen: Vec<(View, bool)> = Vec::new();
        for (i, answer) in answers.into_iter().enumerate() {
            let (master, replicas) = match answer {
                Some(Ok(a)) => a,
                Some(Err(e)) => {
                    if e.code().is_none() {
                        self.conns[i] = None;
                    }
                    continue;
                }
                None => {
                    self.conns[i] = None;
                    continue;
                }
            };
            let Some(addr) = addr_of(&master) else {
                continue;
            };
            let epoch: i64 = master
                .get("config-epoch")
                .and_then(|e| e.parse().ok())
                .unwrap_or(0);
            let in_failover = master
                .get("flags")
                .is_some_and(|f| f.split(',').any(|x| x == "failover_in_progress"))
                || replicas.iter().any(|r| {
                    r.get("flags")
                        .is_some_and(|f| f.split(',').any(|x| x == "promoted"))
                });
            let up_replicas = replicas
                .iter()
                .filter(|r| is_up_replica(r))
                .filter_map(|r| {
                    let attached = r.get("master-link-status").is_some_and(|x| x == "ok");
                    addr_of(r).map(|a| Replica {
                        addr: a,
                        claims_master: r.get("role-reported").is_some_and(|x| x == "master"),
                        attached,
                    })
                })
                .filter(|r| r.addr != addr)
                .collect();
            seen.push((
                View {
                    master: addr,
                    epoch,
                    any_up: Vec::new(),
                    up_replicas,
                    failover: false,
                },
                in_failover,
            ));
        }
        // The newest configuration wins; among equals, a Sentinel that is not
        // in the middle of a failover (the leader keeps reporting the old
        // master until its failover ends, with the same epoch as the others
        // already report for the new one).
        let max_epoch = seen.iter().map(|(v, _)| v.epoch).max();
        let chosen = seen
            .iter()
            .filter(|(v, _)| Some(v.epoch) == max_epoch)
            .min_by_key(|(_, in_failover)| *in_failover)
            .map(|(v, _)| v.master.clone());
        let best = chosen.and_then(|master| {
            let failover = seen
                .iter()
                .any(|(v, in_failover)| *in_failover && v.master == master);
            let idx = seen
                .iter()
                .position(|(v, f)| v.master == master && Some(v.epoch) == max_epoch && !*f)
                .or_else(|| seen.iter().position(|(v, _)| v.master == master))?;
            let mut any_up: Vec<Replica> = Vec::new();
            for (other, _) in seen.iter().filter(|(o, _)| Some(o.epoch) == max_epoch) {
                for r in &other.up_replicas {
                    if !any_up.iter().any(|x| x.addr == r.addr) {
                        any_up.push(r.clone());
                    }
                }
            }
            let (mut v, _) = seen.swap_remove(idx);
            v.failover = failover;
            v.any_up = any_up;
            Some(v)
        });
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

pub(super) async fn role(conn: &mut MultiplexedConnection) -> Result<String, redis::RedisError> {
    Ok(role_reply(conn).await?.0)
}

/// ROLE's first element, and for a replica the state of its link
/// (`connected`, `sync`, `connecting`, …).
async fn role_reply(
    conn: &mut MultiplexedConnection,
) -> Result<(String, String), redis::RedisError> {
    let v: Value = redis::cmd("ROLE").query_async(conn).await?;
    Ok(match &v {
        Value::Array(items) => (
            items.first().and_then(text).unwrap_or_default(),
            items.get(3).and_then(text).unwrap_or_default(),
        ),
        _ => Default::default(),
    })
}

/// Replicas a write on `master` must reach under `FLASHSALE_REPLICA_ACKS=all`:
/// every replica that any Sentinel of the newest epoch considers up (a
/// leader of the next failover may promote any of them), except `master`
/// itself, the master the Sentinels still name when it is not `master` (a
/// promoted replica's old master: it resyncs before it holds anything), and
/// a former master that has not yet come back as an attached replica:
/// Sentinel lists it as one at once but demotes it only seconds later (or,
/// frozen or dead, marks it down after down-after), and it then resyncs, so
/// it can neither hold nor lose an acknowledged write meanwhile. A replica
/// that claims master and never was one is being promoted: it still counts,
/// so the old master's WAIT falls short while the switch is under way. At
/// least one.
fn required_replicas(view: &View, master: &Addr, former: &HashSet<Addr>) -> usize {
    view.any_up
        .iter()
        .filter(|r| r.addr != *master && r.addr != view.master)
        .filter(|r| !former.contains(&r.addr) || (r.attached && !r.claims_master))
        .count()
        .max(1)
}

/// Replicas catalog reads may use: up, attached to a master and not
/// claiming the role themselves, so a demoted master still resyncing (its
/// data may have diverged) is never read.
fn readable_replicas(view: &View, master: &Addr) -> Vec<Addr> {
    view.up_replicas
        .iter()
        .filter(|r| r.attached && !r.claims_master && r.addr != *master && r.addr != view.master)
        .map(|r| r.addr.clone())
        .collect()
}

/// Keeps replica links for exactly the replicas that may be read (new ones
/// are ROLE-checked concurrently, each within a short timeout, so a frozen
/// node cannot hold up the watcher, and must report a connected link).
async fn refresh_replicas(inner: &Inner, up: &[Addr]) {
    let current = inner.replicas.load();
    let same = current.len() == up.len() && current.iter().all(|r| up.contains(&r.addr));
    if same {
        return;
    }
    let s = &inner.settings;
    let fresh = futures_util::future::join_all(
        up.iter()
            .filter(|a| !current.iter().any(|r| &r.addr == *a))
            .map(|addr| async move {
                let check = async {
                    let mut c = connect(
                        &addr.host,
                        addr.port,
                        inner.password(),
                        s.timeout,
                        Some(s.timeout),
                    )
                    .await?;
                    let r = role_reply(&mut c).await?;
                    Ok::<_, redis::RedisError>((c, r))
                };
                match tokio::time::timeout(s.timeout.min(super::ROLE_CHECK_TIMEOUT), check).await {
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
    tracing::info!(replicas = next.len(), "replica set changed");
    inner.replicas.store(Arc::new(next));
}

/// Retires the current link when it points at `old` (a failover of it has
/// started): nothing more is written or acknowledged there.
fn retire_if(inner: &Inner, old: &Addr, why: &str) {
    if let Some(l) = inner.master.load_full()
        && l.addr == *old
        && !l.is_stale()
    {
        tracing::warn!(master = %l.addr, why, "retiring the master link");
        l.retire();
        inner.wake.notify_one();
    }
}

/// One pass: resolve the master (verifying ROLE), swap the link if needed,
/// refresh replicas and the number of acknowledgements required.
async fn refresh(
    inner: &Inner,
    sentinels: Option<&mut Sentinels>,
    memory: &mut Memory,
    hint: Option<Addr>,
) -> Result<(), DbError> {
    let current = inner.master.load_full();
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
                Err(e) if c.is_empty() => return Err(DbError::Discovery(e.to_string())),
                Err(_) => {}
            }
            (c, view.ok())
        }
        (RedisTarget::Sentinels { .. }, None) => return Ok(()),
    };

    if let Some(v) = view.as_ref().filter(|v| v.failover) {
        // The master is being replaced: whatever it accepts now is lost when
        // it is demoted. Stop using it and wait for the announced one.
        retire_if(inner, &v.master, "failover in progress");
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
            let n = required_replicas(v, master, &memory.former_masters);
            if inner.required_acks.swap(n, Ordering::SeqCst) != n {
                tracing::info!(required = n, "replicas required per acknowledgement");
            }
        }
        readable_replicas(v, master)
    };
    if keep {
        let readable = settle(&current.as_ref().expect("kept link").addr);
        if view.is_some() {
            refresh_replicas(inner, &readable).await;
        }
        return Ok(());
    }

    let mut last_err = None;
    for addr in candidates {
        match inner.build_link(&addr).await {
            Ok(link) => {
                let from = current
                    .as_ref()
                    .map(|l| l.addr.to_string())
                    .unwrap_or_else(|| "-".into());
                let changed = current.as_ref().is_some_and(|l| l.addr != link.addr);
                tracing::info!(%from, to = %addr, epoch = link.epoch, "master link installed");
                if changed {
                    inner.switches.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("flashsale_master_switches_total").increment(1);
                }
                let readable = settle(&addr);
                inner.install(Some(link));
                if view.is_some() {
                    refresh_replicas(inner, &readable).await;
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
        refresh_replicas(inner, &readable).await;
    }
    Err(last_err.unwrap_or(DbError::NoMaster))
}

/// Follows one Sentinel's events. A failover's start retires the link here
/// and now; everything else goes to the watcher.
async fn subscribe(
    addr: Addr,
    password: Option<Secret>,
    master_name: String,
    tx: mpsc::Sender<Event>,
    weak: Weak<Inner>,
) {
    loop {
        let open = async {
            let mut rs = RedisConnectionInfo::default();
            if let Some(p) = &password {
                rs = rs.set_password(p.expose());
            }
            let info = ConnectionAddr::Tcp(addr.host.clone(), addr.port)
                .into_connection_info()?
                .set_redis_settings(rs);
            let mut ps = Client::open(info)?.get_async_pubsub().await?;
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
                    retire_if(&inner, old, msg.get_channel_name());
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
            sentinel_password,
        } => {
            let addrs: Vec<Addr> = addrs.iter().map(|(h, p)| Addr::new(h, *p)).collect();
            for a in &addrs {
                tokio::spawn(subscribe(
                    a.clone(),
                    sentinel_password.clone(),
                    master_name.clone(),
                    tx.clone(),
                    weak.clone(),
                ));
            }
            Some(Sentinels {
                conns: vec![None; addrs.len()],
                addrs,
                password: sentinel_password.clone(),
            })
        }
        RedisTarget::Url(_) => None,
    };
    let mut hint = None;
    let mut memory = Memory::default();
    loop {
        let Some(inner) = weak.upgrade() else { return };
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
            r = refresh(&inner, sentinels.as_mut(), &mut memory, hint.take()) => r,
            a = announced => {
                if let Some(a) = a {
                    tracing::info!(to = %a, "new master announced");
                    hint = Some(a);
                }
                continue;
            }
        };
        if let Err(e) = &result {
            tracing::debug!(error = %e, "refresh failed");
        }
        *inner.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            result.as_ref().err().map(ToString::to_string);
        let missing = inner.master.load().as_ref().is_none_or(|l| l.is_stale());
        let wake = inner.wake.clone();
        drop(inner);
        let period = if missing || result.is_err() {
            Duration::from_millis(100)
        } else {
            settings.poll_interval
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> Addr {
        Addr::new("127.0.0.1", port)
    }

    fn replica(port: u16, claims_master: bool, attached: bool) -> Replica {
        Replica {
            addr: a(port),
            claims_master,
            attached,
        }
    }

    fn view(master: u16, up: Vec<Replica>, any_up: Vec<Replica>) -> View {
        View {
            master: a(master),
            epoch: 1,
            up_replicas: up,
            any_up,
            failover: false,
        }
    }

    #[test]
    fn events_of_a_failover_name_the_old_master() {
        let e = |c, p| parse_event(c, p, "mymaster");
        assert_eq!(
            e("+try-failover", "master mymaster 127.0.0.1 6379"),
            Some(Event::FailoverOf(a(6379)))
        );
        assert_eq!(
            e(
                "+selected-slave",
                "slave 127.0.0.1:6380 127.0.0.1 6380 @ mymaster 127.0.0.1 6379"
            ),
            Some(Event::FailoverOf(a(6379)))
        );
        assert_eq!(
            e(
                "+promoted-slave",
                "slave 127.0.0.1:6380 127.0.0.1 6380 @ mymaster 127.0.0.1 6379"
            ),
            Some(Event::NewMaster(a(6380)))
        );
        assert_eq!(
            e("+switch-master", "mymaster 127.0.0.1 6379 127.0.0.1 6380"),
            Some(Event::NewMaster(a(6380)))
        );
        assert_eq!(
            e("+odown", "master mymaster 127.0.0.1 6379 #quorum 2/2"),
            Some(Event::Topology)
        );
        // Another master's events, and garbage, are ignored.
        assert_eq!(e("+try-failover", "master other 127.0.0.1 6379"), None);
        assert_eq!(e("+switch-master", "other 1 2 3 4"), None);
        assert_eq!(
            e(
                "+selected-slave",
                "slave x 127.0.0.1 notaport @ mymaster 127.0.0.1 6379"
            ),
            None
        );
        assert_eq!(e("+sdown", ""), None);
    }

    #[test]
    fn every_replica_any_sentinel_sees_up_must_acknowledge() {
        let none = HashSet::new();
        // Steady state: both replicas, whichever Sentinel saw them.
        let v = view(
            1,
            vec![replica(2, false, true)],
            vec![replica(2, false, true), replica(3, false, true)],
        );
        assert_eq!(required_replicas(&v, &a(1), &none), 2);
        // A replica being promoted still counts for the old master.
        let v = view(
            1,
            vec![],
            vec![replica(2, true, false), replica(3, false, true)],
        );
        assert_eq!(required_replicas(&v, &a(1), &none), 2);
        // Writing to the promoted node while the view still names the old
        // master: neither itself nor the old master count.
        assert_eq!(required_replicas(&v, &a(2), &none), 1);
        // A former master not yet back as an attached replica does not count;
        // once attached it does.
        let former: HashSet<Addr> = [a(1)].into_iter().collect();
        let v = view(
            2,
            vec![],
            vec![replica(1, true, false), replica(3, false, true)],
        );
        assert_eq!(required_replicas(&v, &a(2), &former), 1);
        let v = view(
            2,
            vec![],
            vec![replica(1, false, true), replica(3, false, true)],
        );
        assert_eq!(required_replicas(&v, &a(2), &former), 2);
        // Never zero.
        let v = view(1, vec![], vec![]);
        assert_eq!(required_replicas(&v, &a(1), &none), 1);
    }

    #[test]
    fn only_attached_replicas_are_read() {
        let v = view(
            1,
            vec![
                replica(2, false, true),
                replica(3, false, false),
                replica(4, true, true),
            ],
            vec![],
        );
        assert_eq!(readable_replicas(&v, &a(1)), vec![a(2)]);
    }
}
