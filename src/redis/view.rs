//! What the Sentinels say, read as data: their events, their answers to
//! `SENTINEL MASTER`/`REPLICAS`, and what follows from them — which answer
//! to trust, which replicas must acknowledge a write, which may be read.
//! Pure functions, no I/O (the watcher in `sentinel.rs` does the asking).

use std::collections::{HashMap, HashSet};

use redis::Value;

use super::{Addr, text};

/// One Sentinel's answer: `SENTINEL MASTER` and `SENTINEL REPLICAS` as maps.
pub(super) type Answer = (HashMap<String, String>, Vec<HashMap<String, String>>);

/// What a Sentinel event means to this process.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event {
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
pub(super) fn parse_event(channel: &str, payload: &str, name: &str) -> Option<Event> {
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

/// One replica as a Sentinel reports it.
#[derive(Clone, Debug)]
pub(super) struct Replica {
    pub(super) addr: Addr,
    /// It still reports the master role (being promoted, or a former master
    /// not yet demoted).
    pub(super) claims_master: bool,
    /// Its last INFO says its link to a master is up (a node Sentinel has no
    /// INFO from yet reports `err`).
    pub(super) attached: bool,
}

/// What the Sentinels say about the master and its replicas.
pub(super) struct View {
    pub(super) master: Addr,
    pub(super) epoch: i64,
    /// Replicas without a down flag in the chosen answer.
    pub(super) up_replicas: Vec<Replica>,
    /// Every replica that any Sentinel of the newest epoch considers up: a
    /// leader of the next failover may promote any of them.
    pub(super) any_up: Vec<Replica>,
    /// A Sentinel is failing this master over: it must not take writes.
    pub(super) failover: bool,
}

/// A flat `[k, v, k, v, …]` (or RESP3 map) reply as a map.
pub(super) fn fields(v: &Value) -> HashMap<String, String> {
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

impl View {
    /// The answer to trust among the Sentinels': the newest configuration
    /// epoch wins; among equals, a Sentinel that is not in the middle of a
    /// failover (the leader keeps reporting the old master until its
    /// failover ends, with the same epoch as the others already report for
    /// the new one). `failover` is set when any Sentinel is failing the
    /// chosen master over; `any_up` gathers the up replicas of every
    /// answer of the newest epoch.
    pub(super) fn from_answers(answers: Vec<Answer>) -> Option<View> {
        // (view, this Sentinel is in the middle of a failover of that master)
        let mut seen: Vec<(View, bool)> = Vec::new();
        for (master, replicas) in answers {
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
        let max_epoch = seen.iter().map(|(v, _)| v.epoch).max();
        let chosen = seen
            .iter()
            .filter(|(v, _)| Some(v.epoch) == max_epoch)
            .min_by_key(|(_, in_failover)| *in_failover)
            .map(|(v, _)| v.master.clone());
        chosen.and_then(|master| {
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
        })
    }
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
pub(super) fn required_replicas(view: &View, master: &Addr, former: &HashSet<Addr>) -> usize {
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
pub(super) fn readable_replicas(view: &View, master: &Addr) -> Vec<Addr> {
    view.up_replicas
        .iter()
        .filter(|r| r.attached && !r.claims_master && r.addr != *master && r.addr != view.master)
        .map(|r| r.addr.clone())
        .collect()
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

    fn answer(master: u16, epoch: i64, flags: &str, replicas: &[(u16, &str)]) -> Answer {
        let m: HashMap<String, String> = [
            ("ip", "127.0.0.1".to_owned()),
            ("port", master.to_string()),
            ("config-epoch", epoch.to_string()),
            ("flags", flags.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let rs = replicas
            .iter()
            .map(|(port, flags)| {
                [
                    ("ip", "127.0.0.1".to_owned()),
                    ("port", port.to_string()),
                    ("flags", (*flags).to_owned()),
                    ("master-link-status", "ok".to_owned()),
                    ("role-reported", "slave".to_owned()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect()
            })
            .collect();
        (m, rs)
    }

    #[test]
    fn the_newest_epoch_wins_and_every_up_replica_of_it_is_gathered() {
        let v = View::from_answers(vec![
            // A Sentinel that has not heard of the failover yet.
            answer(1, 1, "master", &[(2, "slave"), (3, "slave")]),
            // The leader, still failing over from 1 to 2 (same epoch as the
            // Sentinel that already names 2).
            answer(
                1,
                2,
                "master,failover_in_progress",
                &[(2, "slave,promoted"), (3, "slave")],
            ),
            answer(2, 2, "master", &[(3, "slave,s_down"), (4, "slave")]),
        ])
        .expect("a view");
        assert_eq!(v.master, a(2));
        assert_eq!(v.epoch, 2);
        assert!(!v.failover, "nobody is failing 2 over");
        let up: Vec<Addr> = v.up_replicas.iter().map(|r| r.addr.clone()).collect();
        assert_eq!(up, vec![a(4)], "the chosen answer's own up replicas");
        let mut any: Vec<u16> = v.any_up.iter().map(|r| r.addr.port).collect();
        any.sort_unstable();
        assert_eq!(
            any,
            vec![2, 3, 4],
            "3 is up for the leader, 4 for the other"
        );
        assert!(View::from_answers(vec![]).is_none());
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
