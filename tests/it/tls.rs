//! TLS and ACL users against real `redis-server`/`redis-sentinel` that
//! speak TLS only and have the users of `deploy/redis/users.acl` and
//! `sentinel-users.acl` (`redis-group.sh --tls --acl`): `flashsale serve`
//! as `flashsale-app`, `flashsale-worker` and the operator's commands as
//! `flashsale-worker`, all asking the Sentinels as `flashsale-watch`;
//! purchases through a `kill -9` of the master; what those users must not
//! do, tried on real connections; and the settings that cannot work,
//! refused at start-up with status 78 and the variable's name; and a Redis
//! Cluster over TLS (`redis-cluster.sh --tls`: the cluster bus and
//! replication too), with serve and a worker on it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale::config::{Access, RedisSettings, RedisTarget};
use flashsale_testkit::procs::{acl_env, redis_env};
use serde_json::Value;

use crate::support::app::{
    AppOptions, TestApp, assert_config_error, buy_counting, redis_settings_for, serve_settings_on,
    shared_group, shipped_app_options, temp_dir, unconfirmed_after, worker_command_on,
};
use crate::support::cluster::cluster_redis_settings;
use crate::support::redis_group::{GroupOptions, Node, RedisGroup};
use flashsale_testkit::procs::cluster_env;
use flashsale_testkit::redis_cluster::{ClusterOptions, RedisCluster};

/// The key prefix the ACL users of the test groups may touch.
const PREFIX: &str = "tlsfs";

async fn tls_acl_group() -> RedisGroup {
    RedisGroup::start(GroupOptions {
        tls: true,
        acl: true,
        key_prefix: PREFIX.to_owned(),
        ..GroupOptions::default()
    })
    .await
}

/// `flashsale serve`'s Redis settings on `group`: the app's user on the
/// data nodes, the watcher's on the Sentinels, TLS with the group's CA and
/// client certificate.
fn app_redis_settings(group: &RedisGroup, opts: &AppOptions) -> RedisSettings {
    let target = RedisTarget::Sentinels {
        addrs: (0..3)
            .map(|i| {
                (
                    group.host(Node::Sentinel(i)).to_owned(),
                    group.sentinel_port(i),
                )
            })
            .collect(),
        master_name: group.master_name().to_owned(),
        access: group.user_access("flashsale-watch", true),
    };
    let mut s = redis_settings_for(target, "unused", PREFIX, opts);
    s.access = group.user_access("flashsale-app", false);
    s
}

/// `flashsale-worker` on `group` as its own users, its metrics, health and
/// probes (`INFO memory`, the streams' backlog) on `metrics`.
fn spawn_worker(group: &RedisGroup, metrics: &str) -> tokio::process::Child {
    worker_command_on(|c| {
        acl_env(redis_env(c, group, PREFIX), group, "flashsale-worker")
            .env("FLASHSALE_WORKER_METRICS", metrics)
    })
    .spawn()
    .expect("spawn flashsale-worker")
}

