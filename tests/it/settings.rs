//! The Redis and Sentinel settings have one source, `deploy/redis/`
//! (`redis-shipped.conf` for every data node, `sentinel-shipped.properties`
//! for every Sentinel), and every consumer takes them from there:
//! `scripts/redis-group.sh` (so the demo, every test and the failover
//! harness run what is shipped), the ansible role and the compose setup.
//!
//! Proved on running processes for the local group (here: `CONFIG GET` of
//! each data node, `SENTINEL MASTER` of each Sentinel against the parsed
//! files) and for the group that ansible renders (`deploy/check.sh`, run by
//! `deploy.rs`, compares the same). The static test below checks that no
//! consumer sets a shipped value on its own, so a value changed in only one
//! place fails here.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use crate::support::redis_group::{GroupOptions, Node, RedisGroup};

pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Lines of a config file without comments and blank lines.
pub(crate) fn setting_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Redis's memory units (`1k` = 1000, `1kb` = 1024, …) as bytes, the way
/// `CONFIG GET` reports sizes.
fn memory_bytes(v: &str) -> Option<u64> {
    let lower = v.to_ascii_lowercase();
    let digits = lower.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits == lower.len() {
        return None;
    }
    let n: u64 = lower[..digits].parse().ok()?;
    let unit = match &lower[digits..] {
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    Some(n * unit)
}

/// A value of redis.conf as `CONFIG GET` answers it: quotes off, tokens
/// joined by one space, a single size in bytes.
pub(crate) fn normalized(value: &str) -> String {
    let tokens: Vec<&str> = value
        .split_whitespace()
        .map(|t| t.trim_matches('"'))
        .filter(|t| !t.is_empty())
        .collect();
    match tokens.as_slice() {
        [one] => memory_bytes(one).map_or_else(|| (*one).to_owned(), |b| b.to_string()),
        _ => tokens.join(" "),
    }
}

/// `deploy/redis/redis-shipped.conf`: option → value as `CONFIG GET` reports it.
fn shipped_redis() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in setting_lines(&read("deploy/redis/redis-shipped.conf")) {
        let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let key = key.to_ascii_lowercase();
        assert!(
            key != "include",
            "redis-shipped.conf includes another file: keep the settings in one file"
        );
        let prev = out.insert(key.clone(), normalized(value));
        assert!(prev.is_none(), "redis-shipped.conf sets {key} twice");
    }
    assert!(!out.is_empty(), "redis-shipped.conf holds no setting");
    out
}

/// `deploy/redis/sentinel-shipped.properties`: key → value.
fn shipped_sentinel() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in setting_lines(&read("deploy/redis/sentinel-shipped.properties")) {
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("sentinel-shipped.properties: not key=value: {line:?}"));
        assert!(
            value.parse::<u64>().is_ok(),
            "sentinel-shipped.properties: {key} is not a number: {value:?}"
        );
        let prev = out.insert(key.to_owned(), value.to_owned());
        assert!(
            prev.is_none(),
            "sentinel-shipped.properties sets {key} twice"
        );
    }
    for key in [
        "down-after-milliseconds",
        "failover-timeout",
        "parallel-syncs",
    ] {
        assert!(
            out.contains_key(key),
            "sentinel-shipped.properties lacks {key}"
        );
    }
    out
}

#[test]
fn shipped_files_parse_and_hold_the_reasoned_values() {
    let redis = shipped_redis();
    // The values whose reasons deploy/README.md gives ("Redis and Sentinel
    // settings"): change them there too.
    for (key, want) in [
        ("repl-diskless-sync", "yes"),
        ("repl-diskless-sync-delay", "0"),
        ("min-replicas-to-write", "1"),
        ("min-replicas-max-lag", "10"),
        ("appendonly", "yes"),
        ("save", ""),
        ("maxmemory-policy", "noeviction"),
    ] {
        assert_eq!(redis.get(key).map(String::as_str), Some(want), "{key}");
    }
    for key in [
        "port",
        "bind",
        "dir",
        "requirepass",
        "masterauth",
        "replicaof",
        "maxmemory",
    ] {
        assert!(
            !redis.contains_key(key),
            "{key} is per host, not a shipped setting"
        );
    }
    let sentinel = shipped_sentinel();
    assert_eq!(sentinel["down-after-milliseconds"], "3000");
    assert_eq!(sentinel["failover-timeout"], "10000");
    assert_eq!(sentinel["parallel-syncs"], "1");
    assert_eq!(normalized("64mb"), "67108864");
    assert_eq!(
        normalized("3600 1 300 100 60 10000"),
        "3600 1 300 100 60 10000"
    );
    assert_eq!(normalized("\"\""), "");
}

