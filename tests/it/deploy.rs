//! The deployment checks of `deploy/check.sh` (nginx -t and a live nginx,
//! systemd-analyze verify, ansible syntax-check, lint and runs into a temp
//! prefix, the rendered Redis/Sentinel configs started as a real group that
//! runs the shipped settings of `deploy/redis/`, docker-compose config and
//! the compose start scripts run outside a container), run as one test so
//! the suite has one runner.

use std::process::Command;

#[test]
fn deployment_checks_pass() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/check.sh");
    let out = Command::new("bash")
        .arg(script)
        .output()
        .expect("run deploy/check.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(
        out.status.success() && last.ends_with(" 0 failed"),
        "deploy/check.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}
