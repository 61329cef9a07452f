//! How far the workers are behind on one sale's order stream, read from
//! Redis replies: the consumer group's state in an `XINFO GROUPS` reply
//! (entries read and not acknowledged, entries not read yet, the last id
//! delivered) and the time of the oldest entry still to be finished (the
//! oldest pending one, or the first unread one, whichever is older).
//!
//! One reading of these replies for everyone who needs it: the worker's
//! retirement of finished sales, its backlog gauges for alerts, and the
//! operators' live view. Owns the parsing and the two reads of the oldest
//! entry, nothing else: it sends nothing itself (each caller has its own
//! connection — a replica for the live view, the master link for the
//! worker) and writes nothing.

use std::collections::HashMap;

use redis::{Pipeline, Value};

use crate::redis::text;

/// The consumer group's state on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// Entries delivered to a consumer and not acknowledged yet.
    pub pending: i64,
    /// Entries not delivered yet; `None` when Redis cannot tell (entries
    /// deleted in the middle of the stream).
    pub lag: Option<i64>,
    /// The last id delivered to the group (`0-0` before the first).
    pub last_delivered: String,
}

impl GroupState {
    /// Nothing left for the group: no pending entry and nothing unread.
    pub fn idle(&self) -> bool {
        self.pending == 0 && self.lag == Some(0)
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => text(other).and_then(|t| t.parse().ok()),
    }
}

/// The group `group` in an `XINFO GROUPS` reply; `None` for an error reply
/// (no stream yet) or when the group does not exist.
pub fn group_state(reply: &Value, group: &str) -> Option<GroupState> {
    let groups: Vec<HashMap<String, Value>> = redis::from_redis_value_ref(reply).ok()?;
    let g = groups
        .iter()
        .find(|g| g.get("name").and_then(text).as_deref() == Some(group))?;
    Some(GroupState {
        pending: g.get("pending").and_then(int).unwrap_or(0),
        lag: g.get("lag").and_then(int),
        last_delivered: g
            .get("last-delivered-id")
            .and_then(text)
            .unwrap_or_else(|| "0-0".to_owned()),
    })
}

/// The milliseconds part of a stream entry id (`1700000000000-3`).
pub fn id_ms(id: &str) -> Option<i64> {
    id.split_once('-').map_or(id, |(ms, _)| ms).parse().ok()
}

/// Adds the two reads [`oldest_entry_ms`] judges to `pipe`: the `XPENDING`
/// summary of `group` and the first entry after `state.last_delivered`.
pub fn push_oldest_reads(pipe: &mut Pipeline, stream: &str, group: &str, state: &GroupState) {
    pipe.cmd("XPENDING").arg(stream).arg(group);
    pipe.cmd("XRANGE")
        .arg(stream)
        .arg(format!("({}", state.last_delivered))
        .arg("+")
        .arg("COUNT")
        .arg(1);
}

/// The time (ms) of the oldest entry the group still has to finish, from
/// the replies of [`push_oldest_reads`]: its oldest pending one or the
/// first it has not read, whichever is older. Error replies count as none.
pub fn oldest_entry_ms(pending: &Value, unread: &Value) -> Option<i64> {
    let oldest_pending = match pending {
        Value::Array(items) => items.get(1).and_then(text).and_then(|id| id_ms(&id)),
        _ => None,
    };
    let first_unread = first_unread_ms(unread);
    match (oldest_pending, first_unread) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The time (ms) of the first entry in an `XRANGE … COUNT 1` reply.
pub fn first_unread_ms(unread: &Value) -> Option<i64> {
    match unread {
        Value::Array(entries) => entries.first().and_then(|e| match e {
            Value::Array(parts) => parts.first().and_then(text).and_then(|id| id_ms(&id)),
            _ => None,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn group(name: &str, pending: i64, lag: Value) -> Value {
        Value::Array(vec![
            bulk("name"),
            bulk(name),
            bulk("consumers"),
            Value::Int(1),
            bulk("pending"),
            Value::Int(pending),
            bulk("last-delivered-id"),
            bulk("1700000000000-3"),
            bulk("entries-read"),
            Value::Int(4),
            bulk("lag"),
            lag,
        ])
    }

    #[test]
    fn the_group_is_found_among_others() {
        let reply = Value::Array(vec![
            group("other", 9, Value::Int(9)),
            group("workers", 2, Value::Nil),
        ]);
        let state = group_state(&reply, "workers").expect("group");
        assert_eq!(state.pending, 2);
        assert_eq!(state.lag, None);
        assert_eq!(state.last_delivered, "1700000000000-3");
        assert!(!state.idle());
        let idle = group_state(
            &Value::Array(vec![group("workers", 0, Value::Int(0))]),
            "workers",
        )
        .expect("group");
        assert!(idle.idle());
        assert!(group_state(&reply, "absent").is_none());
        assert!(group_state(&Value::Nil, "workers").is_none());
    }

    #[test]
    fn the_oldest_entry_is_the_older_of_pending_and_unread() {
        let summary = Value::Array(vec![
            Value::Int(2),
            bulk("1700000000500-0"),
            bulk("1700000000900-1"),
            Value::Nil,
        ]);
        let unread = Value::Array(vec![Value::Array(vec![
            bulk("1700000000100-0"),
            Value::Array(vec![]),
        ])]);
        assert_eq!(oldest_entry_ms(&summary, &unread), Some(1_700_000_000_100));
        assert_eq!(
            oldest_entry_ms(&summary, &Value::Array(vec![])),
            Some(1_700_000_000_500)
        );
        let none_pending = Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil]);
        assert_eq!(
            oldest_entry_ms(&none_pending, &unread),
            Some(1_700_000_000_100)
        );
        assert_eq!(oldest_entry_ms(&Value::Nil, &Value::Nil), None);
        assert_eq!(id_ms("12-0"), Some(12));
        assert_eq!(id_ms("x-0"), None);
    }
}
