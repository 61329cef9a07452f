//! Headless Chromium (Debian's `chromium`) loading one page and handing back
//! its DOM once the page's scripts are done: for checks that need a real
//! browser but no clicking (cross-origin calls, locale formatting). The
//! buy flow, which clicks, drives Chromium through `tests/browser`.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command as StdCommand;
use std::time::Duration;

use super::app::temp_dir;

/// Loads `url` and returns the DOM. `languages` (e.g. `["de-DE"]`) are the
/// browser's preferred languages (`navigator.languages`, `Accept-Language`);
/// empty leaves Chromium's default. Chromium runs in a process group of its
/// own, killed afterwards (also when this times out); its profile is a
/// fresh directory, removed afterwards.
pub async fn chromium_dom(url: &str, languages: &[&str]) -> String {
    let bin = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&bin).is_file(),
        "chromium ({bin}) is not installed; install it with `scripts/setup.sh chromium` (Debian's chromium)"
    );
    let profile = temp_dir("chromium");
    let mut cmd = StdCommand::new(&bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-extensions",
        "--virtual-time-budget=15000",
        "--dump-dom",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    if let Some(first) = languages.first() {
        cmd.arg(format!("--lang={first}"))
            .arg(format!("--accept-lang={}", languages.join(",")));
    }
    cmd.arg(url)
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chromium");
    let pgid = child.id().expect("chromium pid");
    let mut stdout = child.stdout.take().expect("stdout");
    let read = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v).await;
        v
    });
    let waited = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
    // Chromium's helper processes too, by the group's id.
    let _ = StdCommand::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pgid}")])
        .stderr(std::process::Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(&profile);
    assert!(waited.is_ok(), "chromium did not finish loading {url}");
    String::from_utf8_lossy(&read.await.expect("stdout")).into_owned()
}
