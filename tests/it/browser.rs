//! The shopper's side: the askama pages with real data, `flashsale render`,
//! nginx (rendered from `deploy/nginx`) in front of two app instances, the
//! buy flow in headless Chromium (`tests/browser/e2e.mjs`), the development
//! payment (`POST /dev/pay/{order_id}`) and the payment step on the orders
//! page in Chromium (`tests/browser/payment.mjs`).
//!
//! Needs nginx, node (≥ 20), Debian's `chromium` and `npm ci --prefix
//! tests/browser` (run here when `node_modules` is missing and npm is
//! there). A missing tool FAILS the test, with the command that installs it.
//! Screenshots and logs go to `target/browser-artifacts/`.
//!
//! Every process started here (nginx, node with its Chromium, the worker) is
//! in its own process group, stopped by that group's id on drop — also while
//! a test panics — and by a watchdog if this test process dies first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::app::{
    AppOptions, TestApp, serve_settings, shared_group, temp_dir, unique, worker_command,
};
use crate::support::nginx::Nginx;
use crate::support::redis_group::RedisGroup;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

const INSTALL_HINT: &str = "install them with `scripts/setup.sh chromium node` (as root: Debian's \
     nginx and chromium; node >= 20 with npm) and `npm ci --prefix tests/browser`";

// ---------------------------------------------------------------- helpers --