/// `flashsale ARGS` on `group` as the worker's users; exit code and stdout.
async fn operator(group: &RedisGroup, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale"));
    cmd.args(args)
        .env_remove("FLASHSALE_REDIS_URL")
        .env_remove("FLASHSALE_REDIS_CLUSTER")
        .env_remove("FLASHSALE_LEDGER_URL");
    acl_env(
        redis_env(&mut cmd, group, PREFIX),
        group,
        "flashsale-worker",
    );
    let out = cmd.output().await.expect("run flashsale");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every entry of `ACL LOG` on the live nodes: a command the product sent
/// that its users may not run, or a failed login.
async fn acl_denials(group: &RedisGroup, skip: &[Node]) -> Vec<String> {
    let mut out = Vec::new();
    for node in [
        Node::Redis(0),
        Node::Redis(1),
        Node::Redis(2),
        Node::Sentinel(0),
        Node::Sentinel(1),
        Node::Sentinel(2),
    ] {
        if skip.contains(&node) {
            continue;
        }
        let port = match node {
            Node::Redis(i) => group.redis_port(i),
            Node::Sentinel(i) => group.sentinel_port(i),
        };
        let access = Access {
            username: None,
            password: Some(flashsale::config::Secret::new(group.password())),
            tls: group.user_access("flashsale-app", false).tls,
        };
        let mut c = group
            .client_as(port, &access)
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("{node:?}: {e}"));
        let log: Vec<Vec<redis::Value>> = redis::cmd("ACL")
            .arg("LOG")
            .query_async(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{node:?} ACL LOG: {e}"));
        out.extend(log.iter().map(|entry| format!("{node:?}: {entry:?}")));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_worker_over_tls_as_their_own_users_keep_every_promise_through_a_killed_master() {
    let mut group = tls_acl_group().await;
    let opts = shipped_app_options();
    let app = Arc::new(
        TestApp::spawn_settings(
            PREFIX,
            serve_settings_on(app_redis_settings(&group, &opts), &opts),
        )
        .await,
    );
    let worker_addr = format!("127.0.0.1:{}", crate::support::nginx::free_port());
    let _worker = spawn_worker(&group, &worker_addr);
    let sku = "tls-1";
    let stock = 400;
    app.create_sale(sku, stock, 1, -5, 3600).await;

    // Purchases before, during and after the master is killed.
    let started = Instant::now();
    let shoppers = 160u64;
    let tasks: Vec<_> = (0..shoppers)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until((started + Duration::from_millis(25 * i)).into()).await;
                buy_counting(&app, &format!("tls{i}"), sku).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let old_port = group.master_port().await;
    let old = group.master_index().await;
    group.kill9(Node::Redis(old));
    let new_port = group
        .wait_master_change(old_port, Duration::from_secs(20))
        .await;
    let mut promised = Vec::new();
    for t in tasks {
        let o = t.await.expect("shopper");
        assert_eq!(o.status, 202, "{:?}", o.body);
        promised.push(o.body["order_id"].as_str().expect("order_id").to_owned());
    }
    // Purchases resume on the new master.
    let (s, body) = app.purchase("tls-after", sku, 1, None).await;
    assert_eq!(s, 202, "{body}");
    promised.push(body["order_id"].as_str().expect("order_id").to_owned());

    // The worker confirms every promised order; the audit adds up.
    let unconfirmed = unconfirmed_after(&group, PREFIX, &promised, Duration::from_secs(30)).await;
    assert!(unconfirmed.is_empty(), "not confirmed: {unconfirmed:?}");
    let a = app.audit(sku).await;
    assert_eq!(a["consistent"], true, "{a}");
    assert_eq!(a["sold"], promised.len(), "{a}");
    assert_eq!(a["confirmed"], promised.len(), "{a}");

    // The operator's commands log in the same way.
    let (code, out, err) = operator(&group, &["audit", "--sku", sku]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let v: Value = serde_json::from_str(out.trim()).expect("audit JSON");
    assert_eq!(v["audit"]["sold"], promised.len(), "{v}");

    // The worker's probes ran as its user: ready, the master's memory read.
    let metrics = format!("http://{worker_addr}/metrics");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = app
            .http
            .get(format!("http://{worker_addr}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        let text = match app.http.get(&metrics).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let memory = text
            .lines()
            .any(|l| l.starts_with("flashsale_redis_used_memory_bytes{"));
        if matches!(ready, Ok(200)) && memory {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker ready {ready:?}, memory gauge {memory}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Nothing the product sent was refused by the ACL rules.
    assert!(group.master_port().await == new_port);
    let denials = acl_denials(&group, &[Node::Redis(old)]).await;
    assert!(denials.is_empty(), "ACL denials: {denials:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_products_users_cannot_do_what_they_must_not() {
    let group = tls_acl_group().await;
    let master = group.master_port().await;
    let connect = |access: Access| {
        let client = group.client_as(master, &access);
        async move { client.get_multiplexed_async_connection().await }
    };
    let refused = |r: redis::RedisResult<redis::Value>, what: &str| {
        let e = r.expect_err(what);
        assert!(
            e.to_string().contains("NOPERM") || e.code() == Some("NOPERM"),
            "{what}: {e}"
        );
    };
    for user in ["flashsale-app", "flashsale-worker"] {
        let mut c = connect(group.user_access(user, false))
            .await
            .unwrap_or_else(|e| panic!("{user} over TLS: {e}"));
        // What it may do: keys under the prefix.
        let _: () = redis::cmd("SET")
            .arg(format!("{PREFIX}:probe:{user}"))
            .arg(1)
            .query_async(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{user} SET in its prefix: {e}"));
        let mut denied = Vec::new();
        for args in [
            vec!["FLUSHALL"],
            vec!["FLUSHDB"],
            vec!["CONFIG", "SET", "appendonly", "no"],
            vec!["CONFIG", "GET", "requirepass"],
            vec!["KEYS", "*"],
            vec!["SET", "elsewhere:key", "1"],
            vec!["GET", "elsewhere:key"],
            vec!["ACL", "SETUSER", "intruder", "on", ">x", "+@all", "~*"],
            vec!["FUNCTION", "FLUSH"],
            vec!["FUNCTION", "DELETE", "flashsale"],
            vec!["EVAL", "return 1", "0"],
            vec!["REPLICAOF", "NO", "ONE"],
            vec!["SHUTDOWN", "NOSAVE"],
            vec!["MONITOR"],
            vec!["SUBSCRIBE", "anything"],
        ] {
            let mut cmd = redis::cmd(args[0]);
            for a in &args[1..] {
                cmd.arg(*a);
            }
            let r = cmd.query_async::<redis::Value>(&mut c).await;
            denied.push(args.join(" "));
            refused(r, &format!("{user}: {}", args.join(" ")));
        }
        assert_eq!(denied.len(), 15);
    }

    // The Sentinels' user may ask, not act.
    let sentinel = group.sentinel_port(0);
    let mut s = group
        .client_as(sentinel, &group.user_access("flashsale-watch", true))
        .get_multiplexed_async_connection()
        .await
        .expect("flashsale-watch on a Sentinel");
    let _: Value = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(group.master_name())
        .query_async::<redis::Value>(&mut s)
        .await
        .map(|_| Value::Null)
        .expect("SENTINEL MASTER");
    for args in [
        vec!["SENTINEL", "FAILOVER", group.master_name()],
        vec!["SENTINEL", "REMOVE", group.master_name()],
        vec!["SENTINEL", "SET", group.master_name(), "quorum", "1"],
        vec!["SENTINEL", "RESET", "*"],
    ] {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        refused(
            cmd.query_async::<redis::Value>(&mut s).await,
            &format!("flashsale-watch: {}", args.join(" ")),
        );
    }

    // No way in without TLS, without the client certificate, or with a
    // wrong password.
    let plain = Access {
        tls: None,
        ..group.user_access("flashsale-app", false)
    };
    assert!(
        connect(plain).await.is_err(),
        "plain TCP to a TLS-only node"
    );
    let mut no_cert = group.user_access("flashsale-app", false);
    let tls = no_cert.tls.clone().expect("tls");
    no_cert.tls = Some(Arc::new(flashsale::config::Tls {
        ca: tls.ca.clone(),
        client: None,
    }));
    let r = async {
        let mut c = connect(no_cert).await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    assert!(r.await.is_err(), "TLS without the client certificate");
    let wrong = Access {
        password: Some(flashsale::config::Secret::new("not-the-password")),
        ..group.user_access("flashsale-app", false)
    };
    let e = connect(wrong).await.expect_err("wrong password");
    assert!(
        e.to_string()
            .to_lowercase()
            .contains("authentication failed"),
        "{e}"
    );
}

/// A certificate and key made with `openssl` in `dir` (`name.crt`,
/// `name.key`), self-signed.
fn self_signed(dir: &std::path::Path, name: &str) -> (String, String) {
    let crt = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-days",
            "1",
            "-subj",
        ])
        .arg(format!("/CN={name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl is required (apt-get install -y openssl)");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        crt.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_user_settings_that_cannot_work_exit_78_naming_the_variable() {
    let dir = temp_dir("tls-settings");
    let (crt, key) = self_signed(&dir, "a");
    let (_, other_key) = self_signed(&dir, "b");
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello\n").expect("write");
    let not_pem = not_pem.to_string_lossy().into_owned();
    let missing = dir.join("missing.pem").to_string_lossy().into_owned();
    let worker = env!("CARGO_BIN_EXE_flashsale-worker");
    let base = [("FLASHSALE_REDIS_SENTINELS", "127.0.0.1:1")];
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![
                ("FLASHSALE_REDIS_TLS", "true"),
                ("FLASHSALE_REDIS_TLS_CA_FILE", &missing),
            ],
            "FLASHSALE_REDIS_TLS_CA_FILE",
        ),
        (
            vec![
                ("FLASHSALE_REDIS_TLS", "true"),
                ("FLASHSALE_REDIS_TLS_CA_FILE", &not_pem),
            ],
            "FLASHSALE_REDIS_TLS_CA_FILE",
        ),
        (
            vec![
                ("FLASHSALE_REDIS_TLS", "true"),
                ("FLASHSALE_REDIS_TLS_CERT_FILE", &crt),
            ],
            "FLASHSALE_REDIS_TLS_KEY_FILE",
        ),
        (
            vec![
                ("FLASHSALE_REDIS_TLS", "true"),
                ("FLASHSALE_REDIS_TLS_KEY_FILE", &key),
            ],
            "FLASHSALE_REDIS_TLS_CERT_FILE",
        ),
        (
            vec![
                ("FLASHSALE_REDIS_TLS", "true"),
                ("FLASHSALE_REDIS_TLS_CERT_FILE", &crt),
                ("FLASHSALE_REDIS_TLS_KEY_FILE", &other_key),
            ],
            "FLASHSALE_REDIS_TLS_KEY_FILE",
        ),
        (
            vec![
                ("FLASHSALE_REDIS_TLS", "true"),
                ("FLASHSALE_REDIS_TLS_CERT_FILE", &crt),
                ("FLASHSALE_REDIS_TLS_KEY_FILE", &not_pem),
            ],
            "FLASHSALE_REDIS_TLS_KEY_FILE",
        ),
        (
            vec![("FLASHSALE_REDIS_TLS", "yes please")],
            "FLASHSALE_REDIS_TLS",
        ),
        (
            vec![("FLASHSALE_REDIS_TLS_CA_FILE", &crt)],
            "FLASHSALE_REDIS_TLS_CA_FILE",
        ),
        (
            vec![("FLASHSALE_REDIS_USERNAME", "flashsale-app")],
            "FLASHSALE_REDIS_USERNAME",
        ),
        (
            vec![("FLASHSALE_SENTINEL_USERNAME", "flashsale-watch")],
            "FLASHSALE_SENTINEL_USERNAME",
        ),
        (
            vec![
                ("FLASHSALE_REDIS_USERNAME", ""),
                ("FLASHSALE_REDIS_PASSWORD", "pw"),
            ],
            "FLASHSALE_REDIS_USERNAME",
        ),
    ];
    for (env, var) in &cases {
        let mut all: Vec<(&str, &str)> = base.to_vec();
        all.extend(env.iter().copied());
        let text = assert_config_error(worker, &[], &all, var).await;
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    }
    // The URL form: TLS on a redis:// URL cannot work.
    assert_config_error(
        worker,
        &[],
        &[
            ("FLASHSALE_REDIS_URL", "redis://127.0.0.1:1"),
            ("FLASHSALE_REDIS_TLS", "true"),
        ],
        "FLASHSALE_REDIS_TLS",
    )
    .await;
    // serve and the operator's commands share the checks.
    let flashsale = env!("CARGO_BIN_EXE_flashsale");
    let env = [
        ("FLASHSALE_REDIS_SENTINELS", "127.0.0.1:1"),
        ("FLASHSALE_REDIS_TLS", "true"),
        ("FLASHSALE_REDIS_TLS_CERT_FILE", crt.as_str()),
        ("FLASHSALE_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
    ];
    assert_config_error(flashsale, &["serve"], &env, "FLASHSALE_REDIS_TLS_KEY_FILE").await;
    assert_config_error(
        flashsale,
        &["audit", "--sku", "x"],
        &env,
        "FLASHSALE_REDIS_TLS_KEY_FILE",
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `flashsale sale list` with only `env` (and PATH): exit code and output.
async fn sale_list(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args(["sale", "list"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run flashsale");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rediss_url_uses_the_ca_and_fails_clearly_on_a_plain_port() {
    // rediss:// to a node that speaks TLS: the CA and client certificate apply.
    let group = tls_acl_group().await;
    let files = group.tls_files().expect("tls");
    let master = group.master_port().await;
    let url = format!(
        "rediss://flashsale-worker:{}@127.0.0.1:{master}/",
        group.user_password("flashsale-worker")
    );
    let (ca, cert, key) = (
        files.ca.to_string_lossy().into_owned(),
        files.cert.to_string_lossy().into_owned(),
        files.key.to_string_lossy().into_owned(),
    );
    let tls_env = [
        ("FLASHSALE_REDIS_URL", url.as_str()),
        ("FLASHSALE_KEY_PREFIX", PREFIX),
        ("FLASHSALE_REDIS_TLS_CA_FILE", ca.as_str()),
        ("FLASHSALE_REDIS_TLS_CERT_FILE", cert.as_str()),
        ("FLASHSALE_REDIS_TLS_KEY_FILE", key.as_str()),
    ];
    let (code, text) = sale_list(&tls_env).await;
    assert_eq!(code, Some(0), "{text}");
    // Without the CA the node's certificate is not trusted: no start.
    let (code, text) = sale_list(&tls_env[..2]).await;
    assert_ne!(code, Some(0), "{text}");
    assert!(
        !text.contains(&group.user_password("flashsale-worker")),
        "{text}"
    );

    // rediss:// to a plain port: no start, and a line that says why.
    let plain = shared_group();
    let port = plain.master_port().await;
    let url = format!("rediss://:{}@127.0.0.1:{port}/", plain.password());
    let t = Instant::now();
    let (code, text) = sale_list(&[("FLASHSALE_REDIS_URL", url.as_str())]).await;
    assert_ne!(code, Some(0), "{text}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(!text.contains(plain.password()), "{text}");
    let lower = text.to_lowercase();
    assert!(
        lower.contains("tls") || lower.contains("handshake") || lower.contains("certificate"),
        "says it is TLS that failed: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_sells_and_confirms() {
    let cluster = RedisCluster::start(ClusterOptions {
        tls: true,
        ..ClusterOptions::default()
    })
    .await;
    let prefix = "tlsc";
    let opts = AppOptions {
        failover_wait: Duration::from_secs(12),
        ..AppOptions::default()
    };
    let mut redis = cluster_redis_settings(&cluster, prefix, &opts);
    redis.access = cluster.access();
    let app = TestApp::spawn_settings(prefix, serve_settings_on(redis, &opts)).await;
    let _worker = worker_command_on(|c| cluster_env(c, &cluster, prefix))
        .spawn()
        .expect("spawn flashsale-worker");
    // Sales on every shard (their hash tags spread them over the slots).
    let skus: Vec<String> = (0..6).map(|i| format!("tlsc-{i}")).collect();
    let mut promised = Vec::new();
    for sku in &skus {
        app.create_sale(sku, 5, 1, -5, 3600).await;
        for u in 0..3 {
            let (s, body) = app.purchase(&format!("{sku}-u{u}"), sku, 1, None).await;
            assert_eq!(s, 202, "{sku}: {body}");
            promised.push((
                sku.clone(),
                body["order_id"].as_str().expect("id").to_owned(),
            ));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for sku in &skus {
        loop {
            let a = app.audit(sku).await;
            assert_eq!(a["consistent"], true, "{a}");
            assert_eq!(a["sold"], 3, "{a}");
            if a["confirmed"] == 3 {
                break;
            }
            assert!(Instant::now() < deadline, "not confirmed over TLS: {a}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(promised.len(), 18);
    // TLS only: a plain connection to a node gets nowhere.
    let plain = Access {
        tls: None,
        ..cluster.access()
    };
    let port = cluster.nodes()[0];
    let r = async {
        let mut c = flashsale::redis::client("127.0.0.1", port, 0, &plain)?
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(3), r)
            .await
            .map_or(true, |r| r.is_err()),
        "plain TCP to a TLS-only cluster node"
    );
}
