//! Which peers are proxies, and who the client behind them is.
//!
//! `FLASHSALE_TRUSTED_PROXIES` lists the address ranges of the proxies in
//! front of the service (nginx, a load balancer); the default is loopback, a
//! proxy on this host. A peer in those ranges is believed about the client
//! it forwards for ([`TrustedProxies::client`]) and is exempt from the
//! per-address connection cap (it carries many shoppers' connections). A
//! peer outside them is the client, whatever headers it sends.
//!
//! The client behind a trusted peer comes from `X-Forwarded-For`, read from
//! the right: each proxy appends the address it received the request from,
//! so the entries written by trusted proxies are on the right and anything a
//! client wrote itself is further left. The first entry that is not a
//! trusted proxy is the client; entries left of it are never read, so a
//! spoofed or malformed prefix changes nothing. Without `X-Forwarded-For`,
//! `X-Real-IP` (one address, set by nginx) is the client. A malformed value
//! where an address is needed falls back to the peer.
//!
//! Addresses are compared in canonical form: an IPv4-mapped IPv6 address
//! (`::ffff:10.0.0.1`, what a dual-stack listener reports for an IPv4 peer)
//! is the IPv4 address.
//!
//! CIDR parsing and matching are the `ipnet` crate's: maintained, already in
//! the dependency tree (hyper-util and reqwest use it), and it parses both
//! families and checks prefix lengths, which leaves only the list syntax and
//! the forwarding rules to this module.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::{HeaderMap, HeaderValue};
use ipnet::{IpNet, Ipv4Net};

/// The default of `FLASHSALE_TRUSTED_PROXIES`: loopback, a proxy on this host.
pub const DEFAULT: &str = "127.0.0.0/8,::1/128";

/// The address ranges whose peers are proxies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl Default for TrustedProxies {
    /// Loopback ([`DEFAULT`]).
    fn default() -> Self {
        Self::parse(DEFAULT).expect("the default list parses")
    }
}

impl fmt::Display for TrustedProxies {
    /// The ranges as they are matched (`10.0.0.0/8,::1/128`), or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

impl TrustedProxies {
    /// No peer is a proxy: every peer is its own client.
    pub fn none() -> Self {
        Self(Vec::new())
    }

    /// A comma-separated list of CIDRs (`10.0.0.0/8`, `fd00::/8`); a bare
    /// address is one host (`/32`, `/128`); host bits are dropped
    /// (`10.1.2.3/8` is `10.0.0.0/8`); `none` trusts no peer. Empty items
    /// are skipped; an empty list is an error. The error names the entry.
    pub fn parse(list: &str) -> Result<Self, String> {
        if list.trim().eq_ignore_ascii_case("none") {
            return Ok(Self::none());
        }
        let nets = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                range(s).ok_or_else(|| {
                    format!(
                        "`{s}` is not an address or CIDR like 10.0.0.0/8, 192.0.2.7 or fd00::/8"
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if nets.is_empty() {
            return Err(format!(
                "`{list}` lists no address (CIDRs, comma-separated; `none` trusts no peer)"
            ));
        }
        Ok(Self(nets))
    }

    /// Whether `ip` is in one of the ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// Whether every address is trusted (a `/0` range): then any client can
    /// choose the address it is limited and logged as.
    pub fn trusts_everyone(&self) -> bool {
        self.0.iter().any(|net| net.prefix_len() == 0)
    }

    /// The client of a request that came from `peer` with `headers`: the
    /// peer itself unless it is trusted; behind a trusted peer the first
    /// untrusted entry of `X-Forwarded-For` from the right (the leftmost
    /// when every entry is trusted), else `X-Real-IP`. A malformed entry
    /// reached before the client, or a malformed `X-Real-IP`, gives the peer.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let mut forwarded = headers.get_all("x-forwarded-for").iter().rev().peekable();
        if forwarded.peek().is_some() {
            return self.walk(forwarded).unwrap_or(peer);
        }
        headers
            .get("x-real-ip")
            .and_then(|v| address(v.as_bytes()))
            .unwrap_or(peer)
    }

    /// `X-Forwarded-For` values, last first: the first untrusted entry from
    /// the right, or the leftmost; `None` when a malformed entry comes
    /// first, or there is no entry at all. Empty list items are skipped (as
    /// HTTP lists allow them). Bytes, not text: a value a client made
    /// non-ASCII still has a readable right end.
    fn walk<'a>(&self, values: impl Iterator<Item = &'a HeaderValue>) -> Option<IpAddr> {
        let mut leftmost = None;
        for value in values {
            for item in value.as_bytes().rsplit(|b| *b == b',') {
                let item = item.trim_ascii();
                if item.is_empty() {
                    continue;
                }
                let ip = address(item)?;
                if !self.contains(ip) {
                    return Some(ip);
                }
                leftmost = Some(ip);
            }
        }
        leftmost
    }
}

/// One range of the list: a CIDR or a bare address, host bits dropped, an
/// IPv4-mapped IPv6 range as the IPv4 range (addresses are compared in
/// canonical form).
fn range(s: &str) -> Option<IpNet> {
    let net = if s.contains('/') {
        s.parse::<IpNet>().ok()?
    } else {
        IpNet::from(s.parse::<IpAddr>().ok()?)
    };
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
    {
        return Ipv4Net::new(v4, v6.prefix_len() - 96)
            .ok()
            .map(|n| IpNet::V4(n.trunc()));
    }
    Some(net.trunc())
}

/// One forwarded address: `192.0.2.1`, `2001:db8::1`, or with a port as
/// some proxies write it (`192.0.2.1:5678`, `[2001:db8::1]:443`,
/// `[2001:db8::1]`); anything else (`unknown`, obfuscated names) is `None`.
fn address(bytes: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(bytes.trim_ascii()).ok()?;
    let ip = s
        .parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            s.strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<Ipv6Addr>()
                .ok()
                .map(IpAddr::V6)
        })?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy as _;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn trusted(list: &str) -> TrustedProxies {
        TrustedProxies::parse(list).expect("parses")
    }