/// `target/browser-artifacts/<name>/`, emptied.
pub(crate) fn artifacts(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("browser-artifacts")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

fn which(bin: &str) -> Option<PathBuf> {
    if bin.contains('/') {
        return Path::new(bin).is_file().then(|| PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

pub(crate) fn nginx_bin() -> PathBuf {
    which("nginx").unwrap_or_else(|| panic!("nginx is not installed; {INSTALL_HINT}"))
}

pub(crate) fn chromium_bin() -> PathBuf {
    let bin = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    which(&bin).unwrap_or_else(|| panic!("chromium ({bin}) is not installed; {INSTALL_HINT}"))
}

/// node, and `tests/browser/node_modules` (installed with `npm ci` if
/// missing; once per test process).
pub(crate) fn node_ready() -> PathBuf {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let node = which("node").unwrap_or_else(|| panic!("node is not installed; {INSTALL_HINT}"));
    let v = StdCommand::new(&node)
        .arg("--version")
        .output()
        .expect("node --version");
    let v = String::from_utf8_lossy(&v.stdout).trim().to_owned();
    let major: u32 = v
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "node {v} is too old (playwright-core needs ≥ 20); {INSTALL_HINT}"
    );
    let dir = Path::new(REPO).join("tests/browser");
    let _one = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if !dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        let npm = which("npm").unwrap_or_else(|| {
            panic!("tests/browser/node_modules is missing and npm is not installed; {INSTALL_HINT}")
        });
        let out = StdCommand::new(npm)
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .expect("npm ci");
        assert!(
            out.status.success(),
            "`npm ci --prefix tests/browser` failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    node
}

/// Sends `sig` to every process of group `pgid`.
fn kill_group(pgid: u32, sig: &str) {
    let _ = StdCommand::new("kill")
        .args(["-s", sig, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn group_alive(pgid: u32) -> bool {
    StdCommand::new("kill")
        .args(["-s", "0", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// TERM to the group, then KILL to whatever is left after `grace`.
fn stop_group(pgid: u32, grace: Duration) {
    kill_group(pgid, "TERM");
    let deadline = Instant::now() + grace;
    while group_alive(pgid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_group(pgid, "KILL");
}

/// Kills process group `pgid` if this test process dies before it does.
fn watchdog(pgid: u32) {
    let script = format!(
        "while kill -0 {me} 2>/dev/null && kill -0 -{pgid} 2>/dev/null; do sleep 1; done; \
         kill -0 {me} 2>/dev/null || kill -KILL -{pgid} 2>/dev/null",
        me = std::process::id()
    );
    let child = StdCommand::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("watchdog");
    // Not waited for: it ends by itself once the group or this process is gone.
    std::mem::forget(child);
}

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Creates a sale with a given name and window (seconds from now).
async fn sale(app: &TestApp, sku: &str, name: &str, stock: i64, start_in: i64, len: i64) {
    let now = time::OffsetDateTime::now_utc();
    let fmt = &time::format_description::well_known::Rfc3339;
    let at = |s: i64| (now + time::Duration::seconds(s)).format(fmt).expect("fmt");
    let (s, body) = app
        .admin_post(
            "/admin/sales",
            json!({"sku": sku, "name": name, "description": "Limited run. \"Quoted\" & <b>not bold</b>.",
                "price_cents": 4999, "stock": stock, "per_user_limit": 1,
                "starts_at": at(start_in), "ends_at": at(start_in + len)}),
        )
        .await;
    assert_eq!(s, 201, "create {sku}: {body}");
}

/// Creates a sale whose window opens at `starts_ms` (epoch ms).
async fn sale_at(app: &TestApp, sku: &str, name: &str, stock: i64, starts_ms: i64, len_s: i64) {
    let fmt = &time::format_description::well_known::Rfc3339;
    let at = |ms: i64| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .expect("time")
            .format(fmt)
            .expect("fmt")
    };
    let (s, body) = app
        .admin_post(
            "/admin/sales",
            json!({"sku": sku, "name": name, "description": "The e2e product.",
                "price_cents": 12900, "stock": stock, "per_user_limit": 1,
                "starts_at": at(starts_ms), "ends_at": at(starts_ms + len_s * 1000)}),
        )
        .await;
    assert_eq!(s, 201, "create {sku}: {body}");
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Runs `flashsale render --out DIR` (the binary) against the app's data.
fn render(group: &RedisGroup, prefix: &str, out: &Path) -> String {
    let o = StdCommand::new(env!("CARGO_BIN_EXE_flashsale"))
        .arg("render")
        .arg("--out")
        .arg(out)
        .env("FLASHSALE_REDIS_SENTINELS", group.sentinels_env())
        .env("FLASHSALE_REDIS_PASSWORD", group.password())
        .env("FLASHSALE_REDIS_MASTER_NAME", group.master_name())
        .env("FLASHSALE_KEY_PREFIX", prefix)
        .env("FLASHSALE_STATIC_DIR", Path::new(REPO).join("static"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run flashsale render");
    assert!(
        o.status.success(),
        "flashsale render failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) async fn get_text(
    c: &reqwest::Client,
    url: &str,
) -> (u16, HashMap<String, String>, String) {
    let r = c
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let s = r.status().as_u16();
    let h = r
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    (s, h, r.text().await.unwrap_or_default())
}

/// The `<script` tags of a page all load a file (the CSP allows no inline
/// script), and no `style=`/`<style` (nor inline style).
pub(crate) fn assert_no_inline_code(html: &str, what: &str) {
    for tag in html.split("<script").skip(1) {
        let head = &tag[..tag.find('>').expect("tag end")];
        assert!(
            head.contains("src=\"/static/"),
            "{what}: inline script: <script{head}>"
        );
    }
    assert!(!html.contains("<style"), "{what}: inline <style>");
    assert!(!html.contains(" style="), "{what}: inline style attribute");
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("//cdn"),
        "{what}: only local assets"
    );
}

// ------------------------------------------------------------------ nginx --

// ----------------------------------------------------------------- worker --

/// A `flashsale-worker` process, killed by process group on drop.
pub(crate) struct Worker {
    pgid: u32,
    child: Child,
}

impl Worker {
    pub(crate) fn spawn(group: &RedisGroup, prefix: &str) -> Worker {
        let child = worker_command(group, prefix)
            .process_group(0)
            .spawn()
            .expect("spawn flashsale-worker");
        let pgid = child.id().expect("worker pid");
        watchdog(pgid);
        Worker { pgid, child }
    }

    pub(crate) async fn stop(mut self) {
        kill_group(self.pgid, "TERM");
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        kill_group(self.pgid, "KILL");
    }
}

// ------------------------------------------------------------------- node --

/// `node tests/browser/<script>` (and the Chromium it launches), talking
/// JSON lines on stdin/stdout; its stderr goes to `e2e.log`.
pub(crate) struct E2e {
    pgid: u32,
    pub(crate) child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    log: PathBuf,
}

impl E2e {
    pub(crate) fn spawn(script: &str, base: &str, out: &Path) -> E2e {
        let node = node_ready();
        let chromium = chromium_bin();
        let log = out.join("e2e.log");
        let mut child = Command::new(node)
            .arg(Path::new(REPO).join("tests/browser").join(script))
            .current_dir(Path::new(REPO).join("tests/browser"))
            .env("E2E_BASE", base)
            .env("E2E_ARTIFACTS", out)
            .env("CHROMIUM", chromium)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("e2e.log"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node");
        let pgid = child.id().expect("node pid");
        watchdog(pgid);
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        E2e {
            pgid,
            child,
            lines,
            log,
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The next message; panics with the script's log on failure or timeout.
    pub(crate) async fn recv(&mut self, timeout: Duration) -> Value {
        let line = tokio::time::timeout(timeout, self.lines.next_line()).await;
        match line {
            Ok(Ok(Some(l))) => serde_json::from_str(&l)
                .unwrap_or_else(|e| panic!("e2e sent {l:?}: {e}\n{}", self.log())),
            Ok(Ok(None)) | Ok(Err(_)) => {
                let status = self.child.wait().await.ok();
                panic!(
                    "the browser test failed ({status:?}); screenshots in {}:\n{}",
                    self.log.parent().map(Path::display).expect("dir"),
                    self.log()
                )
            }
            Err(_) => panic!(
                "the browser test sent nothing for {timeout:?}:\n{}",
                self.log()
            ),
        }
    }

    pub(crate) async fn expect(&mut self, event: &str, timeout: Duration) -> Value {
        let v = self.recv(timeout).await;
        assert_eq!(v["event"], event, "{v}\n{}", self.log());
        v
    }

    pub(crate) async fn send(&mut self, v: Value) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{v}\n").as_bytes())
            .await
            .expect("write to e2e");
        stdin.flush().await.expect("flush");
    }
}

impl Drop for E2e {
    fn drop(&mut self) {
        stop_group(self.pgid, Duration::from_secs(5));
    }
}

// ------------------------------------------------------------------ tests --

/// Each state of the window as the page's live parts get it (the JSON the
/// page polls), the page HTML the same for everyone and whatever the stock,
/// `<script>` in a name escaped, no inline code (CSP `script-src 'self'`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_before_during_after_the_window() {
    let app = TestApp::spawn(shared_group(), AppOptions::default()).await;
    let c = http();
    let upcoming = unique("up");
    let live = unique("live");
    let sold = unique("sold");
    let ended = unique("end");
    let evil = "<script>alert(1)</script> Phone";
    sale(&app, &upcoming, "Upcoming thing", 5, 3600, 3600).await;
    sale(&app, &live, evil, 5, -5, 3600).await;
    sale(&app, &sold, "Last one", 1, -5, 3600).await;
    // Ended 200 s ago: still listed (FLASHSALE_ENDED_LISTED_S is an hour).
    sale(&app, &ended, "This morning's deal", 5, -7200, 7000).await;

    // The live page before a purchase, anonymously and as a signed-in shopper.
    let page = app.url(&format!("/p/{live}"));
    let (s, h0, anon) = get_text(&c, &page).await;
    assert_eq!(s, 200);
    let r = c
        .get(&page)
        .header("cookie", format!("fs_token={}", app.token("carol")))
        .send()
        .await
        .expect("page");
    let h1_etag = r.headers()["etag"].to_str().expect("etag").to_owned();
    assert_eq!(
        r.text().await.expect("html"),
        anon,
        "the same page for everyone"
    );
    assert_eq!(h0["etag"], h1_etag);
    assert!(!anon.contains("<script>alert(1)"), "name escaped");
    assert!(anon.contains("&#60;script&#62;alert(1)&#60;/script&#62; Phone"));
    assert!(
        anon.contains("&#60;b&#62;not bold&#60;/b&#62;"),
        "description escaped"
    );
    let (s, _) = app.purchase("carol", &live, 1, None).await;
    assert_eq!(s, 202);
    let (s, h2, after) = get_text(&c, &page).await;
    assert_eq!(s, 200);
    assert_eq!(
        after, anon,
        "stock left is not in the page: it stays cacheable"
    );
    assert_eq!(h2["etag"], h0["etag"]);
    let (s, _) = app.purchase("dave", &sold, 1, None).await;
    assert_eq!(s, 202);

    for (sku, state) in [
        (&upcoming, "upcoming"),
        (&live, "live"),
        (&sold, "sold_out"),
        (&ended, "ended"),
    ] {
        let (s, h, html) = get_text(&c, &app.url(&format!("/p/{sku}"))).await;
        assert_eq!(s, 200, "{sku}");
        assert!(h["content-type"].starts_with("text/html"));
        assert!(h["content-security-policy"].contains("script-src 'self'"));
        assert_no_inline_code(&html, sku);
        // The Buy button starts disabled: only app.js opens it, by the
        // server's clock, inside the window.
        assert!(
            html.contains(r#"<button id="buy" type="submit" disabled"#),
            "{sku}"
        );
        assert!(
            html.contains(r#"role="status" aria-live="polite""#),
            "{sku}"
        );
        assert!(
            html.contains(r#"<label for="qty">Quantity</label>"#),
            "{sku}"
        );
        assert!(
            html.contains(r#"id="stock-left" data-live="stock">–<"#),
            "{sku}"
        );
        // What the live parts are computed from (the catalog is read from
        // replicas behind a short cache: a sale sold out a moment ago may
        // take that long to show).
        let deadline = Instant::now() + Duration::from_secs(3);
        let p = loop {
            let (s, p) = app.get(&format!("/api/products/{sku}"), None).await;
            assert_eq!(s, 200);
            if p["state"] == state || Instant::now() > deadline {
                break p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(p["state"], state, "{sku}: {p}");
        let starts = p["starts_at"].as_str().expect("starts_at");
        let ends = p["ends_at"].as_str().expect("ends_at");
        assert!(
            html.contains(&format!(r#"data-starts="{starts}" data-ends="{ends}""#)),
            "{sku}"
        );
        assert!(
            html.contains(&format!(r#"<time datetime="{starts}">"#)),
            "{sku}"
        );
        let server = p["server_time"].as_str().expect("server_time");
        let t = |s: &str| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .expect("rfc3339")
        };
        let (server, starts, ends) = (t(server), t(starts), t(ends));
        match state {
            "upcoming" => assert!(server < starts),
            "ended" => assert!(server >= ends),
            _ => assert!(starts <= server && server < ends),
        }
        let left = p["stock_left"].as_i64().expect("stock_left");
        assert_eq!(state == "sold_out", left == 0, "{sku}: {p}");
    }

    let (s, _, index) = get_text(&c, &app.url("/")).await;
    assert_eq!(s, 200);
    assert_no_inline_code(&index, "/");
    for sku in [&upcoming, &live, &sold, &ended] {
        assert!(
            index.contains(&format!(r#"<li class="sale" data-sku="{sku}""#)),
            "{sku}"
        );
        assert!(index.contains(&format!(r#"href="/p/{sku}""#)));
    }
    for path in ["/orders", "/dev/login"] {
        let (s, _, html) = get_text(&c, &app.url(path)).await;
        assert_eq!(s, 200, "{path}");
        assert_no_inline_code(&html, path);
    }
    // Every asset a page names is served, fingerprinted and immutable.
    for asset in anon.split("\"/static/").skip(1) {
        let asset = &asset[..asset.find('"').expect("quote")];
        assert!(asset.contains("?v="), "{asset} is fingerprinted");
        let (s, h, _) = get_text(&c, &app.url(&format!("/static/{asset}"))).await;
        assert_eq!(s, 200, "{asset}");
        assert!(h["cache-control"].contains("immutable"), "{asset}");
    }
}

/// `flashsale render --out DIR` writes `index.html` and `p/<sku>.html`,
/// byte for byte what the app serves, and picks up a sale created later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_writes_the_pages_the_app_serves() {
    let group = shared_group();
    let app = TestApp::spawn(group, AppOptions::default()).await;
    let c = http();
    let a = unique("ra");
    let b = unique("rb");
    sale(&app, &a, "<script>alert('x')</script> Kettle", 3, 60, 600).await;
    sale(&app, &b, "Toaster", 3, -5, 600).await;
    let out = temp_dir("render");
    let said = render(group, &app.prefix, &out);
    assert!(said.contains("wrote 3 pages"), "{said}");
    for (file, path) in [
        ("index.html".to_owned(), "/".to_owned()),
        (format!("p/{a}.html"), format!("/p/{a}")),
        (format!("p/{b}.html"), format!("/p/{b}")),
    ] {
        let disk =
            std::fs::read_to_string(out.join(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let (s, _, served) = get_text(&c, &app.url(&path)).await;
        assert_eq!(s, 200);
        assert_eq!(disk, served, "{file} is what {path} serves");
    }
    let html = std::fs::read_to_string(out.join(format!("p/{a}.html"))).expect("page");
    assert!(!html.contains("<script>alert"));
    assert!(html.contains("&#60;script&#62;alert(&#39;x&#39;)&#60;/script&#62; Kettle"));
    // A new sale: the next render writes its page and lists it.
    let d = unique("rc");
    sale(&app, &d, "Blender", 3, 60, 600).await;
    let said = render(group, &app.prefix, &out);
    assert!(said.contains("wrote 4 pages"), "{said}");
    assert!(out.join(format!("p/{d}.html")).is_file());
    let index = std::fs::read_to_string(out.join("index.html")).expect("index");
    assert!(index.contains(&format!("/p/{d}")));
    let leftovers: Vec<_> = std::fs::read_dir(out.join("p"))
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no temp files left");
    let _ = std::fs::remove_dir_all(&out);
}

/// nginx (deploy/nginx) in front of two instances: rendered pages from
/// disk, a browser-like purchase (with `Origin`) through the proxy, and the
/// pages still served, the API answering JSON 503, once every app stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_serves_rendered_pages_with_every_app_stopped() {
    let group = shared_group();
    let app1 = TestApp::spawn(group, AppOptions::default()).await;
    let app2 = TestApp::spawn_with(group, &app1.prefix, AppOptions::default()).await;
    let sku = unique("ng");
    let unrendered = unique("ngu");
    sale(&app1, &sku, "Rendered <b>thing</b>", 5, -5, 3600).await;
    let pages = temp_dir("pages");
    render(group, &app1.prefix, &pages);
    sale(&app1, &unrendered, "Not rendered yet", 5, -5, 3600).await;
    let up1 = app1.base.trim_start_matches("http://").to_owned();
    let up2 = app2.base.trim_start_matches("http://").to_owned();
    let nginx = Nginx::start(&[
        ("FLASHSALE_UPSTREAMS", &format!("{up1},{up2}")),
        ("FLASHSALE_PAGES_DIR", &pages.display().to_string()),
    ]);
    let c = http();
    let disk = std::fs::read_to_string(pages.join(format!("p/{sku}.html"))).expect("page");

    let (s, h, body) = get_text(&c, &nginx.url(&format!("/p/{sku}"))).await;
    assert_eq!(s, 200);
    assert_eq!(body, disk, "served from disk");
    assert!(h["content-type"].starts_with("text/html"), "{h:?}");
    assert!(h["cache-control"].contains("max-age"), "{h:?}");
    assert!(
        h.contains_key("etag") && h.contains_key("last-modified"),
        "{h:?}"
    );
    let (s, _, body) = get_text(&c, &nginx.url(&format!("/p/{unrendered}"))).await;
    assert_eq!(s, 200, "a page not rendered yet comes from the app");
    assert!(body.contains("Not rendered yet"));
    let asset = disk
        .split("\"/static/app.js")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("app.js link");
    let (s, h, _) = get_text(&c, &nginx.url(&format!("/static/app.js{asset}"))).await;
    assert_eq!(s, 200);
    assert!(h["cache-control"].contains("immutable"), "{h:?}");

    // What a browser sends: the page's origin (with the port) and the cookie.
    let origin = nginx.url("");
    let r = c
        .post(nginx.url(&format!("/api/sales/{sku}/purchase")))
        .header("origin", &origin)
        .header("cookie", format!("fs_token={}", app1.token("erin")))
        .header("content-type", "application/json")
        .header("idempotency-key", "k-erin-1")
        .body(r#"{"qty":1}"#)
        .send()
        .await
        .expect("purchase");
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(
        status, 202,
        "a same-origin purchase through nginx: {body} (nginx must pass the Host with its port)"
    );

    app1.stop().await;
    app2.stop().await;
    for path in ["/".to_owned(), format!("/p/{sku}")] {
        let (s, _, body) = get_text(&c, &nginx.url(&path)).await;
        assert_eq!(s, 200, "{path} with every app stopped");
        assert!(body.contains("flashsale"), "{path}");
    }
    let (s, _, body) = get_text(&c, &nginx.url(&format!("/p/{sku}"))).await;
    assert_eq!((s, body), (200, disk));
    for path in [format!("/api/products/{sku}"), format!("/p/{unrendered}")] {
        let (s, h, body) = get_text(&c, &nginx.url(&path)).await;
        assert_eq!(s, 503, "{path}: {body}");
        assert!(
            h["content-type"].starts_with("application/problem+json"),
            "{path}"
        );
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["error"], "unavailable");
        assert_eq!(
            (v["status"].as_u64(), v["type"].as_str()),
            (Some(503), Some("urn:flashsale:error:unavailable"))
        );
    }
    drop(nginx);
    let _ = std::fs::remove_dir_all(&pages);
}

/// The buy flow in headless Chromium through nginx and two instances, with
/// a worker confirming orders: countdown to zero by the server's clock,
/// Buy, queued → confirmed; a second shopper sees sold out; /orders; each
/// state of the window; the rendered page with every app stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_buy_flow_through_nginx() {
    // Every tool first: a missing one fails here, saying how to install it.
    let _ = nginx_bin();
    let _ = chromium_bin();
    let _ = node_ready();
    let out = artifacts("buy-flow");
    let group = shared_group();
    let app1 = TestApp::spawn(group, AppOptions::default()).await;
    let app2 = TestApp::spawn_with(group, &app1.prefix, AppOptions::default()).await;
    let prefix = app1.prefix.clone();
    let worker = Worker::spawn(group, &prefix);
    let pages = temp_dir("pages");
    render(group, &prefix, &pages);
    let up1 = app1.base.trim_start_matches("http://").to_owned();
    let up2 = app2.base.trim_start_matches("http://").to_owned();
    let nginx = Nginx::start(&[
        ("FLASHSALE_UPSTREAMS", &format!("{up1},{up2}")),
        ("FLASHSALE_PAGES_DIR", &pages.display().to_string()),
    ]);

    let mut e2e = E2e::spawn("e2e.mjs", &nginx.url(""), &out);
    e2e.expect("ready", Duration::from_secs(90)).await;

    // The other states of the window first, then the sale itself, opening
    // 8 s from now: time to render, load both pages and see the countdown
    // run down, even on a busy machine.
    let live = unique("e2elive");
    sale(&app2, &live, "Open box", 7, -5, 3600).await;
    let upcoming = unique("e2eup");
    sale(&app1, &upcoming, "Next week", 3, 7 * 86_400, 3600).await;
    let ended = unique("e2eend");
    sale(&app2, &ended, "Gone", 3, -7200, 7000).await;
    let sku = unique("e2e");
    let starts_ms = now_ms() + 8_000;
    let name = "Flash Kettle <limited>";
    sale_at(&app1, &sku, name, 1, starts_ms, 600).await;
    render(group, &prefix, &pages);
    assert!(pages.join(format!("p/{sku}.html")).is_file());
    e2e.send(json!({
        "sku": sku, "name": name, "stock": 1, "starts_ms": starts_ms,
        "live_sku": live, "live_stock": 7, "upcoming_sku": upcoming, "ended_sku": ended,
    }))
    .await;

    let stop = e2e.expect("stop-apps", Duration::from_secs(120)).await;
    let order_id = stop["order_id"].as_str().expect("order id").to_owned();
    let audit = app1.audit(&sku).await;
    assert_eq!(audit["sold"], 1, "{audit}");
    assert_eq!(audit["stock_left"], 0, "{audit}");
    assert_eq!(audit["orders"], 1, "{audit}");
    assert_eq!(audit["confirmed"], 1, "{audit}");
    assert_eq!(audit["consistent"], true, "{audit}");
    let (s, order) = app1
        .get(&format!("/api/orders/{order_id}"), Some("alice"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(order["user_id"], "alice");
    assert_eq!(order["status"], "confirmed");
    let (s, bobs) = app2.get("/api/me/orders", Some("bob")).await;
    assert_eq!(s, 200);
    assert_eq!(bobs["orders"].as_array().map(Vec::len), Some(0), "{bobs}");

    app1.stop().await;
    app2.stop().await;
    worker.stop().await;
    e2e.send(json!({"event": "apps-stopped"})).await;
    let done = e2e.expect("done", Duration::from_secs(60)).await;
    let result = &done["result"];
    std::fs::write(
        out.join("result.json"),
        serde_json::to_string_pretty(result).expect("json"),
    )
    .expect("result.json");
    std::fs::write(out.join("nginx-error.log"), nginx.error_log()).expect("nginx log");
    let status = tokio::time::timeout(Duration::from_secs(30), e2e.child.wait())
        .await
        .expect("node exits")
        .expect("wait");
    assert!(status.success(), "{}", e2e.log());
    for shot in [
        "product-before-desktop",
        "product-before-phone",
        "product-confirmed-desktop",
        "product-soldout-phone",
        "orders-desktop",
        "index-phone",
        "apps-down-phone",
    ] {
        assert!(out.join(format!("{shot}.png")).is_file(), "{shot}.png");
    }
    drop(nginx);
    let _ = std::fs::remove_dir_all(&pages);
}

// ---------------------------------------------------------- payment step --

const PAYMENT_TOKEN: &str = "browser-payment-secret-0123456789";

/// An app on `prefix` with a payment window (zero: none) and the
/// development sign-in on or off.
async fn payment_app(prefix: &str, window: Duration, dev_login: bool) -> TestApp {
    let mut settings = serve_settings(shared_group(), prefix, &AppOptions::default());
    settings.payment_window = window;
    settings.payment_token =
        (!window.is_zero()).then(|| flashsale::config::Secret::new(PAYMENT_TOKEN));
    settings.dev_login = dev_login;
    TestApp::spawn_settings(prefix, settings).await
}

/// A sale open now, priced 129.00 EUR, one unit per shopper.
async fn euro_sale(app: &TestApp, sku: &str, name: &str, stock: i64) {
    let now = time::OffsetDateTime::now_utc();
    let fmt = &time::format_description::well_known::Rfc3339;
    let at = |s: i64| (now + time::Duration::seconds(s)).format(fmt).expect("fmt");
    let (s, body) = app
        .admin_post(
            "/admin/sales",
            json!({"sku": sku, "name": name, "description": "Pay for it in time.",
                "price_cents": 12900, "currency": "EUR", "stock": stock, "per_user_limit": 1,
                "starts_at": at(-5), "ends_at": at(3600)}),
        )
        .await;
    assert_eq!(s, 201, "create {sku}: {body}");
}

/// `POST /dev/pay/{order_id}` as a browser would send it: the shopper's
/// cookie (if any) and an `Origin` (if any).
async fn dev_pay(
    app: &TestApp,
    order_id: &str,
    user: Option<&str>,
    origin: Option<&str>,
) -> (u16, Value) {
    let mut req = http().post(app.url(&format!("/dev/pay/{order_id}")));
    if let Some(u) = user {
        req = req.header("cookie", format!("fs_token={}", app.token(u)));
    }
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let r = req.send().await.expect("dev pay");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn bought(app: &TestApp, user: &str, sku: &str) -> String {
    let (s, body) = app.purchase(user, sku, 1, None).await;
    assert_eq!(s, 202, "{user}: {body}");
    body["order_id"].as_str().expect("order id").to_owned()
}

/// The development payment pays the signed-in shopper's own order with its
/// own amount (idempotently), only from this site, never another shopper's
/// order nor one that expired or was cancelled; it exists only with
/// `--dev-login` and a payment step, is not in the API description, and the
/// orders page offers it exactly then (the same page for every shopper).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_pay_pays_the_shoppers_own_order() {
    let prefix = unique("dp");
    let app = payment_app(&prefix, Duration::from_secs(600), true).await;
    let sku = unique("dps");
    euro_sale(&app, &sku, "Dev-paid kettle", 5).await;
    let ann = bought(&app, "ann", &sku).await;
    let ben = bought(&app, "ben", &sku).await;
    let status = |v: &Value| v["status"].as_str().unwrap_or("").to_owned();

    // Another site's page: refused before anything is read.
    let (s, body) = dev_pay(&app, &ann, Some("ann"), Some("https://evil.example")).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (403, Some("cross_site")),
        "{body}"
    );
    // Nobody signed in; another shopper; a made-up order.
    let (s, body) = dev_pay(&app, &ann, None, Some(&app.base)).await;
    assert_eq!(s, 401, "{body}");
    let (s, body) = dev_pay(&app, &ann, Some("ben"), Some(&app.base)).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (s, _) = dev_pay(
        &app,
        &format!("{sku}.{}", "0".repeat(32)),
        Some("ann"),
        None,
    )
    .await;
    assert_eq!(s, 404);
    let (_, order) = app.get(&format!("/api/orders/{ann}"), Some("ann")).await;
    assert_ne!(status(&order), "paid", "nothing paid so far: {order}");

    // The shopper, from this site: paid with the order's own amount.
    let (s, paid) = dev_pay(&app, &ann, Some("ann"), Some(&app.base)).await;
    assert_eq!(s, 200, "{paid}");
    assert_eq!(status(&paid), "paid", "{paid}");
    assert_eq!(paid["amount_cents"], 12900, "{paid}");
    assert!(
        paid["paid_at"].is_string() && paid["pay_by"].is_null(),
        "{paid}"
    );
    // Again (a double click, a retry): the same payment, the same answer.
    let (s, again) = dev_pay(&app, &ann, Some("ann"), None).await;
    assert_eq!((s, status(&again)), (200, "paid".to_owned()), "{again}");
    assert_eq!(again["paid_at"], paid["paid_at"]);
    let r = http()
        .get(app.url(&format!("/dev/pay/{ann}")))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 405, "a state change is a POST");

    // Cancelled first: too late to pay.
    let r = http()
        .post(app.url(&format!("/api/orders/{ben}/cancel")))
        .bearer_auth(app.token("ben"))
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status().as_u16(), 200);
    let (s, body) = dev_pay(&app, &ben, Some("ben"), None).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (409, Some("payment_late")),
        "{body}"
    );
    let audit = app.audit(&sku).await;
    assert_eq!(
        (&audit["paid"], &audit["cancelled"], &audit["stock_left"]),
        (&json!(1), &json!(1), &json!(4)),
        "{audit}"
    );
    assert_eq!(audit["consistent"], true, "{audit}");

    // The orders page offers it, the same page for everyone.
    let (s, _, page) = get_text(&http(), &app.url("/orders")).await;
    assert_eq!(s, 200);
    assert!(
        page.contains(r#"data-page="orders" data-payment="on" data-dev-pay="on">"#),
        "{page}"
    );
    assert_no_inline_code(&page, "/orders");
    let r = http()
        .get(app.url("/orders"))
        .header("cookie", format!("fs_token={}", app.token("ann")))
        .send()
        .await
        .expect("orders page");
    assert_eq!(
        r.text().await.expect("html"),
        page,
        "the same page for every shopper"
    );
    // Not part of the API: not in its description.
    let (_, doc) = app.get("/api/openapi.json", None).await;
    let paths: Vec<&String> = doc["paths"].as_object().expect("paths").keys().collect();
    assert!(
        !paths.is_empty() && paths.iter().all(|p| !p.starts_with("/dev")),
        "{paths:?}"
    );

    // A deadline already past: late, even before any worker expired it.
    let short = payment_app(&prefix, Duration::from_secs(1), true).await;
    let late_sku = unique("dpl");
    euro_sale(&short, &late_sku, "Too slow", 2).await;
    let cy = bought(&short, "cy", &late_sku).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (s, body) = dev_pay(&short, &cy, Some("cy"), None).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (409, Some("payment_late")),
        "{body}"
    );
    let (_, order) = short.get(&format!("/api/orders/{cy}"), Some("cy")).await;
    assert_eq!(status(&order), "expired", "{order}");

    // Without a payment step, or without --dev-login: no such page.
    for (window, dev_login, root) in [
        (Duration::ZERO, true, r#"data-page="orders">"#),
        (
            Duration::from_secs(600),
            false,
            r#"data-page="orders" data-payment="on">"#,
        ),
    ] {
        let other = payment_app(&prefix, window, dev_login).await;
        let (s, body) = dev_pay(&other, &ben, Some("ben"), None).await;
        assert_eq!(
            (s, body["error"].as_str()),
            (404, Some("not_found")),
            "window {window:?}, dev login {dev_login}: {body}"
        );
        let (s, _, page) = get_text(&http(), &other.url("/orders")).await;
        assert_eq!(s, 200);
        assert!(page.contains(root), "{page}");
        assert!(!page.contains("data-dev-pay"), "{page}");
        other.stop().await;
    }
    short.stop().await;
    app.stop().await;
}

/// The payment step in headless Chromium, through nginx and two instances
/// with a window of a few seconds and `--dev-login`, a worker confirming and
/// expiring orders: the orders page counts down by the server's clock,
/// "Pay (development)" pays, Cancel (confirmed in a dialog) returns the unit
/// to the product page, and an order left alone expires on the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_payment_step_through_nginx() {
    let _ = nginx_bin();
    let _ = chromium_bin();
    let _ = node_ready();
    const WINDOW_S: u64 = 10;
    let out = artifacts("payment");
    let group = shared_group();
    let prefix = unique("bp");
    let window = Duration::from_secs(WINDOW_S);
    let app1 = payment_app(&prefix, window, true).await;
    let app2 = payment_app(&prefix, window, true).await;
    let worker = Worker::spawn(group, &prefix);
    let pages = temp_dir("pages");
    let up1 = app1.base.trim_start_matches("http://").to_owned();
    let up2 = app2.base.trim_start_matches("http://").to_owned();
    let nginx = Nginx::start(&[
        ("FLASHSALE_UPSTREAMS", &format!("{up1},{up2}")),
        ("FLASHSALE_PAGES_DIR", &pages.display().to_string()),
    ]);

    let mut e2e = E2e::spawn("payment.mjs", &nginx.url(""), &out);
    e2e.expect("ready", Duration::from_secs(90)).await;
    let sku = unique("bpay");
    let name = "Pay-in-time kettle";
    euro_sale(&app1, &sku, name, 3).await;
    render(group, &prefix, &pages);
    e2e.send(json!({"sku": sku, "name": name, "stock": 3, "window_s": WINDOW_S}))
        .await;

    let done = e2e.expect("done", Duration::from_secs(90)).await;
    let result = &done["result"];
    std::fs::write(
        out.join("result.json"),
        serde_json::to_string_pretty(result).expect("json"),
    )
    .expect("result.json");
    std::fs::write(out.join("nginx-error.log"), nginx.error_log()).expect("nginx log");
    let status = tokio::time::timeout(Duration::from_secs(30), e2e.child.wait())
        .await
        .expect("node exits")
        .expect("wait");
    assert!(status.success(), "{}", e2e.log());

    // What the shoppers saw is what the shop holds.
    for (who, key, want) in [
        ("pat", "paid", "paid"),
        ("cam", "cancelled", "cancelled"),
        ("lea", "expired", "expired"),
    ] {
        let id = result["orders"][key].as_str().expect("order id");
        let (s, order) = app2.get(&format!("/api/orders/{id}"), Some(who)).await;
        assert_eq!(s, 200, "{who}: {order}");
        assert_eq!(order["status"], want, "{who}: {order}");
    }
    let audit = app1.audit(&sku).await;
    assert_eq!(
        (&audit["paid"], &audit["cancelled"], &audit["expired"]),
        (&json!(1), &json!(1), &json!(1)),
        "{audit}"
    );
    assert_eq!(audit["stock_left"], 2, "{audit}");
    assert_eq!(audit["consistent"], true, "{audit}");
    for shot in [
        "orders-waiting-desktop",
        "orders-paid-desktop",
        "product-soldout-phone",
        "orders-confirm-phone",
        "orders-cancelled-phone",
        "product-back-phone",
        "orders-expired-desktop",
    ] {
        assert!(out.join(format!("{shot}.png")).is_file(), "{shot}.png");
    }
    worker.stop().await;
    app1.stop().await;
    app2.stop().await;
    drop(nginx);
    let _ = std::fs::remove_dir_all(&pages);
}
