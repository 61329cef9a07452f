//! The local Redis Cluster (`scripts/redis-cluster.sh`, the test kit's
//! `RedisCluster`) runs the settings `deploy/redis/` ships for cluster mode
//! — `redis-shipped.conf`, then `redis-cluster-shipped.conf`, whose values
//! win — and the kit's helpers do what the failover tests will rely on:
//! roles from `CLUSTER SHARDS`, reads on a replica with `READONLY`, a
//! `CLUSTER FAILOVER`, a slot moved with its keys, a killed primary replaced
//! by its replica within the shipped node timeout, a restarted node
//! rejoining. One cluster serves every step of the second test (about 25 s);
//! the third runs the script itself, on its own ports and run dir.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::settings::{normalized, read, repo, setting_lines};
use flashsale_testkit::redis_cluster::{
    ClusterOptions, RedisCluster, fresh_temp_dir, pick_base_port, release_base_port, script_path,
};

/// A shipped redis.conf fragment: option → value as `CONFIG GET` reports it.
fn shipped(rel: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in setting_lines(&read(rel)) {
        let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let key = key.to_ascii_lowercase();
        assert!(
            key != "include",
            "{rel} includes another file: keep the settings in one file"
        );
        let prev = out.insert(key.clone(), normalized(value));
        assert!(prev.is_none(), "{rel} sets {key} twice");
    }
    assert!(!out.is_empty(), "{rel} holds no setting");
    out
}

const SHARED: &str = "deploy/redis/redis-shipped.conf";
const CLUSTER: &str = "deploy/redis/redis-cluster-shipped.conf";

/// What every cluster node must run: the shared file, then the cluster file
/// over it (the order of the includes).
fn shipped_cluster_node() -> BTreeMap<String, String> {
    let mut want = shipped(SHARED);
    want.extend(shipped(CLUSTER));
    want
}

