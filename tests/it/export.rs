//! The operator's side of the order ledger, against the shared Sentinel
//! group and a real PostgreSQL per test (the test kit's): orders bought
//! through the app and recorded by a worker with the ledger are exported
//! by `flashsale orders export` (CSV and JSON lines, to stdout and to a
//! file: every order once, the documented columns); `flashsale audit` with
//! the ledger finds them consistent, then names the orders of a deleted
//! ledger row, a changed status and a row Redis does not have (exit 3);
//! `flashsale sale purge` is refused (`not_in_ledger`) while a recorded
//! order is missing from the ledger, goes ahead once it is back, and the
//! audit then says the sale was purged; with a payment window, paid and
//! cancelled orders are compared and exported with their end, a changed
//! amount is named and orders still waiting for their payment hold a purge
//! back; without the URL, exit 78.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use flashsale::config::Secret;
use flashsale::ledger::{Ledger, LedgerOrder, LedgerSettings, NewOrder, Record};
use flashsale_testkit::postgres::Postgres;
use flashsale_testkit::procs::redis_env;
use serde_json::Value;

use crate::support::app::{
    AppOptions, TestApp, assert_config_error, shared_group, temp_dir, unconfirmed_after,
    worker_command,
};

const FLASHSALE: &str = env!("CARGO_BIN_EXE_flashsale");

/// What one run of `flashsale` gave: exit code, stdout, stderr.
struct Run {
    code: Option<i32>,
    out: String,
    err: String,
}

/// `flashsale ARGS` against the shared group on `prefix`, with the ledger
/// at `ledger_url` when given (and without it otherwise, whatever this
/// process's environment says).
async fn flashsale(prefix: &str, ledger_url: Option<&str>, args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(FLASHSALE);
    redis_env(&mut cmd, shared_group(), prefix)
        .args(args)
        .env_remove("FLASHSALE_REDIS_URL")
        .env_remove("FLASHSALE_LEDGER_URL")
        .env_remove("FLASHSALE_LEDGER_URL_FILE")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    if let Some(url) = ledger_url {
        cmd.env("FLASHSALE_LEDGER_URL", url);
    }
    let out = cmd.output().await.expect("run flashsale");
    Run {
        code: out.status.code(),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The one JSON line `flashsale audit --sku` prints.
async fn audit(prefix: &str, url: &str, sku: &str) -> (Option<i32>, Value) {
    let run = flashsale(prefix, Some(url), &["audit", "--sku", sku]).await;
    let v = serde_json::from_str(run.out.trim())
        .unwrap_or_else(|e| panic!("audit output: {e}: {} / {}", run.out, run.err));
    (run.code, v)
}

async fn ledger(pg: &Postgres) -> Ledger {
    let settings = LedgerSettings::parse(&Secret::new(pg.url())).expect("the kit's URL");
    Ledger::connect(&settings, "export tests")
        .await
        .expect("connect")
}

/// Runs SQL on the ledger's database directly (the differences a test
/// makes on purpose).
async fn sql(pg: &Postgres, statement: &str, order_id: &str) -> u64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&pg.url())
        .await
        .expect("connect");
    let done = sqlx::query(statement)
        .bind(order_id)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
    done.rows_affected()
}

/// A sale of `orders` orders (one or two units each, every shopper once)
/// bought through the app and recorded by a worker with the ledger; the
/// order ids with their (user, qty).
async fn a_recorded_sale(
    app: &Arc<TestApp>,
    sku: &str,
    orders: usize,
) -> BTreeMap<String, (String, i64)> {
    app.create_sale(sku, 1000, 2, -5, 3600).await;
    let tasks: Vec<_> = (0..orders)
        .map(|i| {
            let (app, sku) = (app.clone(), sku.to_owned());
            let (user, qty) = (format!("ex{i}"), 1 + (i % 2) as i64);
            tokio::spawn(async move {
                let (status, body) = app.purchase(&user, &sku, qty, None).await;
                assert_eq!(status, 202, "{user}: {body}");
                let id = body["order_id"].as_str().expect("order id").to_owned();
                (id, (user, qty))
            })
        })
        .collect();
    let mut bought = BTreeMap::new();
    for t in tasks {
        let (id, who) = t.await.expect("purchase");
        bought.insert(id, who);
    }
    let ids: Vec<String> = bought.keys().cloned().collect();
    let unconfirmed =
        unconfirmed_after(shared_group(), &app.prefix, &ids, Duration::from_secs(20)).await;
    assert!(unconfirmed.is_empty(), "not confirmed: {unconfirmed:?}");
    bought
}

