//! Hash slots: which slot a key is in, which key of a command decides where
//! it runs, and a key of our own in any chosen slot. Pure functions, no I/O.
//!
//! Redis Cluster puts a key in slot `CRC16(tag) mod 16384`, where `tag` is
//! the part between the first `{` and the next `}` when that part is not
//! empty, or else the whole key. Every key of one sale carries the `{sku}`
//! tag, so all of them (and every Function call on them) are in one slot.
//! The checksum is the `crc16` crate's XMODEM variant, the one Redis uses.

use redis::{Arg, Cmd};

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// The part of `key` that is hashed.
fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// The hash slot of `key`.
pub fn slot(key: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(hash_tag(key)) % SLOTS
}

/// The key that decides which node runs `cmd` (its first key), or `None`
/// for a command without keys (`SCAN`, `TIME`, `PING`, `FCALL` with no
/// key, …). Covers the commands this program sends.
pub fn route_key(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().map(|a| match a {
        Arg::Simple(b) => b,
        _ => &[][..],
    });
    let name = args.next()?;
    let upper = |b: &[u8], s: &str| b.eq_ignore_ascii_case(s.as_bytes());
    if ["FCALL", "FCALL_RO", "EVALSHA", "EVAL"]
        .iter()
        .any(|n| upper(name, n))
    {
        let _function = args.next()?;
        let numkeys = std::str::from_utf8(args.next()?)
            .ok()?
            .parse::<u64>()
            .ok()?;
        return if numkeys > 0 { args.next() } else { None };
    }
    if ["XGROUP", "XINFO", "OBJECT", "MEMORY"]
        .iter()
        .any(|n| upper(name, n))
    {
        let _sub = args.next()?;
        return args.next();
    }
    if upper(name, "XREADGROUP") || upper(name, "XREAD") {
        return args.skip_while(|a| !upper(a, "STREAMS")).nth(1);
    }
    if [
        "SCAN", "TIME", "PING", "INFO", "ROLE", "FUNCTION", "CLUSTER", "WAIT", "MULTI", "EXEC",
        "READONLY", "DBSIZE", "SELECT",
    ]
    .iter()
    .any(|n| upper(name, n))
    {
        return None;
    }
    args.next()
}

/// A short tag whose slot is `target`: `{tag}` in a key puts the key there.
/// Found by trying `0`, `1`, `2`, …: about 16 384 checksums of a few bytes.
pub fn tag_for_slot(target: u16) -> String {
    let mut n: u64 = 0;
    loop {
        let t = n.to_string();
        if slot(t.as_bytes()) == target {
            return t;
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from CLUSTER KEYSLOT of Redis 7.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"fs:{tv-1}:sale"), slot(b"tv-1"));
        assert_eq!(slot(b"{}x"), slot(b"{}x"));
        assert_ne!(slot(b"{}x"), slot(b"x"));
        assert_eq!(slot(b"a{b}c{d}"), slot(b"b"));
    }

    #[test]
    fn the_first_key_routes() {
        let mut c = redis::cmd("FCALL");
        c.arg("fs_purchase")
            .arg(2)
            .arg("fs:{a}:sale")
            .arg("fs:{a}:units");
        assert_eq!(route_key(&c), Some(&b"fs:{a}:sale"[..]));
        let mut c = redis::cmd("FCALL");
        c.arg("fs_version").arg(0);
        assert_eq!(route_key(&c), None);
        let mut c = redis::cmd("XREADGROUP");
        c.arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("COUNT")
            .arg(5)
            .arg("STREAMS")
            .arg("s1")
            .arg(">");
        assert_eq!(route_key(&c), Some(&b"s1"[..]));
        let mut c = redis::cmd("XGROUP");
        c.arg("CREATE").arg("s2").arg("g").arg("$");
        assert_eq!(route_key(&c), Some(&b"s2"[..]));
        let mut c = redis::cmd("HGETALL");
        c.arg("k");
        assert_eq!(route_key(&c), Some(&b"k"[..]));
        let mut c = redis::cmd("SCAN");
        c.arg(0).arg("MATCH").arg("fs:{a}:*");
        assert_eq!(route_key(&c), None);
    }

    #[test]
    fn a_tag_for_every_slot_we_ask() {
        for s in [0, 1, 5061, 16_383] {
            assert_eq!(
                slot(format!("fs:ack:{{{}}}", tag_for_slot(s)).as_bytes()),
                s
            );
        }
    }
}