/// deploy/README.md's "Redis Cluster settings" section.
fn readme_cluster_section() -> String {
    let readme = read("deploy/README.md");
    let start = readme
        .find("\n## Redis Cluster settings\n")
        .expect("deploy/README.md has a \"Redis Cluster settings\" section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_owned()
}

#[test]
fn cluster_settings_hold_the_reasoned_values() {
    let cluster = shipped(CLUSTER);
    // The values whose reasons deploy/README.md gives ("Redis Cluster
    // settings") and the file's comments: change them there too.
    let reasoned = [
        ("cluster-enabled", "yes"),
        ("cluster-node-timeout", "5000"),
        ("cluster-require-full-coverage", "no"),
        ("cluster-allow-reads-when-down", "no"),
        ("cluster-replica-validity-factor", "10"),
        ("cluster-replica-no-failover", "no"),
        ("cluster-allow-replica-migration", "yes"),
        ("cluster-migration-barrier", "1"),
        ("min-replicas-to-write", "0"),
    ];
    assert_eq!(
        cluster.len(),
        reasoned.len(),
        "{CLUSTER} sets {:?}; every value needs its reason here and in deploy/README.md",
        cluster.keys().collect::<Vec<_>>()
    );
    let section = readme_cluster_section();
    for (key, want) in reasoned {
        assert_eq!(cluster.get(key).map(String::as_str), Some(want), "{key}");
        assert!(
            section.contains(&format!("{key} {want}")),
            "deploy/README.md's \"Redis Cluster settings\" does not give `{key} {want}`"
        );
    }
    // The override of the shared value is deliberate, and the only one.
    let shared = shipped(SHARED);
    let overridden: Vec<&String> = cluster.keys().filter(|k| shared.contains_key(*k)).collect();
    assert_eq!(overridden, ["min-replicas-to-write"]);
    assert_eq!(shared["min-replicas-to-write"], "1");
    // Per host, never shipped.
    for key in [
        "port",
        "bind",
        "dir",
        "requirepass",
        "masterauth",
        "replicaof",
        "maxmemory",
        "cluster-config-file",
        "cluster-port",
        "cluster-announce-ip",
    ] {
        assert!(
            !cluster.contains_key(key),
            "{key} is per host, not a shipped setting"
        );
    }

    // The script includes both files, in this order, and sets no shipped
    // option itself: only the timing override, under its banner.
    let script = read("scripts/redis-cluster.sh");
    let inc_shared = script
        .find(r#"echo "include \"$SHIPPED_REDIS_CONF\"""#)
        .expect("redis-cluster.sh includes redis-shipped.conf");
    let inc_cluster = script
        .find(r#"echo "include \"$SHIPPED_CLUSTER_CONF\"""#)
        .expect("redis-cluster.sh includes redis-cluster-shipped.conf");
    assert!(inc_shared < inc_cluster, "the cluster file must come last");
    assert!(script.contains("deploy/redis/redis-cluster-shipped.conf"));
    let lines: Vec<&str> = script.lines().map(str::trim).collect();
    for key in shipped_cluster_node().keys() {
        for (i, line) in lines.iter().enumerate() {
            let Some(written) = line.strip_prefix("echo \"") else {
                continue;
            };
            let mut words = written.split_whitespace();
            if words.next().is_some_and(|w| w.eq_ignore_ascii_case(key)) && words.next().is_some() {
                assert!(
                    key == "cluster-node-timeout"
                        && i > 0
                        && lines[i - 1].contains("TIMING OVERRIDE"),
                    "redis-cluster.sh sets {key} itself ({line:?}); it belongs in deploy/redis/ only"
                );
            }
        }
    }
}

/// `CONFIG GET` of every shipped option on the node on PORT; the mismatches.
async fn node_mismatches(
    cluster: &RedisCluster,
    port: u16,
    want: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut con = cluster.client(port).await;
    let mut bad = Vec::new();
    for (key, value) in want {
        let got: HashMap<String, String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(key)
            .query_async(&mut con)
            .await
            .unwrap_or_else(|e| panic!("{port}: CONFIG GET {key}: {e}"));
        let got = got.get(key).cloned().unwrap_or_default();
        if &got != value {
            bad.push(format!("{port} {key}: running {got:?}, shipped {value:?}"));
        }
    }
    bad
}

async fn set_and_wait(con: &mut redis::aio::MultiplexedConnection, key: &str, value: &str) {
    let () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(con)
        .await
        .unwrap_or_else(|e| panic!("SET {key}: {e}"));
    let acks: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(con)
        .await
        .unwrap_or_else(|e| panic!("WAIT after SET {key}: {e}"));
    assert_eq!(acks, 1, "the replica did not acknowledge {key}");
}

async fn get(
    con: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> redis::RedisResult<Option<String>> {
    redis::cmd("GET").arg(key).query_async(con).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cluster_as_shipped() {
    let want = shipped_cluster_node();
    let cluster = RedisCluster::start(ClusterOptions::default()).await;
    assert_eq!(
        cluster.timing_override(),
        None,
        "ClusterOptions::default() must run the shipped settings"
    );
    let node_timeout = cluster.node_timeout();
    assert_eq!(
        node_timeout,
        Duration::from_millis(want["cluster-node-timeout"].parse().expect("a number"))
    );

    // 1. Every node runs both shipped files, the cluster file last.
    let mut bad = Vec::new();
    for port in cluster.nodes() {
        bad.extend(node_mismatches(&cluster, port, &want).await);
    }
    assert!(
        bad.is_empty(),
        "the local cluster differs from deploy/redis/:\n{}",
        bad.join("\n")
    );
    for (i, port) in cluster.nodes().into_iter().enumerate() {
        let conf = std::fs::read_to_string(cluster.dir().join(format!("redis-{i}/redis.conf")))
            .expect("redis.conf");
        let includes: Vec<&str> = conf.lines().filter(|l| l.starts_with("include ")).collect();
        assert_eq!(
            includes,
            [
                format!("include \"{}\"", repo().join(SHARED).display()),
                format!("include \"{}\"", repo().join(CLUSTER).display()),
            ],
            "node {port}: its own config must include the shipped files, in this order"
        );
    }

    // 2. Three primaries, each with one online replica, all slots covered.
    let mut shards: Vec<_> = cluster
        .shards()
        .await
        .into_iter()
        .filter(|s| !s.slots.is_empty())
        .collect();
    assert_eq!(shards.len(), 3, "{shards:?}");
    shards.sort_by_key(|s| s.slots[0].0);
    let slots: u32 = shards.iter().map(|s| s.slot_count()).sum();
    assert_eq!(slots, 16384);
    for s in &shards {
        assert!(s.primary().is_some(), "{s:?}");
        assert_eq!(s.online_replicas().len(), 1, "{s:?}");
    }
    let primaries = cluster.primaries().await;
    let replicas = cluster.replicas().await;
    assert_eq!(primaries.len(), 3);
    assert_eq!(replicas.len(), 3);
    let mut all: Vec<u16> = primaries.iter().chain(&replicas).copied().collect();
    all.sort_unstable();
    assert_eq!(all, cluster.nodes());

    // 3. A key written on its primary is read on its replica with READONLY.
    let key = "{kit}:stock";
    let p = cluster.primary_of_key(key).await;
    let r = cluster.replicas_of(p).await;
    assert_eq!(r.len(), 1, "primary {p}: replicas {r:?}");
    let r = r[0];
    set_and_wait(&mut cluster.client(p).await, key, "42").await;
    let mut on_replica = cluster.client(r).await;
    let moved = get(&mut on_replica, key)
        .await
        .expect_err("a replica redirects without READONLY");
    let key_slot = cluster.keyslot(key).await;
    let primary_addr = format!("127.0.0.1:{p}");
    assert_eq!(
        moved.redirect_node(),
        Some((primary_addr.as_str(), key_slot)),
        "{moved}"
    );
    let () = redis::cmd("READONLY")
        .query_async(&mut on_replica)
        .await
        .expect("READONLY");
    assert_eq!(
        get(&mut on_replica, key).await.expect("GET").as_deref(),
        Some("42")
    );

    // A replica frozen for less than the node timeout answers nothing, then
    // everything; no failover.
    cluster.stop_process(r);
    let frozen = tokio::time::timeout(Duration::from_millis(500), get(&mut on_replica, key)).await;
    assert!(
        frozen.is_err() || frozen.is_ok_and(|r| r.is_err()),
        "a frozen node answered"
    );
    cluster.cont(r);
    cluster.wait_ok(Duration::from_secs(10)).await;
    assert!(cluster.is_primary(p).await);

    // 4. failover(): the replica takes over the shard, the primary follows it.
    let took = cluster.failover(r).await;
    eprintln!("cluster_kit: CLUSTER FAILOVER on {r}: primary after {took:.2?}");
    cluster.wait_healthy(Duration::from_secs(20)).await;
    let primaries = cluster.primaries().await;
    assert!(
        primaries.contains(&r) && !primaries.contains(&p),
        "{primaries:?}"
    );
    assert_eq!(cluster.replicas_of(r).await, [p]);
    assert_eq!(cluster.primary_of_key(key).await, r);
    assert_eq!(
        get(&mut cluster.client(r).await, key)
            .await
            .expect("GET")
            .as_deref(),
        Some("42")
    );

    // 5. migrate_slot(): a slot moves with its keys (more than one batch).
    let slot = cluster.keyslot("{mig}").await;
    let from = cluster.primary_of_slot(slot).await;
    let to = *primaries
        .iter()
        .find(|&&q| q != from)
        .expect("another primary");
    let mut source = cluster.client(from).await;
    for i in 0..250 {
        let () = redis::cmd("SET")
            .arg(format!("{{mig}}:{i}"))
            .arg(i)
            .query_async(&mut source)
            .await
            .expect("SET");
    }
    set_and_wait(&mut source, "{mig}:last", "done").await;
    cluster.migrate_slot(slot, to).await;
    assert_eq!(cluster.primary_of_slot(slot).await, to);
    let mut target = cluster.client(to).await;
    for i in 0..250 {
        assert_eq!(
            get(&mut target, &format!("{{mig}}:{i}"))
                .await
                .expect("GET on the new owner"),
            Some(i.to_string())
        );
    }
    let left: i64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot)
        .query_async(&mut source)
        .await
        .expect("COUNTKEYSINSLOT");
    assert_eq!(left, 0, "keys of slot {slot} left on {from}");
    let moved = get(&mut source, "{mig}:last")
        .await
        .expect_err("the old owner redirects");
    let to_addr = format!("127.0.0.1:{to}");
    assert_eq!(
        moved.redirect_node(),
        Some((to_addr.as_str(), slot)),
        "{moved}"
    );
    cluster.wait_ok(Duration::from_secs(10)).await;

    // 6. kill(): the primary's replica takes over within the node timeout
    // plus failure detection and the election, with what was acknowledged.
    set_and_wait(&mut target, "{mig}:before-kill", "acked").await;
    let heir = cluster.replicas_of(to).await;
    assert_eq!(heir.len(), 1, "primary {to}: replicas {heir:?}");
    let heir = heir[0];
    cluster.kill(to);
    let took = cluster
        .wait_primary(heir, node_timeout + Duration::from_secs(10))
        .await;
    eprintln!(
        "cluster_kit: kill -9 of primary {to}: replica {heir} primary after {took:.2?} \
         (cluster-node-timeout {} ms, as shipped)",
        node_timeout.as_millis()
    );
    assert!(
        took < node_timeout + Duration::from_secs(5),
        "promotion took {took:?} with cluster-node-timeout {node_timeout:?}"
    );
    let mut heir_con = cluster.client(heir).await;
    assert_eq!(
        get(&mut heir_con, "{mig}:before-kill")
            .await
            .expect("GET")
            .as_deref(),
        Some("acked")
    );
    assert_eq!(
        get(&mut heir_con, "{mig}:100")
            .await
            .expect("GET")
            .as_deref(),
        Some("100")
    );
    // With no replica left the shard still takes writes
    // (min-replicas-to-write 0): promises are the app's WAIT, not a refusal.
    let () = redis::cmd("SET")
        .arg("{mig}:after-kill")
        .arg("1")
        .query_async(&mut heir_con)
        .await
        .expect("the promoted primary without a replica takes writes");
    cluster.wait_ok(Duration::from_secs(10)).await;

    // restart(): the old primary rejoins as the new one's replica.
    cluster.restart(to).await;
    cluster.wait_healthy(Duration::from_secs(30)).await;
    assert_eq!(cluster.replicas_of(heir).await, [to]);
    assert!(!cluster.is_primary(to).await);

    cluster.stop().await;
}

/// Stops the script's cluster (by its pidfiles) and removes its dir, also
/// when the test panics.
struct ScriptRun {
    dir: PathBuf,
    base: u16,
}

impl ScriptRun {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("bash")
            .arg(script_path())
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .env_remove("REDIS_CLUSTER_PASSWORD")
            .env_remove("REDIS_CLUSTER_NODE_TIMEOUT_MS")
            .output()
            .expect("run redis-cluster.sh")
    }
}

impl Drop for ScriptRun {
    fn drop(&mut self) {
        let _ = self.run(&["stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
        release_base_port(self.base);
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn pids(dir: &Path) -> Vec<i32> {
    (0..6)
        .filter_map(|i| std::fs::read_to_string(dir.join(format!("redis-{i}/redis.pid"))).ok())
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
        .unwrap_or(false)
}

#[test]
fn the_script_starts_reports_and_stops_a_cluster() {
    use std::os::unix::fs::PermissionsExt;
    let run = ScriptRun {
        dir: fresh_temp_dir("flashsale-cluster-script"),
        base: pick_base_port(),
    };
    let base = run.base.to_string();
    let password = "script-pw-7";
    let start = [
        "start",
        "--base-port",
        &base,
        "--password",
        password,
        "--node-timeout",
        "4000",
    ];
    let out = run.run(&start);
    let said = text(&out);
    assert!(out.status.success(), "start failed:\n{said}");
    assert!(
        !said.contains(password),
        "start printed the password:\n{said}"
    );
    let override_line = "TIMING OVERRIDE cluster-node-timeout=4000 (shipped 5000)";
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(override_line)
            && String::from_utf8_lossy(&out.stderr).contains(override_line),
        "start does not name the timing override:\n{said}"
    );
    let state = std::fs::read_to_string(run.dir.join("cluster.state")).expect("cluster.state");
    assert!(state.contains("timing_override=cluster-node-timeout=4000 (shipped 5000)\n"));
    let started = pids(&run.dir);
    assert_eq!(started.len(), 6);

    // status: six live nodes, three primaries with slots, three replicas.
    let out = run.run(&["status"]);
    let said = text(&out);
    assert!(out.status.success(), "status:\n{said}");
    assert_eq!(said.matches(" yes ").count(), 6, "{said}");
    assert_eq!(said.matches("primary, slots ").count(), 3, "{said}");
    assert_eq!(said.matches("replica of 127.0.0.1:").count(), 3, "{said}");
    assert_eq!(said.matches("cluster_state:ok").count(), 6, "{said}");
    assert!(said.contains(override_line), "{said}");

    // env: every node as a seed and the password, in a 0600 file.
    let out = run.run(&["env"]);
    let env = String::from_utf8_lossy(&out.stdout).into_owned();
    let first: u16 = run.base;
    let seeds: Vec<String> = (first..first + 6)
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    assert!(
        env.contains(&format!(
            "export FLASHSALE_REDIS_CLUSTER={}\n",
            seeds.join(",")
        )),
        "{env}"
    );
    assert!(env.contains(&format!("export FLASHSALE_REDIS_PASSWORD='{password}'\n")));
    let mode = std::fs::metadata(run.dir.join("env"))
        .expect("env")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The override is in force: CONFIG GET on a node.
    let node = redis::Client::open(format!("redis://:{password}@127.0.0.1:{first}/"))
        .expect("url")
        .get_connection()
        .and_then(|mut c| {
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("cluster-node-timeout")
                .query::<HashMap<String, String>>(&mut c)
        })
        .expect("CONFIG GET");
    assert_eq!(node["cluster-node-timeout"], "4000");

    // A second start finds it running and says so.
    let out = run.run(&start);
    assert!(out.status.success(), "second start:\n{}", text(&out));
    assert!(text(&out).contains("already running"), "{}", text(&out));
    assert_eq!(pids(&run.dir), started);

    // stop: every process gone, pidfiles removed; status says so (3).
    let out = run.run(&["stop"]);
    assert!(out.status.success(), "stop:\n{}", text(&out));
    assert!(started.iter().all(|&p| !alive(p)), "a node survived stop");
    assert!(pids(&run.dir).is_empty());
    let out = run.run(&["status"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(text(&out).matches(" no ").count(), 6);
    let out = run.run(&["stop"]);
    assert!(out.status.success(), "a second stop:\n{}", text(&out));
}
