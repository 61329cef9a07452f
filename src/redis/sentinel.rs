//! The watcher: follows the Sentinels and keeps the master link and the
//! replica set current.
//!
//! One task per process. It subscribes to `+switch-master` and to replica
//! up/down events on every Sentinel (each subscription reconnects on its own),
//! and polls all Sentinels as a backstop every `poll_interval` (≤ 1 s; every
//! 100 ms while there is no usable master). Each pass asks every Sentinel
//! `SENTINEL MASTER <name>` in parallel and trusts the answer with the highest
//! `config-epoch` (a Sentinel that has not yet heard of a failover reports an
//! older epoch), or the address a `+switch-master` just announced. The
//! address is only installed after `ROLE` there says `master`; until then the
//! old link stays (WAIT keeps its writes from being acknowledged when it has
//! lost its replicas), unless it is already stale.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{Client, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Value};
use tokio::sync::mpsc;

use super::{DbError, Inner, ReplicaLink, connect, text, url_host_port};
use crate::config::{RedisTarget, ReplicaAcks, Secret};

const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);
const EVENTS: &[&str] = &[
    "+switch-master",
    "+sdown",
    "-sdown",
    "+odown",
    "-odown",
    "+slave",
    "+convert-to-slave",
    "+failover-end",
];

/// What the watcher remembers between passes.
#[derive(Default)]
struct Memory {
    last_master: Option<(String, u16)>,
    former_masters: std::collections::HashSet<(String, u16)>,
}

enum Event {
    Switch(String, u16),
    Topology,
}

/// Persistent connections to the Sentinels, owned by the watcher task.
struct Sentinels {
    addrs: Vec<(String, u16)>,
    password: Option<Secret>,
    conns: Vec<Option<MultiplexedConnection>>,
}

/// One replica as a Sentinel reports it.
struct Replica {
    addr: (String, u16),
    /// It still reports the master role (being promoted, or a former master
    /// not yet demoted).
    claims_master: bool,
    /// Its last INFO says its link to a master is up (a node Sentinel has no
    /// INFO from yet reports `err`).
    attached: bool,
}