    /// Headers from (name, raw value) pairs; repeated names are kept in order.
    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_bytes(value).expect("value"),
            );
        }
        h
    }

    fn xff(value: &str) -> HeaderMap {
        headers(&[("x-forwarded-for", value.as_bytes())])
    }

    #[test]
    fn lists_parse_to_ranges() {
        let d = TrustedProxies::default();
        assert_eq!(d.to_string(), "127.0.0.0/8,::1/128");
        assert!(d.contains(ip("127.0.0.1")) && d.contains(ip("127.200.0.9")));
        assert!(d.contains(ip("::1")));
        assert!(d.contains(ip("::ffff:127.0.0.1")), "mapped loopback");
        assert!(!d.contains(ip("10.0.0.1")) && !d.contains(ip("::2")));

        // Bare addresses are one host; host bits are dropped; spaces and
        // empty items are tolerated; IPv6 and mapped ranges.
        let t = trusted(" 192.0.2.7 , 10.1.2.3/8,,2001:db8::/32, fd00::1 ,::ffff:172.16.0.0/108");
        assert_eq!(
            t.to_string(),
            "192.0.2.7/32,10.0.0.0/8,2001:db8::/32,fd00::1/128,172.16.0.0/12"
        );
        assert!(t.contains(ip("192.0.2.7")) && !t.contains(ip("192.0.2.8")));
        assert!(t.contains(ip("10.255.0.1")));
        assert!(t.contains(ip("2001:db8:ffff::1")) && !t.contains(ip("2001:db9::1")));
        assert!(t.contains(ip("fd00::1")) && !t.contains(ip("fd00::2")));
        assert!(t.contains(ip("172.31.0.1")) && t.contains(ip("::ffff:172.16.0.1")));
        assert!(!t.trusts_everyone());
        assert!(trusted("0.0.0.0/0").trusts_everyone());

        let none = trusted(" None ");
        assert_eq!(none, TrustedProxies::none());
        assert_eq!(none.to_string(), "none");
        assert!(!none.contains(ip("127.0.0.1")));
    }

    #[test]
    fn bad_entries_are_named() {
        for (list, bad) in [
            ("10.0.0.0/33", "10.0.0.0/33"),
            ("::1/129", "::1/129"),
            ("127.0.0.1, localhost", "localhost"),
            ("10.0.0.0/8/1", "10.0.0.0/8/1"),
            ("10.0.0.*", "10.0.0.*"),
            ("192.0.2.1:80", "192.0.2.1:80"),
            ("10.0.0.0/", "10.0.0.0/"),
            ("/8", "/8"),
            ("10.0.0.0/-1", "10.0.0.0/-1"),
            ("fe80::1%eth0", "fe80::1%eth0"),
        ] {
            let e = TrustedProxies::parse(list).unwrap_err();
            assert!(e.contains(&format!("`{bad}`")), "{list}: {e}");
        }
        for empty in ["", " ", ",", " , ,"] {
            assert!(TrustedProxies::parse(empty).is_err(), "{empty:?}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let t = TrustedProxies::default();
        let peer = ip("203.0.113.9");
        for h in [
            xff("198.51.100.1"),
            xff("127.0.0.1"),
            headers(&[("x-real-ip", b"198.51.100.1")]),
            headers(&[
                ("x-forwarded-for", b"198.51.100.1, 127.0.0.1"),
                ("x-real-ip", b"198.51.100.2"),
            ]),
            HeaderMap::new(),
        ] {
            assert_eq!(t.client(peer, &h), peer, "{h:?}");
        }
        // A mapped IPv4 peer is reported as IPv4.
        assert_eq!(
            t.client(ip("::ffff:203.0.113.9"), &xff("198.51.100.1")),
            peer
        );
    }

    #[test]
    fn forwarded_for_is_read_from_the_right() {
        let t = trusted("127.0.0.0/8,::1,10.0.0.0/8,fd00::/8");
        let proxy = ip("127.0.0.1");
        let client = |h: &HeaderMap| t.client(proxy, h).to_string();
        // No header: the trusted peer is the client.
        assert_eq!(client(&HeaderMap::new()), "127.0.0.1");
        // One hop: nginx appended the shopper.
        assert_eq!(client(&xff("203.0.113.7")), "203.0.113.7");
        // A chain of trusted proxies (a load balancer, then nginx).
        assert_eq!(client(&xff("203.0.113.7, 10.0.0.5")), "203.0.113.7");
        assert_eq!(
            client(&xff("203.0.113.7,10.0.0.5,  10.9.9.9")),
            "203.0.113.7"
        );
        // Spoofed leftmost entries (the shopper's own header, which nginx
        // extends) are never believed, trusted-looking or not.
        assert_eq!(client(&xff("198.51.100.1, 203.0.113.7")), "203.0.113.7");
        assert_eq!(client(&xff("10.0.0.1, 203.0.113.7")), "203.0.113.7");
        assert_eq!(
            client(&xff("127.0.0.1, 10.0.0.2, 203.0.113.7, 10.0.0.5")),
            "203.0.113.7"
        );
        // Every hop trusted: the leftmost.
        assert_eq!(client(&xff("10.0.0.1, 10.0.0.2")), "10.0.0.1");
        // Several header lines are one list, in order.
        let h = headers(&[
            ("x-forwarded-for", b"198.51.100.1, 203.0.113.7"),
            ("x-forwarded-for", b"10.0.0.5"),
        ]);
        assert_eq!(client(&h), "203.0.113.7");
        let h = headers(&[
            ("x-forwarded-for", b"203.0.113.7"),
            ("x-forwarded-for", b"10.0.0.5, 10.0.0.6"),
        ]);
        assert_eq!(client(&h), "203.0.113.7");
        // Empty items are skipped.
        assert_eq!(client(&xff(" , 203.0.113.7,, 10.0.0.5 ,")), "203.0.113.7");
    }

    #[test]
    fn forwarded_ipv6_and_ports() {
        let t = trusted("::1,fd00::/8,10.0.0.0/8");
        let proxy = ip("fd00::2");
        let client = |h: &HeaderMap| t.client(proxy, h).to_string();
        assert_eq!(client(&xff("2001:db8::7")), "2001:db8::7");
        assert_eq!(client(&xff("2001:db8::7, fd00::3")), "2001:db8::7");
        assert_eq!(client(&xff("[2001:db8::7]:443, fd00::3")), "2001:db8::7");
        assert_eq!(client(&xff("[2001:db8::7]")), "2001:db8::7");
        assert_eq!(client(&xff("203.0.113.7:5678, 10.0.0.5")), "203.0.113.7");
        assert_eq!(client(&xff("::ffff:203.0.113.7")), "203.0.113.7");
        // A mapped trusted hop is skipped like its IPv4 form.
        assert_eq!(client(&xff("203.0.113.7, ::ffff:10.0.0.5")), "203.0.113.7");
        // Mixed families in one chain.
        assert_eq!(client(&xff("203.0.113.7, fd00::9")), "203.0.113.7");
    }

    #[test]
    fn malformed_values_fall_back_to_the_peer() {
        let t = trusted("127.0.0.0/8,10.0.0.0/8");
        let proxy = ip("127.0.0.1");
        let client = |h: &HeaderMap| t.client(proxy, h).to_string();
        // Where an address is needed: the peer.
        for bad in [
            "unknown",
            "203.0.113.7, garbage",
            "203.0.113.7, 10.0.0.5, _hidden",
            "203.0.113.300",
            "fe80::1%eth0",
            "2001:db8::7]:1",
            "",
            " , ",
        ] {
            assert_eq!(client(&xff(bad)), "127.0.0.1", "{bad:?}");
        }
        let h = headers(&[("x-forwarded-for", b"203.0.113.7, \xff\xfe")]);
        assert_eq!(client(&h), "127.0.0.1");
        // Left of the client they are never read.
        assert_eq!(client(&xff("garbage, 203.0.113.7")), "203.0.113.7");
        let h = headers(&[("x-forwarded-for", b"\xff\xfe junk;, 203.0.113.7")]);
        assert_eq!(client(&h), "203.0.113.7");
        // A present X-Forwarded-For decides, even when it is malformed.
        let h = headers(&[
            ("x-forwarded-for", b"garbage"),
            ("x-real-ip", b"203.0.113.8"),
        ]);
        assert_eq!(client(&h), "127.0.0.1");
    }

    #[test]
    fn real_ip_only_without_forwarded_for() {
        let t = TrustedProxies::default();
        let proxy = ip("127.0.0.1");
        let client = |h: &HeaderMap| t.client(proxy, h).to_string();
        assert_eq!(
            client(&headers(&[("x-real-ip", b" 203.0.113.7 ")])),
            "203.0.113.7"
        );
        assert_eq!(
            client(&headers(&[("x-real-ip", b"2001:db8::7")])),
            "2001:db8::7"
        );
        assert_eq!(
            client(&headers(&[
                ("x-real-ip", b"203.0.113.8"),
                ("x-forwarded-for", b"203.0.113.7"),
            ])),
            "203.0.113.7"
        );
        assert_eq!(client(&headers(&[("x-real-ip", b"nope")])), "127.0.0.1");
        assert_eq!(
            client(&headers(&[("x-real-ip", b"203.0.113.7, 203.0.113.8")])),
            "127.0.0.1"
        );
    }

    proptest::proptest! {
        /// Whatever a shopper puts in its own X-Forwarded-For (any bytes a
        /// header may hold), once a trusted proxy appends the shopper's
        /// address, that address is the client; and an untrusted peer is
        /// its own client whatever it sends.
        #[test]
        fn no_prefix_a_client_writes_changes_its_address(
            prefix in proptest::collection::vec(
                proptest::prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, proptest::strategy::Just(b'\t')],
                0..60,
            ),
            real_ip in proptest::collection::vec(0x20u8..0x7f, 0..20),
            shopper in proptest::prop_oneof![
                proptest::arbitrary::any::<std::net::Ipv4Addr>().prop_map(IpAddr::V4),
                proptest::arbitrary::any::<Ipv6Addr>().prop_map(IpAddr::V6),
            ],
        ) {
            let t = trusted("127.0.0.0/8,::1,10.0.0.0/8");
            let shopper = shopper.to_canonical();
            proptest::prop_assume!(!t.contains(shopper));
            let mut value = prefix.clone();
            value.extend_from_slice(b", ");
            value.extend_from_slice(shopper.to_string().as_bytes());
            let h = headers(&[("x-forwarded-for", &value), ("x-real-ip", &real_ip)]);
            proptest::prop_assert_eq!(t.client(ip("127.0.0.1"), &h), shopper);
            proptest::prop_assert_eq!(t.client(ip("10.1.1.1"), &h), shopper);
            // Behind a second trusted hop too.
            value.extend_from_slice(b", 10.0.0.5");
            let h = headers(&[("x-forwarded-for", &value)]);
            proptest::prop_assert_eq!(t.client(ip("127.0.0.1"), &h), shopper);
            let outsider = ip("203.0.113.9");
            proptest::prop_assert_eq!(t.client(outsider, &h), outsider);
        }
    }
}
