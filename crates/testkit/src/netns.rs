//! Hosts on one machine that a test can cut apart: each host is a network
//! namespace with one address, joined to the others by a veth pair into a
//! bridge of the root namespace (which has an address on the bridge too,
//! so the test itself reaches every host and is never cut off).
//!
//! A cut drops every IPv4 packet between two groups of hosts, both ways,
//! in an nftables table of the `bridge` family on the bridge's forward hook:
//! packets vanish as in a real partition (no reset, no ICMP error); the
//! root namespace's own traffic to a host does not cross that hook. `heal`
//! removes every cut at once. Traffic never leaves the machine.
//!
//! Owns its namespaces, its bridge and its nftables table (names carry a
//! random tag) and removes them when dropped, also while a test panics;
//! [`Net::teardown_script`] says the same in shell for a watchdog. It does
//! not start or stop processes: whoever starts one in a host (through
//! [`Net::command`] or `ip netns exec`) stops it by PID, before the host
//! goes. Needs root and Debian's `iproute2` and `nftables`
//! (`scripts/setup.sh netns` installs them); [`Net::create`] says so
//! plainly when they are missing.

use std::collections::HashSet;
use std::process::Stdio;

use crate::procs::on_path;

/// One host: a network namespace with one address on the bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// The name the test gave it.
    pub name: String,
    /// Its network namespace (`ip netns exec <netns> …`).
    pub netns: String,
    /// Its IPv4 address.
    pub ip: String,
}