/// What the Sentinels say about the master and its replicas.
struct View {
    master: (String, u16),
    epoch: i64,
    /// Replicas without a down flag.
    up_replicas: Vec<Replica>,
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

fn addr_of(m: &HashMap<String, String>) -> Option<(String, u16)> {
    Some((m.get("ip")?.clone(), m.get("port")?.parse().ok()?))
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
        let (h, p) = &self.addrs[i];
        let c = connect(
            h,
            *p,
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
            let (mut v, _) = seen.swap_remove(idx);
            v.failover = failover;
            Some(v)
        });
        best.ok_or_else(|| {
            DbError::Discovery(format!(
                "no Sentinel of {} knows master `{name}`",
                self.addrs
                    .iter()
                    .map(|(h, p)| format!("{h}:{p}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ))
        })
    }
}

pub(super) async fn role(conn: &mut MultiplexedConnection) -> Result<String, redis::RedisError> {
    let v: Value = redis::cmd("ROLE").query_async(conn).await?;
    Ok(match &v {
        Value::Array(items) => items.first().and_then(text).unwrap_or_default(),
        _ => String::new(),
    })
}

/// Keeps replica links for exactly the replicas the Sentinels consider up
/// (new ones are ROLE-checked concurrently, each within a short timeout, so a
/// frozen node cannot hold up the watcher).
async fn refresh_replicas(inner: &Inner, up: &[(String, u16)]) {
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
                        &addr.0,
                        addr.1,
                        inner.password(),
                        s.timeout,
                        Some(s.timeout),
                    )
                    .await?;
                    let r = role(&mut c).await?;
                    Ok::<_, redis::RedisError>((c, r))
                };
                match tokio::time::timeout(s.timeout.min(super::ROLE_CHECK_TIMEOUT), check).await {
                    Ok(Ok((c, r))) if r == "slave" => Some(ReplicaLink {
                        addr: addr.clone(),
                        conn: c,
                    }),
                    Ok(Ok((_, r))) => {
                        tracing::debug!(replica = %format!("{}:{}", addr.0, addr.1), role = %r, "not a replica; skipped");
                        None
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "replica check failed");
                        None
                    }
                    Err(_) => {
                        tracing::debug!(replica = %format!("{}:{}", addr.0, addr.1), "replica check timed out");
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

/// One pass: resolve the master (verifying ROLE), swap the link if needed,
/// refresh replicas and the number of acknowledgements required.
async fn refresh(
    inner: &Inner,
    sentinels: Option<&mut Sentinels>,
    memory: &mut Memory,
    hint: Option<(String, u16)>,
) -> Result<(), DbError> {
    let current = inner.master.load_full();
    let usable = current.as_ref().filter(|l| !l.is_stale());
    let (candidates, view) = match (&inner.settings.target, sentinels) {
        (RedisTarget::Url(url), _) => {
            if usable.is_some() {
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

    let mut candidates = candidates;
    if let Some(v) = view.as_ref().filter(|v| v.failover) {
        // The master is being replaced: whatever it accepts now is lost when
        // it is demoted. Stop using it and wait for the announced one.
        if let Some(l) = usable.filter(|l| l.addr == v.master)
            && !l.is_stale()
        {
            tracing::warn!(master = %format!("{}:{}", l.addr.0, l.addr.1), "failover in progress; retiring the master link");
            l.retire();
        }
        candidates.retain(|c| *c != v.master);
    }
    let usable = usable.filter(|l| !l.is_stale());
    let mut keep = false;
    if let Some(l) = usable {
        match candidates.first() {
            Some(target) if *target == l.addr => keep = true,
            Some(target) => {
                // The Sentinels name another master: this link must not
                // acknowledge anything more, even before the new one is verified.
                tracing::warn!(
                    old = %format!("{}:{}", l.addr.0, l.addr.1),
                    new = %format!("{}:{}", target.0, target.1),
                    "master moved; retiring the old link"
                );
                l.retire();
                inner.wake.notify_one();
            }
            None => {}
        }
    }
    if let Some(v) = &view {
        if memory.last_master.as_ref().is_some_and(|m| *m != v.master)
            && let Some(m) = memory.last_master.take()
        {
            memory.former_masters.insert(m);
        }
        memory.last_master = Some(v.master.clone());
        // Every replica the Sentinels consider up must acknowledge, except a
        // former master that has not yet come back as our replica: Sentinel
        // lists it as one at once, but demotes it only seconds later (or, if
        // it is frozen or dead, marks it down after down-after-milliseconds),
        // and it then resyncs in full, so it can neither hold nor lose an
        // acknowledged write meanwhile. A replica that claims master and never
        // was one is being promoted: it still counts, so the old master's
        // WAIT falls short while the switch is under way.
        let counted: Vec<(String, u16)> = v
            .up_replicas
            .iter()
            .filter(|r| {
                !memory.former_masters.contains(&r.addr) || (r.attached && !r.claims_master)
            })
            .map(|r| r.addr.clone())
            .collect();
        if inner.settings.replica_acks == ReplicaAcks::All {
            let n = counted.len().max(1);
            if inner.required_acks.swap(n, Ordering::SeqCst) != n {
                tracing::info!(required = n, "replicas required per acknowledgement");
            }
        }
    }
    let readable: Vec<(String, u16)> = view
        .as_ref()
        .map(|v| {
            v.up_replicas
                .iter()
                .filter(|r| !r.claims_master)
                .map(|r| r.addr.clone())
                .collect()
        })
        .unwrap_or_default();
    if keep {
        if view.is_some() {
            refresh_replicas(inner, &readable).await;
        }
        return Ok(());
    }

    let mut last_err = None;
    for (host, port) in candidates {
        match inner.build_link(&host, port).await {
            Ok(link) => {
                let from = current
                    .as_ref()
                    .map(|l| format!("{}:{}", l.addr.0, l.addr.1))
                    .unwrap_or_else(|| "-".into());
                let changed = current.as_ref().is_some_and(|l| l.addr != link.addr);
                tracing::info!(%from, to = %format!("{host}:{port}"), epoch = link.epoch, "master link installed");
                if changed {
                    inner.switches.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("flashsale_master_switches_total").increment(1);
                }
                inner.install(Some(link));
                if view.is_some() {
                    refresh_replicas(inner, &readable).await;
                }
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(master = %format!("{host}:{port}"), error = %e, "master candidate rejected");
                last_err = Some(e);
            }
        }
    }
    if view.is_some() {
        refresh_replicas(inner, &readable).await;
    }
    Err(last_err.unwrap_or(DbError::NoMaster))
}

async fn subscribe(
    addr: (String, u16),
    password: Option<Secret>,
    master_name: String,
    tx: mpsc::Sender<Event>,
) {
    loop {
        let open = async {
            let mut rs = RedisConnectionInfo::default();
            if let Some(p) = &password {
                rs = rs.set_password(p.expose());
            }
            let info = ConnectionAddr::Tcp(addr.0.clone(), addr.1)
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
                let event = if msg.get_channel_name() == "+switch-master" {
                    let parts: Vec<&str> = payload.split(' ').collect();
                    match parts.as_slice() {
                        [name, _, _, ip, port] if *name == master_name => port
                            .parse()
                            .map(|p| Event::Switch((*ip).to_owned(), p))
                            .unwrap_or(Event::Topology),
                        _ => continue,
                    }
                } else {
                    if !payload.contains(master_name.as_str()) {
                        continue;
                    }
                    Event::Topology
                };
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
            for a in addrs {
                tokio::spawn(subscribe(
                    a.clone(),
                    sentinel_password.clone(),
                    master_name.clone(),
                    tx.clone(),
                ));
            }
            Some(Sentinels {
                addrs: addrs.clone(),
                password: sentinel_password.clone(),
                conns: vec![None; addrs.len()],
            })
        }
        RedisTarget::Url(_) => None,
    };
    let mut hint = None;
    let mut memory = Memory::default();
    loop {
        let Some(inner) = weak.upgrade() else { return };
        // A `+switch-master` heard while a pass is under way (say, stuck on a
        // frozen master) cancels it: the next pass starts from the announcement.
        let switch = async {
            loop {
                match rx.recv().await {
                    Some(Event::Switch(h, p)) => return Some((h, p)),
                    Some(Event::Topology) => continue,
                    None => return None,
                }
            }
        };
        let result = tokio::select! {
            r = refresh(&inner, sentinels.as_mut(), &mut memory, hint.take()) => r,
            announced = switch => {
                if let Some((h, p)) = announced {
                    tracing::info!(to = %format!("{h}:{p}"), "+switch-master announced");
                    hint = Some((h, p));
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
                if let Some(Event::Switch(h, p)) = ev {
                    tracing::info!(to = %format!("{h}:{p}"), "+switch-master announced");
                    hint = Some((h, p));
                }
            }
            _ = wake.notified() => {}
        }
    }
}
