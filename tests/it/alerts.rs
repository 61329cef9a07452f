//! Observability as an on-call engineer meets it: the alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`),
//! every alert has a summary, a description and a runbook anchor that
//! exists in deploy/README.md; a real `flashsale serve` and a real
//! `flashsale-worker` (with the ledger) after a small sale describe every
//! metric they expose (`# HELP` for every `# TYPE`), every metric name in
//! the source is in the catalog, and every metric the rules and the
//! Grafana dashboard use is in their scrapes; the worker's `/healthz` and
//! `/readyz` follow its master and its ledger.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use flashsale::config::Secret;
use flashsale::telemetry::catalog::{self, Kind, Process};
use flashsale_testkit::postgres::Postgres;
use flashsale_testkit::procs::redis_env;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::support::app::{
    ADMIN_TOKEN, AppOptions, JWT_SECRET, TestApp, shared_group, unique, worker_command,
};
use crate::support::redis_group::{GroupOptions, Node, RedisGroup};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const RULES: &str = "deploy/prometheus/flashsale.rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/tests";
const DASHBOARD: &str = "deploy/grafana/flashsale.json";

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{REPO}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs promtool; a missing promtool fails the test (scripts/setup.sh
/// promtool installs it).
fn promtool(args: &[&str]) -> String {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(REPO)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool {args:?}: {e} (install it: scripts/setup.sh promtool)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The `- alert:` blocks of the rules file: (name, block text).
fn alert_blocks(rules: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in rules.lines() {
        if let Some(name) = line.trim_start().strip_prefix("- alert:") {
            blocks.push((name.trim().to_owned(), String::new()));
        } else if line.trim_start().starts_with("- record:") {
            blocks.push((String::new(), String::new()));
        } else if let Some((_, text)) = blocks.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    blocks.retain(|(name, _)| !name.is_empty());
    blocks
}

/// Every `expr:` of the rules file (inline or a folded block), and every
/// recorded name.
fn rule_exprs(rules: &str) -> (Vec<String>, BTreeSet<String>) {
    let lines: Vec<&str> = rules.lines().collect();
    let mut exprs = Vec::new();
    let mut recorded = BTreeSet::new();
    let indent = |l: &str| l.len() - l.trim_start().len();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if let Some(r) = t.strip_prefix("- record:") {
            recorded.insert(r.trim().to_owned());
        }
        let Some(rest) = t.strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if [">", ">-", "|", "|-"].contains(&rest) {
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
                .map(|l| l.trim())
                .collect();
            exprs.push(block.join(" "));
        } else {
            exprs.push(rest.trim_matches('\'').trim_matches('"').to_owned());
        }
    }
    (exprs, recorded)
}

/// The metric names a PromQL expression reads: identifiers that are not
/// functions, keywords, label names (in `{…}` or after `by`/`without`/…),
/// durations, numbers or Grafana variables.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    // Drop string literals, label matchers and ranges.
    let mut s = String::new();
    let (mut braces, mut brackets, mut in_str) = (0, 0, false);
    for c in expr.chars() {
        match c {
            '"' => in_str = !in_str,
            _ if in_str => {}
            '{' => braces += 1,
            '}' => braces -= 1,
            '[' => brackets += 1,
            ']' => brackets -= 1,
            _ if braces > 0 || brackets > 0 => {}
            _ => s.push(c),
        }
        if matches!(c, '}' | ']') && braces == 0 && brackets == 0 {
            s.push(' ');
        }
    }
    let chars: Vec<char> = s.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '$';
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        if !ident(chars[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && ident(chars[i]) {
            i += 1;
        }
        let tok: String = chars[start..i].iter().collect();
        let mut j = i;
        while j < chars.len() && chars[j] == ' ' {
            j += 1;
        }
        let call = chars.get(j) == Some(&'(');
        if [
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
        ]
        .contains(&tok.as_str())
        {
            // Its label list.
            if call {
                while j < chars.len() && chars[j] != ')' {
                    j += 1;
                }
                i = j;
            }
            continue;
        }
        let aggregation = [
            "sum",
            "min",
            "max",
            "avg",
            "group",
            "stddev",
            "stdvar",
            "count",
            "count_values",
            "bottomk",
            "topk",
            "quantile",
        ];
        if call
            || aggregation.contains(&tok.as_str())
            || ["and", "or", "unless", "bool", "offset"].contains(&tok.as_str())
            || tok.starts_with('$')
            || tok.starts_with(|c: char| c.is_ascii_digit())
        {
            continue;
        }
        names.insert(tok);
    }
    names
}

/// Metric names of a Prometheus text exposition (series lines).
fn scraped_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// `# TYPE` names without a `# HELP` line.
fn undescribed(text: &str) -> Vec<String> {
    let helped: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .filter(|n| !helped.contains(n))
        .map(str::to_owned)
        .collect()
}

/// Metric names recorded through the `metrics` macros in `src/`.
fn names_in_source() -> BTreeSet<String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read src") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&std::path::Path::new(REPO).join("src"), &mut files);
    let mut names = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read source");
        for mac in ["counter!(", "gauge!(", "histogram!("] {
            for (i, _) in text.match_indices(mac) {
                let rest = text[i + mac.len()..].trim_start();
                if let Some(lit) = rest.strip_prefix('"')
                    && let Some(end) = lit.find('"')
                {
                    names.insert(lit[..end].to_owned());
                }
            }
        }
    }
    names
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// GET `url`: (status, body); status 0 when nothing answers.
async fn get(http: &reqwest::Client, url: &str) -> (u16, String) {
    match http.get(url).send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

/// Polls `url` until it answers `status` (returns the body) or panics
/// after `timeout`.
async fn until_status(http: &reqwest::Client, url: &str, status: u16, timeout: Duration) -> String {
    let t = Instant::now();
    loop {
        let (s, body) = get(http, url).await;
        if s == status {
            return body;
        }
        assert!(
            t.elapsed() < timeout,
            "{url}: {status} expected within {timeout:?}, last {s} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A real `flashsale serve` on the group, on a free port; killed on drop.
fn spawn_serve(group: &RedisGroup, prefix: &str, port: u16) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashsale"));
    redis_env(&mut cmd, group, prefix)
        .arg("serve")
        .current_dir(REPO)
        .env("FLASHSALE_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLASHSALE_JWT_SECRET", JWT_SECRET)
        .env("FLASHSALE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd.spawn().expect("spawn flashsale serve")
}

#[test]
fn the_rules_pass_promtool_and_every_alert_has_a_runbook_section() {
    promtool(&["check", "rules", RULES]);
    let mut tests: Vec<String> = std::fs::read_dir(format!("{REPO}/{RULE_TESTS}"))
        .expect("rule tests")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .map(|p| p.strip_prefix(REPO).expect("in repo").display().to_string())
        .collect();
    tests.sort();
    assert!(!tests.is_empty(), "no promtool tests in {RULE_TESTS}");
    let mut args = vec!["test", "rules"];
    args.extend(tests.iter().map(String::as_str));
    promtool(&args);

    let rules = read(RULES);
    let readme = read("deploy/README.md");
    // GitHub's anchors of the headings.
    let anchors: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| {
            h.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect();
    let blocks = alert_blocks(&rules);
    assert!(blocks.len() >= 10, "alerts: {:?}", blocks.len());
    let tests_text: String = tests.iter().map(|t| read(t)).collect();
    for (name, block) in &blocks {
        for field in ["summary:", "description:", "runbook:", "severity:"] {
            assert!(block.contains(field), "{name} has no {field}");
        }
        let runbook = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook:"))
            .expect("runbook")
            .trim()
            .trim_matches('"');
        let anchor = runbook
            .strip_prefix("deploy/README.md#")
            .unwrap_or_else(|| panic!("{name}: runbook {runbook} is not in deploy/README.md"));
        assert!(
            anchors.contains(anchor),
            "{name}: deploy/README.md has no section #{anchor}"
        );
        assert!(
            tests_text.contains(&format!("alertname: {name}")),
            "{name} has no promtool test"
        );
    }
}

/// A small sale through a real server and a real worker with the ledger;
/// their scrapes describe every metric and hold every metric the rules
/// and the dashboard use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_is_described_and_the_rules_and_dashboard_use_real_ones() {
    let group = shared_group();
    let pg = Postgres::init().await;
    let prefix = unique("obs");
    let http = reqwest::Client::new();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _serve = spawn_serve(group, &prefix, port);
    let wport = free_port();
    // Reclaims after 300 ms and dead-letters at the second delivery.
    let _worker = worker_command(group, &prefix)
        .env("FLASHSALE_LEDGER_URL", pg.url())
        .args(["--metrics", &format!("127.0.0.1:{wport}")])
        .args(["--claim-idle-ms", "300", "--max-deliveries", "2"])
        .spawn()
        .expect("spawn flashsale-worker");
    let worker = format!("http://127.0.0.1:{wport}");
    until_status(
        &http,
        &format!("{base}/readyz"),
        200,
        Duration::from_secs(30),
    )
    .await;
    until_status(
        &http,
        &format!("{worker}/readyz"),
        200,
        Duration::from_secs(30),
    )
    .await;

    // The sale: 5 units, 3 shoppers.
    let sku = format!("{prefix}-m");
    let now = time::OffsetDateTime::now_utc();
    let fmt = &time::format_description::well_known::Rfc3339;
    let r = http
        .post(format!("{base}/admin/sales"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({
            "sku": sku, "name": "Metered", "description": "", "price_cents": 100, "stock": 5,
            "starts_at": (now - time::Duration::seconds(5)).format(fmt).expect("fmt"),
            "ends_at": (now + time::Duration::seconds(3600)).format(fmt).expect("fmt"),
            "per_user_limit": 1
        }))
        .send()
        .await
        .expect("create sale");
    assert_eq!(
        r.status().as_u16(),
        201,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let mut orders = Vec::new();
    for user in ["m1", "m2", "m3"] {
        let token = flashsale::web::auth::mint(&Secret::new(JWT_SECRET), user, 3600).expect("mint");
        let r = http
            .post(format!("{base}/api/sales/{sku}/purchase"))
            .bearer_auth(&token)
            .json(&json!({"qty": 1}))
            .send()
            .await
            .expect("purchase");
        assert_eq!(r.status().as_u16(), 202);
        let body: Value = r.json().await.expect("json");
        orders.push((token, body["order_id"].as_str().expect("id").to_owned()));
    }
    for (token, id) in &orders {
        let t = Instant::now();
        loop {
            let r = http
                .get(format!("{base}/api/orders/{id}"))
                .bearer_auth(token)
                .send()
                .await
                .expect("order");
            let body: Value = r.json().await.expect("json");
            if body["status"] == "confirmed" {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "{id}: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // A poison entry (its order does not exist) ends in the dead letters,
    // and the probe (every 5 s) counts it there; nothing else waits.
    let keys = flashsale::redis::Keys::new(prefix.clone());
    let mut conn = group.client(group.master_port().await).await;
    let _: String = redis::cmd("XADD")
        .arg(keys.stream(&sku))
        .arg("*")
        .arg("order_id")
        .arg("no-such-order")
        .arg("sku")
        .arg(&sku)
        .arg("user_id")
        .arg("nobody")
        .arg("qty")
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("xadd");
    let series = |name: &str| format!("{name}{{shard=\"0\"}}");
    let t = Instant::now();
    let worker_text = loop {
        let (s, text) = get(&http, &format!("{worker}/metrics")).await;
        assert_eq!(s, 200);
        let value = |name: &str| flashsale_testkit::metrics::metric_value(&text, &series(name));
        if value("flashsale_worker_dead_letters") == Some(1.0)
            && value("flashsale_worker_lag") == Some(0.0)
            && value("flashsale_worker_oldest_entry_age_seconds") == Some(0.0)
        {
            break text;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the probe never saw one dead letter and nothing waiting: {:?} {:?} {:?}",
            value("flashsale_worker_dead_letters"),
            value("flashsale_worker_lag"),
            value("flashsale_worker_oldest_entry_age_seconds")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (s, serve_text) = get(&http, &format!("{base}/metrics")).await;
    assert_eq!(s, 200);

    for (who, text) in [("serve", &serve_text), ("worker", &worker_text)] {
        let missing = undescribed(text);
        assert!(missing.is_empty(), "{who}: no # HELP for {missing:?}");
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.lines().any(|l| l.starts_with("flashsale_build_info{")
                && l.contains(&format!("version=\"{version}\""))
                && l.contains("commit=\"")
                && l.ends_with(" 1")),
            "{who}: flashsale_build_info"
        );
        for p in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(scraped_names(text).contains(p), "{who}: {p}");
        }
    }
    assert!(
        flashsale_testkit::metrics::counter_sum(&worker_text, "flashsale_worker_processed_total")
            .unwrap_or(0.0)
            >= 3.0
    );
    assert_eq!(
        flashsale_testkit::metrics::metric_value(
            &worker_text,
            "flashsale_redis_master_up{shard=\"0\"}"
        ),
        Some(1.0),
        "{worker_text}"
    );

    // Every name in the source is in the catalog, and every unlabelled
    // counter and histogram of the catalog is in its process's scrape.
    let in_source = names_in_source();
    assert!(in_source.len() >= 30, "{in_source:?}");
    let uncatalogued: Vec<&String> = in_source
        .iter()
        .filter(|n| catalog::find(n).is_none())
        .collect();
    assert!(
        uncatalogued.is_empty(),
        "metrics missing from src/telemetry/catalog.rs: {uncatalogued:?}"
    );
    let serve_names = scraped_names(&serve_text);
    let worker_names = scraped_names(&worker_text);
    for m in catalog::METRICS {
        let series = match m.kind {
            Kind::Histogram => format!("{}_bucket", m.name),
            _ => m.name.to_owned(),
        };
        if m.labelled || m.kind == Kind::Gauge {
            continue;
        }
        if matches!(m.process, Process::Serve | Process::Both) {
            assert!(serve_names.contains(&series), "serve lacks {series}");
        }
        if matches!(m.process, Process::Worker | Process::Both) {
            assert!(worker_names.contains(&series), "worker lacks {series}");
        }
    }

    // Every metric of the rules and the dashboard exists in a scrape.
    let scraped: BTreeSet<String> = serve_names.union(&worker_names).cloned().collect();
    let (mut exprs, recorded) = rule_exprs(&read(RULES));
    assert!(exprs.len() >= 15, "{exprs:?}");
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    for p in panels {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        for t in p["targets"].as_array().expect("targets") {
            exprs.push(t["expr"].as_str().expect("expr").to_owned());
        }
    }
    let mut used = BTreeSet::new();
    for e in &exprs {
        let names = promql_metrics(e);
        assert!(!names.is_empty(), "no metric in {e}");
        used.extend(names);
    }
    let unknown: Vec<&String> = used
        .iter()
        .filter(|n| *n != "up" && !recorded.contains(*n) && !scraped.contains(*n))
        .collect();
    assert!(
        unknown.is_empty(),
        "the rules or the dashboard use metrics no process exposes: {unknown:?}"
    );
    for want in [
        "flashsale_worker_oldest_entry_age_seconds",
        "flashsale_worker_dead_letters",
        "flashsale_redis_used_memory_bytes",
        "flashsale_wait_shortfalls_total",
        "flashsale_ledger_up",
        "process_cpu_seconds_total",
    ] {
        assert!(used.contains(want), "nothing watches {want}");
    }
}

#[test]
fn promql_names_are_read_as_metric_names_only() {
    let names = promql_metrics(
        "histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{route=\"/x/{sku}\"}[$__rate_interval]))) / max by (shard) (b > 0) and on (x) c:rec",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["a_bucket", "b", "c:rec"]
    );
}

/// The worker's health endpoints through a stopped master and a stopped
/// ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_readiness_follows_the_master_and_the_ledger() {
    let group = RedisGroup::start(GroupOptions::default()).await;
    let mut pg = Postgres::init().await;
    let http = reqwest::Client::new();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let prefix = unique("rdy");
    let _worker = worker_command(&group, &prefix)
        .env("FLASHSALE_LEDGER_URL", pg.url())
        .args(["--metrics", &format!("127.0.0.1:{port}")])
        .spawn()
        .expect("spawn flashsale-worker");
    let ready = format!("{base}/readyz");
    let live = format!("{base}/healthz");
    until_status(&http, &ready, 200, Duration::from_secs(30)).await;
    assert_eq!(get(&http, &live).await.0, 200);

    // The master stopped: not ready, still alive; the probe says so.
    let master = group.master_index().await;
    group.sigstop(Node::Redis(master));
    let body = until_status(&http, &ready, 503, Duration::from_secs(10)).await;
    let v: Value = serde_json::from_str(&body).expect("JSON error body");
    assert_eq!(v["error"], "unavailable", "{body}");
    assert!(v["message"].is_string(), "{body}");
    assert_eq!(get(&http, &live).await.0, 200);
    let t = Instant::now();
    loop {
        let (_, m) = get(&http, &format!("{base}/metrics")).await;
        if flashsale_testkit::metrics::metric_value(&m, "flashsale_redis_master_up{shard=\"0\"}")
            == Some(0.0)
        {
            break;
        }
        // Unless the Sentinels promoted a replica meanwhile.
        if get(&http, &ready).await.0 == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "master_up never 0");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    group.sigcont(Node::Redis(master));
    until_status(&http, &ready, 200, Duration::from_secs(60)).await;
    group.wait_converged(Duration::from_secs(60)).await;

    // The ledger stopped: not ready, and orders bought meanwhile wait
    // (the backlog and its age grow); back: ready, nothing waits.
    let app = TestApp::spawn_with(&group, &prefix, AppOptions::default()).await;
    app.create_sale("rdy", 100, 1, -5, 3600).await;
    pg.stop().await;
    let body = until_status(&http, &ready, 503, Duration::from_secs(10)).await;
    assert!(body.contains("\"unavailable\""), "{body}");
    assert!(!body.contains(pg.password()), "{body}");
    assert_eq!(get(&http, &live).await.0, 200);
    for i in 0..5 {
        // A replica still catching up after the stop answers 503 for a
        // moment; a retry finds the order made (409) or makes it (202).
        let t = Instant::now();
        loop {
            let (status, body) = app.purchase(&format!("u{i}"), "rdy", 1, None).await;
            if status == 202 || status == 409 {
                break;
            }
            assert!(
                status == 503 && t.elapsed() < Duration::from_secs(30),
                "{status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let backlog = |text: &str| {
        let v = |name: &str| {
            flashsale_testkit::metrics::metric_value(text, &format!("{name}{{shard=\"0\"}}"))
        };
        (
            v("flashsale_worker_lag"),
            v("flashsale_worker_oldest_entry_age_seconds"),
        )
    };
    let t = Instant::now();
    loop {
        let (_, m) = get(&http, &format!("{base}/metrics")).await;
        if let (Some(lag), Some(age)) = backlog(&m)
            && lag >= 5.0
            && age >= 2.0
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the backlog never showed: {:?}",
            backlog(&m)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pg.start().await;
    until_status(&http, &ready, 200, Duration::from_secs(30)).await;
    let t = Instant::now();
    loop {
        let (_, m) = get(&http, &format!("{base}/metrics")).await;
        if backlog(&m) == (Some(0.0), Some(0.0)) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the backlog never drained: {:?}",
            backlog(&m)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    app.stop().await;
}

/// On a Redis Cluster the worker's probe reports every shard, labelled by
/// the lowest slot it owns, the same in every worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_labels_each_cluster_shard_by_its_lowest_slot() {
    use crate::support::cluster::{cluster_worker_command, shared_cluster};
    let cluster = shared_cluster();
    let prefix = unique("pc");
    let http = reqwest::Client::new();
    let ports = [free_port(), free_port()];
    let _workers: Vec<Child> = ports
        .iter()
        .map(|p| {
            cluster_worker_command(cluster, &prefix)
                .args(["--metrics", &format!("127.0.0.1:{p}")])
                .spawn()
                .expect("spawn flashsale-worker")
        })
        .collect();
    let want: BTreeSet<String> = cluster
        .shards()
        .await
        .iter()
        .filter_map(|s| s.slots.iter().map(|&(lo, _)| lo).min())
        .map(|slot| format!("flashsale_redis_master_up{{shard=\"{slot}\"}} 1"))
        .collect();
    assert!(want.len() >= 3, "{want:?}");
    for port in ports {
        let url = format!("http://127.0.0.1:{port}/metrics");
        let t = Instant::now();
        loop {
            let (_, text) = get(&http, &url).await;
            let got: BTreeSet<String> = text
                .lines()
                .filter(|l| l.starts_with("flashsale_redis_master_up{"))
                .map(str::to_owned)
                .collect();
            if got == want {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "worker {port}: {got:?}, expected {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