/// Hosts on a bridge, and the cuts between them. See the module docs.
pub struct Net {
    tag: String,
    bridge: String,
    table: String,
    /// The root namespace's address on the bridge.
    gateway: String,
    hosts: Vec<Host>,
    /// The pairs of addresses cut now, each one way.
    cuts: std::sync::Mutex<HashSet<(String, String)>>,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("netns: cannot run {}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "netns: `{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// An unused 10.x.y.0/24 (no route of this machine names it).
fn free_subnet() -> String {
    let routes = std::process::Command::new("ip")
        .args(["-4", "route", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for _ in 0..200 {
        let r = crate::redis_group::random_u64();
        let net = format!("10.{}.{}", 200 + r % 50, (r >> 8) % 256);
        if !routes.contains(&format!("{net}.")) {
            return net;
        }
    }
    panic!("netns: found no free 10.x.y.0/24 subnet");
}

impl Net {
    /// Makes one host per name (at most 200) on a new bridge. Panics with
    /// what is missing (root, `ip`, `nft`) or what failed; what was made
    /// before a failure is removed.
    pub fn create(names: &[&str]) -> Net {
        assert!(names.len() <= 200, "netns: at most 200 hosts on one bridge");
        for bin in ["ip", "nft", "tc"] {
            assert!(
                on_path(bin),
                "netns: `{bin}` not found; install Debian's iproute2 and nftables \
                 (`scripts/setup.sh netns`)"
            );
        }
        let uid = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        assert!(
            uid == "0",
            "netns: network namespaces and nftables need root (uid {uid})"
        );
        let tag = format!("{:06x}", crate::redis_group::random_u64() & 0xff_ffff);
        let subnet = free_subnet();
        let mut net = Net {
            bridge: format!("fsb{tag}"),
            table: format!("fscut{tag}"),
            gateway: format!("{subnet}.254"),
            hosts: Vec::new(),
            tag,
            cuts: std::sync::Mutex::new(HashSet::new()),
        };
        if let Err(e) = net.build(&subnet, names) {
            drop(net);
            panic!("{e}");
        }
        net
    }

    fn build(&mut self, subnet: &str, names: &[&str]) -> Result<(), String> {
        let br = self.bridge.clone();
        run(&["ip", "link", "add", &br, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", self.gateway),
            "dev",
            &br,
        ])?;
        run(&["ip", "link", "set", &br, "up"])?;
        for (i, name) in names.iter().enumerate() {
            let host = Host {
                name: (*name).to_owned(),
                netns: format!("fs{}-{i}", self.tag),
                ip: format!("{subnet}.{}", i + 1),
            };
            let ns = host.netns.clone();
            run(&["ip", "netns", "add", &ns])?;
            self.hosts.push(host.clone());
            let veth = format!("fsv{}{i}", self.tag);
            run(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            run(&["ip", "link", "set", &veth, "master", &br, "up"])?;
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", host.ip),
                "dev",
                "eth0",
            ])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        run(&["nft", "add", "table", "bridge", &self.table])?;
        run(&[
            "nft",
            &format!(
                "add chain bridge {} cut {{ type filter hook forward priority 0; policy accept; }}",
                self.table
            ),
        ])?;
        Ok(())
    }

    /// The host named `name`. Panics if there is none.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("netns: no host `{name}`"))
    }

    /// Every host, in the order given to [`Net::create`].
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The root namespace's address on the bridge (what a host sees the
    /// test's own connections come from).
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// A command that runs `program` inside host `name`'s namespace
    /// (`ip netns exec` replaces itself with it: the PID is the program's).
    pub fn command(
        &self,
        name: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ip");
        c.args(["netns", "exec", &self.host(name).netns])
            .arg(program);
        c
    }

    /// Drops every packet between any host of `a` and any host of `b`,
    /// both ways, until [`Net::heal`]. Cuts add up.
    pub fn cut(&self, a: &[&str], b: &[&str]) {
        let mut cuts = self.cuts.lock().unwrap_or_else(|e| e.into_inner());
        for x in a {
            for y in b {
                let (x, y) = (self.host(x).ip.clone(), self.host(y).ip.clone());
                for (s, d) in [(x.clone(), y.clone()), (y, x)] {
                    if cuts.insert((s.clone(), d.clone())) {
                        run(&[
                            "nft",
                            &format!(
                                "add rule bridge {} cut ip saddr {s} ip daddr {d} drop",
                                self.table
                            ),
                        ])
                        .unwrap_or_else(|e| panic!("{e}"));
                    }
                }
            }
        }
    }

    /// Removes every cut.
    pub fn heal(&self) {
        let mut cuts = self.cuts.lock().unwrap_or_else(|e| e.into_inner());
        run(&["nft", &format!("flush chain bridge {} cut", self.table)])
            .unwrap_or_else(|e| panic!("{e}"));
        cuts.clear();
    }

    /// The bridge port of host `name` (the root side of its veth pair).
    fn port_of(&self, name: &str) -> String {
        let i = self
            .hosts
            .iter()
            .position(|h| h.name == name)
            .unwrap_or_else(|| panic!("netns: no host `{name}`"));
        format!("fsv{}{i}", self.tag)
    }

    /// Slows everything sent to host `name` down to `rate` (tc's token
    /// bucket, `tbf`, on its bridge port: e.g. `3mbit`; packets that would
    /// wait more than 300 ms are dropped and sent again by TCP), until
    /// [`Net::unlimit`].
    pub fn limit_rate(&self, name: &str, rate: &str) {
        run(&[
            "tc",
            "qdisc",
            "replace",
            "dev",
            &self.port_of(name),
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            "64kb",
            "latency",
            "300ms",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Removes host `name`'s rate limit.
    pub fn unlimit(&self, name: &str) {
        run(&["tc", "qdisc", "del", "dev", &self.port_of(name), "root"])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Whether any cut is in place.
    pub fn is_cut(&self) -> bool {
        !self
            .cuts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Shell that removes what this net made, for a watchdog that outlives
    /// the test (errors ignored).
    pub fn teardown_script(&self) -> String {
        let mut s = format!(
            "nft delete table bridge {} 2>/dev/null; ip link del {} 2>/dev/null;",
            self.table, self.bridge
        );
        for h in &self.hosts {
            s.push_str(&format!(" ip netns del {} 2>/dev/null;", h.netns));
        }
        s.push_str(" true");
        s
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(self.teardown_script())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