fn rfc3339(s: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("not RFC 3339: {s:?}: {e}"))
}

/// Parses a CSV export: its header and its records as column → value.
fn parse_csv(text: &str) -> (Vec<String>, Vec<BTreeMap<String, String>>) {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = r
        .headers()
        .expect("header")
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = r
        .records()
        .map(|rec| {
            let rec = rec.expect("a CSV record");
            assert_eq!(rec.len(), header.len(), "{rec:?}");
            header
                .iter()
                .cloned()
                .zip(rec.iter().map(str::to_owned))
                .collect()
        })
        .collect();
    (header, rows)
}

/// Asserts an export holds exactly `bought`, once each, as the worker
/// recorded them (confirmed, no payment step); `value` reads one column of
/// one row as text, `None` for an absent value.
fn assert_export<R>(
    what: &str,
    sku: &str,
    rows: &[R],
    bought: &BTreeMap<String, (String, i64)>,
    value: impl Fn(&R, &str) -> Option<String>,
) {
    let ids: Vec<String> = rows
        .iter()
        .map(|r| value(r, "order_id").expect("order_id"))
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{what}: an order twice");
    let expected: BTreeSet<&String> = bought.keys().collect();
    assert_eq!(unique, expected, "{what}: not the orders bought");
    let mut last = None;
    for r in rows {
        let id = value(r, "order_id").expect("order_id");
        let (user, qty) = &bought[&id];
        assert_eq!(value(r, "sku").as_deref(), Some(sku), "{what} {id}");
        assert_eq!(value(r, "user_id").as_ref(), Some(user), "{what} {id}");
        assert_eq!(value(r, "qty"), Some(qty.to_string()), "{what} {id}");
        assert_eq!(value(r, "status").as_deref(), Some("confirmed"), "{what}");
        let created = rfc3339(&value(r, "created_at").expect("created_at"));
        let confirmed = rfc3339(&value(r, "confirmed_at").expect("confirmed_at"));
        assert!(confirmed >= created, "{what} {id}");
        for absent in [
            "pay_by",
            "paid_at",
            "payment_id",
            "expired_at",
            "cancelled_at",
        ] {
            assert_eq!(value(r, absent), None, "{what} {id}: {absent}");
        }
        // By purchase time.
        assert!(last.is_none_or(|t| t <= created), "{what}: out of order");
        last = Some(created);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_exported_audited_against_the_ledger_and_purged_only_when_all_are_there() {
    let group = shared_group();
    let pg = Postgres::init().await;
    let url = pg.url();
    let app = Arc::new(TestApp::spawn(group, AppOptions::default()).await);
    let prefix = app.prefix.clone();
    let sku = "ex-sale";
    let mut worker = worker_command(group, &prefix)
        .env("FLASHSALE_LEDGER_URL", &url)
        .spawn()
        .expect("spawn flashsale-worker");
    let bought = a_recorded_sale(&app, sku, 40).await;
    let columns: Vec<String> = LedgerOrder::EXPORT_COLUMNS
        .iter()
        .map(|c| c.to_string())
        .collect();

    // CSV on stdout: a header of the documented columns, every order once.
    let csv_run = flashsale(
        &prefix,
        Some(&url),
        &["orders", "export", "--sku", sku, "--format", "csv"],
    )
    .await;
    assert_eq!(csv_run.code, Some(0), "{}", csv_run.err);
    let (header, rows) = parse_csv(&csv_run.out);
    assert_eq!(header, columns);
    assert_export("csv", sku, &rows, &bought, |r, c| {
        Some(r[c].clone()).filter(|v| !v.is_empty())
    });
    // No progress bar outside a terminal: stderr is the one summary line.
    assert_eq!(csv_run.err.lines().count(), 1, "{}", csv_run.err);
    assert!(csv_run.err.contains("40 orders"), "{}", csv_run.err);

    // The same to a file; JSON lines to another.
    let dir = temp_dir("export");
    let csv_file = dir.join("orders.csv");
    let jsonl_file = dir.join("orders.jsonl");
    for (format, file) in [("csv", &csv_file), ("jsonl", &jsonl_file)] {
        let run = flashsale(
            &prefix,
            Some(&url),
            &[
                "orders",
                "export",
                "--sku",
                sku,
                "--format",
                format,
                "--out",
                file.to_str().expect("path"),
            ],
        )
        .await;
        assert_eq!(run.code, Some(0), "{format}: {}", run.err);
        assert!(
            run.out.is_empty(),
            "{format}: nothing on stdout: {}",
            run.out
        );
    }
    assert_eq!(
        std::fs::read_to_string(&csv_file).expect("csv file"),
        csv_run.out,
        "the file holds what stdout got"
    );
    let jsonl = std::fs::read_to_string(&jsonl_file).expect("jsonl file");
    let lines: Vec<Value> = jsonl
        .lines()
        .map(|l| {
            // Every key, in the column order.
            let mut at = 0;
            for c in &columns {
                let i = l
                    .find(&format!("\"{c}\":"))
                    .unwrap_or_else(|| panic!("{c} in {l}"));
                assert!(i >= at, "{c} out of order: {l}");
                at = i;
            }
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .collect();
    for l in &lines {
        assert_eq!(l.as_object().expect("object").len(), columns.len(), "{l}");
        assert!(l["qty"].is_i64() && l["paid_at"].is_null(), "{l}");
    }
    assert_export("jsonl", sku, &lines, &bought, |l, c| match &l[c] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    });
    // Both formats say the same of every order.
    for (row, line) in rows.iter().zip(&lines) {
        for c in &columns {
            let j = match &line[c] {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(row[c], j, "{c}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    // A sale the ledger has no order of: a header, nothing else, exit 0
    // and a note.
    let run = flashsale(
        &prefix,
        Some(&url),
        &["orders", "export", "--sku", "ex-none", "--format", "csv"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.err);
    assert_eq!(run.out.trim_end(), columns.join(","));
    assert!(run.err.contains("no order of ex-none"), "{}", run.err);

    // The audit with the ledger: consistent.
    let (code, v) = audit(&prefix, &url, sku).await;
    assert_eq!(code, Some(0), "{v}");
    let l = &v["ledger"];
    assert_eq!(
        (l["orders"].as_u64(), l["recorded"].as_u64()),
        (Some(40), Some(40)),
        "{v}"
    );
    assert_eq!(
        (l["pending"].as_u64(), l["consistent"].as_bool()),
        (Some(0), Some(true)),
        "{v}"
    );
    assert_eq!(v["audit"]["consistent"], true, "{v}");

    // Differences made on purpose: a row deleted, a status changed, a row
    // of an order Redis never had.
    let ids: Vec<&String> = bought.keys().collect();
    let (gone, changed) = (ids[3].clone(), ids[11].clone());
    let gone_row: Value = lines
        .iter()
        .find(|l| l["order_id"] == gone.as_str())
        .expect("its export line")
        .clone();
    assert_eq!(
        sql(&pg, "DELETE FROM orders WHERE order_id = $1", &gone).await,
        1
    );
    assert_eq!(
        sql(
            &pg,
            "UPDATE orders SET status = 'queued' WHERE order_id = $1",
            &changed
        )
        .await,
        1
    );
    let ledger = ledger(&pg).await;
    let stranger = format!("{sku}.{}", uuid::Uuid::new_v4().simple());
    let new_order = |order_id: &str, user: &str, qty: i32, created_at| {
        Record::NewOrder(NewOrder {
            order_id: order_id.to_owned(),
            sku: sku.to_owned(),
            user_id: user.to_owned(),
            qty,
            created_at,
            amount_cents: None,
            pay_by: None,
        })
    };
    ledger
        .record(&[new_order(
            &stranger,
            "nobody",
            1,
            time::OffsetDateTime::now_utc(),
        )])
        .await
        .expect("record a stranger");

    let (code, v) = audit(&prefix, &url, sku).await;
    assert_eq!(code, Some(3), "{v}");
    let l = &v["ledger"];
    assert_eq!(l["consistent"], false, "{v}");
    assert_eq!(l["missing_in_ledger"], serde_json::json!([gone]), "{v}");
    assert_eq!(l["missing_in_redis"], serde_json::json!([stranger]), "{v}");
    assert_eq!(
        l["status_differs"],
        serde_json::json!([{"order_id": changed, "redis": "confirmed", "ledger": "queued"}]),
        "{v}"
    );
    assert_eq!(
        l["totals"],
        serde_json::json!({"missing_in_ledger": 1, "missing_in_redis": 1, "status_differs": 1,
                           "fields_differ": 0, "duplicated": 0, "unreadable": 0}),
        "{v}"
    );
    assert_eq!(l["orders"], 40, "39 of the sale's and the stranger: {v}");
    // The Redis counters themselves are fine.
    assert_eq!(v["audit"]["consistent"], true, "{v}");

    // The sale ends; a purge with the ledger is refused while a recorded
    // order is missing there, and changes nothing.
    let (status, body) = app
        .admin_post(&format!("/admin/sales/{sku}/end"), serde_json::json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let purge = ["sale", "purge", "--sku", sku, "--min-ended-s", "0", "--yes"];
    let run = flashsale(&prefix, Some(&url), &purge).await;
    assert_eq!(run.code, Some(1), "{} / {}", run.out, run.err);
    assert!(run.err.contains("not_in_ledger"), "{}", run.err);
    assert!(run.err.contains(&gone), "names the order: {}", run.err);
    assert!(run.err.contains(&changed), "names the order: {}", run.err);
    let (code, v) = audit(&prefix, &url, sku).await;
    assert_eq!(
        (code, v["ledger"]["recorded"].as_u64()),
        (Some(3), Some(40)),
        "{v}"
    );

    // The status put right: still refused, for the one missing order.
    sql(
        &pg,
        "UPDATE orders SET status = 'confirmed' WHERE order_id = $1",
        &changed,
    )
    .await;
    let run = flashsale(&prefix, Some(&url), &purge).await;
    assert_eq!(run.code, Some(1), "{}", run.err);
    assert!(
        run.err.contains("not_in_ledger") && run.err.contains(&gone),
        "{}",
        run.err
    );
    assert!(!run.err.contains(&changed), "{}", run.err);

    // The missing row back (as the export had it): the purge goes ahead;
    // the stranger, only in the ledger, holds nothing back.
    let (user, qty) = &bought[&gone];
    ledger
        .record(&[new_order(
            &gone,
            user,
            *qty as i32,
            rfc3339(gone_row["created_at"].as_str().expect("created_at")),
        )])
        .await
        .expect("record it again");
    let run = flashsale(&prefix, Some(&url), &purge).await;
    assert_eq!(run.code, Some(0), "{}", run.err);
    let purged: Value = serde_json::from_str(run.out.trim()).expect("purge output");
    assert_eq!(purged["orders"], 40, "{purged}");

    // Gone from Redis: the audit with the ledger says so (exit 0), and the
    // ledger still exports every order.
    let (code, v) = audit(&prefix, &url, sku).await;
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(
        (
            v["ledger"]["purged"].as_bool(),
            v["ledger"]["orders"].as_u64()
        ),
        (Some(true), Some(41)),
        "{v}"
    );
    let run = flashsale(
        &prefix,
        Some(&url),
        &["orders", "export", "--sku", sku, "--format", "csv"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.err);
    let (_, after) = parse_csv(&run.out);
    assert_eq!(after.len(), 41);
    // Without the ledger the sale is simply unknown.
    let run = flashsale(&prefix, None, &["audit", "--sku", sku]).await;
    assert_eq!(run.code, Some(1), "{}", run.err);

    ledger.close().await;
    let _ = worker.kill().await;
}

/// A purge with the ledger of a sale whose orders are not recorded yet (no
/// worker ran) is refused as `orders_pending` (an open one as
/// `not_ended`), before anything is deleted;
/// a ledger without its schema is refused with what to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_waits_for_orders_no_worker_recorded() {
    let group = shared_group();
    let pg = Postgres::init().await;
    let app = TestApp::spawn(group, AppOptions::default()).await;
    let sku = "ex-pending";
    app.create_sale(sku, 10, 1, -5, 3600).await;
    let (status, body) = app.purchase("exp1", sku, 1, None).await;
    assert_eq!(status, 202, "{body}");
    // Open still: refused as the purge itself refuses it.
    let run = flashsale(
        &app.prefix,
        Some(&pg.url()),
        &["sale", "purge", "--sku", sku, "--min-ended-s", "0", "--yes"],
    )
    .await;
    assert_eq!(run.code, Some(1), "{}", run.err);
    assert!(run.err.contains("not_ended"), "{}", run.err);
    let (status, body) = app
        .admin_post(&format!("/admin/sales/{sku}/end"), serde_json::json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let purge = ["sale", "purge", "--sku", sku, "--min-ended-s", "0", "--yes"];

    // A ledger whose schema was never applied: refused (1), saying how.
    let run = flashsale(&app.prefix, Some(&pg.url()), &purge).await;
    assert_eq!(run.code, Some(1), "{}", run.err);
    assert!(run.err.contains("flashsale ledger migrate"), "{}", run.err);
    let run = flashsale(
        &app.prefix,
        Some(&pg.url()),
        &["orders", "export", "--sku", sku, "--format", "csv"],
    )
    .await;
    assert_eq!(run.code, Some(1), "{}", run.err);
    assert!(run.err.contains("flashsale ledger migrate"), "{}", run.err);
    let run = flashsale(&app.prefix, Some(&pg.url()), &["ledger", "migrate"]).await;
    assert_eq!(run.code, Some(0), "{}", run.err);

    let run = flashsale(&app.prefix, Some(&pg.url()), &purge).await;
    assert_eq!(run.code, Some(1), "{}", run.err);
    assert!(run.err.contains("orders_pending"), "{}", run.err);
    // The audit: pending is no difference.
    let (code, v) = audit(&app.prefix, &pg.url(), sku).await;
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(
        (
            v["ledger"]["pending"].as_u64(),
            v["ledger"]["orders"].as_u64()
        ),
        (Some(1), Some(0)),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_needs_the_ledger_url_and_lists_its_exit_codes() {
    for args in [
        &["orders", "export", "--sku", "ex-x", "--format", "csv"][..],
        &[
            "orders",
            "export",
            "--sku",
            "ex-x",
            "--format",
            "jsonl",
            "--out",
            "/nonexistent/x",
        ][..],
    ] {
        assert_config_error(FLASHSALE, args, &[], "FLASHSALE_LEDGER_URL").await;
    }
    // A malformed URL: 78 too, and never shown.
    let text = assert_config_error(
        FLASHSALE,
        &["orders", "export", "--sku", "ex-x", "--format", "csv"],
        &[("FLASHSALE_LEDGER_URL", "mysql://fs:hunter2-pw@127.0.0.1/db")],
        "FLASHSALE_LEDGER_URL",
    )
    .await;
    assert!(!text.contains("hunter2"), "{text}");
    // Usage errors: 2.
    for args in [
        &["orders", "export", "--sku", "ex-x"][..],
        &["orders", "export", "--sku", "no/such", "--format", "csv"][..],
        &["orders", "export", "--sku", "ex-x", "--format", "xml"][..],
    ] {
        let out = tokio::process::Command::new(FLASHSALE)
            .args(args)
            .env("FLASHSALE_LEDGER_URL", "postgres://u:p@127.0.0.1:1/db")
            .output()
            .await
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    for cmd in [
        &["orders", "--help"][..],
        &["orders", "export", "--help"][..],
    ] {
        let out = tokio::process::Command::new(FLASHSALE)
            .args(cmd)
            .output()
            .await
            .expect("help");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Exit codes: 0") && help.contains("78"),
            "{cmd:?}: {help}"
        );
    }
}

const PAYMENT_TOKEN: &str = "export-payment-provider-0123456789";

/// Waits until the ledger holds `order_id` with `status`.
async fn ledger_reaches(ledger: &Ledger, order_id: &str, status: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let row = ledger.order(order_id).await.expect("read the ledger");
        if row.as_ref().is_some_and(|r| r.status.as_str() == status) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{order_id} is not {status} in the ledger: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With a payment window: orders paid and cancelled reach the ledger with
/// their end, and the audit with the ledger agrees (the amount compared
/// where the ledger holds one); the export carries the payment's columns;
/// a changed amount is named; a purge waits for the orders still waiting
/// for their payment (`not_in_ledger`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_and_cancelled_orders_are_compared_and_exported_with_their_end() {
    let group = shared_group();
    let pg = Postgres::init().await;
    let url = pg.url();
    let prefix = crate::support::app::unique("exp");
    let mut settings = crate::support::app::serve_settings(group, &prefix, &AppOptions::default());
    settings.payment_window = Duration::from_secs(600);
    settings.payment_token = Some(Secret::new(PAYMENT_TOKEN));
    let app = Arc::new(TestApp::spawn_settings(&prefix, settings).await);
    let sku = "ex-paid";
    let mut worker = worker_command(group, &prefix)
        .env("FLASHSALE_LEDGER_URL", &url)
        .spawn()
        .expect("spawn flashsale-worker");
    app.create_sale(sku, 50, 2, -5, 3600).await; // 19.99 a unit
    let mut ids = Vec::new();
    for i in 0..5 {
        let (status, body) = app.purchase(&format!("pp{i}"), sku, 1, None).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["order_id"].as_str().expect("order id").to_owned());
    }
    let unconfirmed = unconfirmed_after(group, &prefix, &ids, Duration::from_secs(20)).await;
    assert!(unconfirmed.is_empty(), "not confirmed: {unconfirmed:?}");

    // Two paid, one cancelled, two left waiting.
    for (i, id) in ids.iter().enumerate().take(2) {
        let r = app
            .http
            .post(app.url(&format!("/api/orders/{id}/payment")))
            .bearer_auth(PAYMENT_TOKEN)
            .json(&serde_json::json!({"payment_id": format!("pay-{i}"), "amount_cents": 1999}))
            .send()
            .await
            .expect("payment");
        assert_eq!(r.status().as_u16(), 200);
    }
    let r = app
        .http
        .post(app.url(&format!("/api/orders/{}/cancel", ids[2])))
        .bearer_auth(app.token("pp2"))
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status().as_u16(), 200);
    let ledger = ledger(&pg).await;
    ledger_reaches(&ledger, &ids[0], "paid").await;
    ledger_reaches(&ledger, &ids[1], "paid").await;
    ledger_reaches(&ledger, &ids[2], "cancelled").await;

    let (code, v) = audit(&prefix, &url, sku).await;
    assert_eq!(code, Some(0), "{v}");
    let l = &v["ledger"];
    assert_eq!(l["consistent"], true, "{v}");
    assert_eq!(
        (
            l["orders"].as_u64(),
            l["recorded"].as_u64(),
            l["awaiting_payment"].as_u64()
        ),
        (Some(5), Some(5), Some(2)),
        "{v}"
    );

    let run = flashsale(
        &prefix,
        Some(&url),
        &["orders", "export", "--sku", sku, "--format", "jsonl"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.err);
    let lines: BTreeMap<String, Value> = run
        .out
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            (v["order_id"].as_str().expect("order_id").to_owned(), v)
        })
        .collect();
    assert_eq!(lines.len(), 5);
    let paid = &lines[&ids[0]];
    assert_eq!(
        (&paid["status"], &paid["payment_id"], &paid["amount_cents"]),
        (
            &Value::from("paid"),
            &Value::from("pay-0"),
            &Value::from(1999)
        ),
        "{paid}"
    );
    rfc3339(paid["paid_at"].as_str().expect("paid_at"));
    let cancelled = &lines[&ids[2]];
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    rfc3339(cancelled["cancelled_at"].as_str().expect("cancelled_at"));
    assert!(cancelled["paid_at"].is_null(), "{cancelled}");
    assert_eq!(lines[&ids[4]]["status"], "confirmed");

    // Another amount in the ledger: named, exit 3.
    sql(
        &pg,
        "UPDATE orders SET amount_cents = 1000 WHERE order_id = $1",
        &ids[1],
    )
    .await;
    let (code, v) = audit(&prefix, &url, sku).await;
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(
        v["ledger"]["fields_differ"],
        serde_json::json!([{"order_id": ids[1], "redis": {"amount_cents": 1999},
                            "ledger": {"amount_cents": 1000}}]),
        "{v}"
    );
    sql(
        &pg,
        "UPDATE orders SET amount_cents = 1999 WHERE order_id = $1",
        &ids[1],
    )
    .await;

    // Ended, every order in the ledger as it stands: two still wait for
    // their payment, so their end is not known — no purge yet.
    let (status, body) = app
        .admin_post(&format!("/admin/sales/{sku}/end"), serde_json::json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let run = flashsale(
        &prefix,
        Some(&url),
        &["sale", "purge", "--sku", sku, "--min-ended-s", "0", "--yes"],
    )
    .await;
    assert_eq!(run.code, Some(1), "{}", run.err);
    assert!(
        run.err.contains("not_in_ledger") && run.err.contains("waiting for their payment"),
        "{}",
        run.err
    );
    ledger.close().await;
    let _ = worker.kill().await;
}