/// Lines of FILE that set redis.conf option KEY themselves: in a config or a
/// template any line, in a shell script the `echo "…"` lines that write one.
fn sets_option(file: &str, text: &str, key: &str) -> Vec<String> {
    let script = file.ends_with(".sh");
    text.lines()
        .map(str::trim)
        .filter_map(|l| {
            if script {
                l.strip_prefix("echo \"")
            } else {
                Some(l)
            }
        })
        .filter(|l| {
            let mut words = l.split_whitespace();
            words.next().is_some_and(|w| w.eq_ignore_ascii_case(key)) && words.next().is_some()
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_consumer_takes_the_settings_from_deploy_redis() {
    let redis = shipped_redis();
    let sentinel = shipped_sentinel();

    // Nobody sets a shipped data-node option beside the shipped file.
    let own_lines = [
        "scripts/redis-group.sh",
        "deploy/ansible/roles/redis/templates/redis.conf.j2",
        "deploy/ansible/roles/redis/templates/replication.conf.j2",
        "deploy/compose/redis/redis.conf",
        "deploy/compose/redis/start-redis.sh",
    ];
    for file in own_lines {
        let text = read(file);
        for key in redis.keys() {
            let hits = sets_option(file, &text, key);
            assert!(
                hits.is_empty(),
                "{file} sets {key} itself ({hits:?}); it belongs in deploy/redis/redis-shipped.conf only"
            );
        }
    }
    // Nobody sets a Sentinel tunable to a literal value.
    let sentinel_files = [
        "scripts/redis-group.sh",
        "deploy/ansible/roles/redis/templates/sentinel.conf.j2",
        "deploy/compose/redis/sentinel.conf.tmpl",
        "deploy/compose/redis/start-sentinel.sh",
    ];
    for file in sentinel_files {
        for line in read(file).lines() {
            let words: Vec<&str> = line
                .trim()
                .trim_start_matches("echo")
                .trim()
                .trim_matches('"')
                .split_whitespace()
                .collect();
            if let ["sentinel", key, _master, value, ..] = words.as_slice() {
                assert!(
                    !(sentinel.contains_key(*key) && value.parse::<u64>().is_ok()),
                    "{file} sets sentinel {key} to a literal ({line:?}); \
                     it belongs in deploy/redis/sentinel-shipped.properties only"
                );
            }
        }
    }

    // The script includes the data-node file and reads the Sentinel file.
    let script = read("scripts/redis-group.sh");
    assert!(script.contains("deploy/redis/redis-shipped.conf"));
    assert!(script.contains("deploy/redis/sentinel-shipped.properties"));
    assert!(script.contains(r#"echo "include \"$SHIPPED_REDIS_CONF\"""#));

    // Ansible: copies the file, includes it, and reads every tunable from
    // the properties file into the role defaults.
    let tasks = read("deploy/ansible/roles/redis/tasks/main.yml");
    assert!(tasks.contains(r#"src: "{{ redis_shipped_dir }}/redis-shipped.conf""#));
    let template = read("deploy/ansible/roles/redis/templates/redis.conf.j2");
    assert!(
        template
            .lines()
            .any(|l| l.starts_with("include ") && l.ends_with("/redis-shipped.conf")),
        "redis.conf.j2 does not include redis-shipped.conf"
    );
    let defaults = read("deploy/ansible/roles/redis/defaults/main.yml");
    assert!(defaults.contains(r#"redis_shipped_dir: "{{ role_path }}/../../../redis""#));
    assert!(defaults.contains(
        r#"redis_sentinel_shipped: "{{ redis_shipped_dir }}/sentinel-shipped.properties""#
    ));
    for key in sentinel.keys() {
        assert!(
            defaults.contains(&format!(
                "lookup('ansible.builtin.ini', '{key}', type='properties', file=redis_sentinel_shipped)"
            )),
            "the redis role's defaults do not read {key} from sentinel-shipped.properties"
        );
    }
    let sentinel_j2 = read("deploy/ansible/roles/redis/templates/sentinel.conf.j2");
    for (key, var) in [
        ("down-after-milliseconds", "redis_sentinel_down_after_ms"),
        ("failover-timeout", "redis_sentinel_failover_timeout_ms"),
        ("parallel-syncs", "redis_sentinel_parallel_syncs"),
    ] {
        assert!(
            sentinel_j2.contains(&format!(
                "sentinel {key} {{{{ redis_master_name }}}} {{{{ {var} }}}}"
            )),
            "sentinel.conf.j2 does not write {key} from {var}"
        );
        assert!(defaults.contains(&format!("{var}: \"{{{{ lookup(")));
    }

    // Compose: mounts deploy/redis into every Redis and Sentinel container,
    // includes the file, appends the tunables.
    let compose = read("deploy/compose/docker-compose.yml");
    assert_eq!(
        compose
            .matches("- ../redis:/usr/local/etc/flashsale-shipped:ro")
            .count(),
        6,
        "docker-compose.yml mounts deploy/redis into the 3 data nodes and 3 Sentinels"
    );
    let start_redis = read("deploy/compose/redis/start-redis.sh");
    assert!(start_redis.contains(r#"echo "include $shipped/redis-shipped.conf""#));
    let start_sentinel = read("deploy/compose/redis/start-sentinel.sh");
    assert!(start_sentinel.contains("props=$shipped/sentinel-shipped.properties"));
    assert!(start_sentinel.contains(r#"echo "sentinel $key $master $value""#));
}

/// `CONFIG GET` of every shipped option on data node I; the mismatches.
async fn data_node_mismatches(
    group: &RedisGroup,
    i: usize,
    want: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut con = group.client(group.redis_port(i)).await;
    let mut bad = Vec::new();
    for (key, value) in want {
        let got: HashMap<String, String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(key)
            .query_async(&mut con)
            .await
            .unwrap_or_else(|e| panic!("redis-{i}: CONFIG GET {key}: {e}"));
        let got = got.get(key).cloned().unwrap_or_default();
        if &got != value {
            bad.push(format!(
                "redis-{i} {key}: running {got:?}, shipped {value:?}"
            ));
        }
    }
    bad
}

/// `SENTINEL MASTER` of Sentinel I against WANT; the mismatches.
async fn sentinel_mismatches(
    group: &RedisGroup,
    i: usize,
    want: &BTreeMap<String, String>,
) -> Vec<String> {
    let url = format!("redis://127.0.0.1:{}/", group.sentinel_port(i));
    let mut con = redis::Client::open(url)
        .expect("sentinel url")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("sentinel-{i}: {e}"));
    let fields: HashMap<String, String> = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(group.master_name())
        .query_async(&mut con)
        .await
        .unwrap_or_else(|e| panic!("sentinel-{i}: SENTINEL MASTER: {e}"));
    want.iter()
        .filter(|(k, v)| fields.get(*k) != Some(*v))
        .map(|(k, v)| {
            format!(
                "sentinel-{i} {k}: running {:?}, shipped {v:?}",
                fields.get(k)
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_group_runs_the_shipped_settings() {
    let redis = shipped_redis();
    let sentinel = shipped_sentinel();
    let group = RedisGroup::start(GroupOptions::default()).await;
    assert_eq!(
        group.timing_override(),
        None,
        "GroupOptions::default() must run the shipped settings"
    );
    let mut bad = Vec::new();
    for i in 0..3 {
        bad.extend(data_node_mismatches(&group, i, &redis).await);
        bad.extend(sentinel_mismatches(&group, i, &sentinel).await);
    }
    assert!(
        bad.is_empty(),
        "the local group differs from deploy/redis/:\n{}",
        bad.join("\n")
    );
    // Each node's own config leaves the shipped options to the include.
    for i in 0..3 {
        let conf =
            std::fs::read_to_string(group.dir().join(format!("redis-{i}")).join("redis.conf"))
                .expect("redis.conf");
        let shipped = repo().join("deploy/redis/redis-shipped.conf");
        assert!(
            conf.lines()
                .any(|l| l == format!("include \"{}\"", shipped.display())),
            "redis-{i}/redis.conf does not include {}:\n{conf}",
            shipped.display()
        );
    }
    assert!(group.pid(Node::Redis(0)).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timing_override_is_named_and_reported() {
    let shipped = shipped_sentinel();
    let group = RedisGroup::start(GroupOptions {
        down_after_override_ms: Some(1000),
        ..GroupOptions::default()
    })
    .await;
    assert_eq!(
        group.timing_override().as_deref(),
        Some(
            format!(
                "down-after-milliseconds=1000 (shipped {})",
                shipped["down-after-milliseconds"]
            )
            .as_str()
        )
    );
    // The override and nothing else: the other tunables are still shipped.
    let mut want = shipped.clone();
    want.insert("down-after-milliseconds".into(), "1000".into());
    for i in 0..3 {
        let bad = sentinel_mismatches(&group, i, &want).await;
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }
    let redis = shipped_redis();
    let bad = data_node_mismatches(&group, 0, &redis).await;
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    let state = std::fs::read_to_string(group.dir().join("group.state")).expect("group.state");
    assert!(state.contains("timing_override=down-after-milliseconds=1000"));
}
