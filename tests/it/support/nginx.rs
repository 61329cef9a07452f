//! The shipped nginx site (`deploy/nginx/render.sh`) on a free loopback
//! port, for the tests that put real nginx in front of real app instances
//! (the deployment's and the pages'). nginx runs in the foreground in its
//! own process group, stopped by that group's id on drop (also when a test
//! panics) and by a watchdog if the test process dies first.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::app::temp_dir;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

pub fn nginx_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
        .expect("nginx is not installed (as root: apt-get install nginx, or bash deploy/check.sh)")
}

pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Sends `sig` to every process of group `pgid`; whether one was there.
pub fn signal_group(pgid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args(["-s", sig, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// nginx in the foreground (`daemon off`) on a free loopback port, with the
/// site `deploy/nginx/render.sh` renders from `env` (its FLASHSALE_*
/// variables) in a temp dir that also holds the pid file, logs and temp
/// paths.
pub struct Nginx {
    pgid: u32,
    child: std::process::Child,
    pub dir: PathBuf,
    pub port: u16,
}

impl Nginx {
    /// `env`: the FLASHSALE_* variables render.sh takes (upstreams, pages
    /// dir, allow-lists, limits); the listen address, the assets and, unless
    /// given, the pages dir (in the temp dir) are set here.
    pub fn start(env: &[(&str, &str)]) -> Nginx {
        let bin = nginx_bin();
        let mut last = String::new();
        for _attempt in 0..3 {
            let dir = temp_dir("nginx");
            let port = free_port();
            let out = Command::new("bash")
                .arg(Path::new(REPO).join("deploy/nginx/render.sh"))
                .arg("--out")
                .arg(dir.join("flashsale.conf"))
                .env("FLASHSALE_NGINX_LISTEN", format!("127.0.0.1:{port}"))
                .env("FLASHSALE_PAGES_DIR", dir.join("pages"))
                .env("FLASHSALE_STATIC_DIR", Path::new(REPO).join("static"))
                .envs(env.iter().copied())
                .output()
                .expect("deploy/nginx/render.sh");
            assert!(
                out.status.success(),
                "render.sh: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let d = dir.display();
            // As root, the workers would run as `nobody`, which cannot read
            // the temp dir; the test's own user is fine.
            let user = if is_root() { "user root;\n" } else { "" };
            let mime = ["/etc/nginx/mime.types", "/usr/local/nginx/conf/mime.types"]
                .into_iter()
                .find(|p| Path::new(p).is_file())
                .expect("nginx's mime.types");
            let conf = format!(
                "{user}worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  include {mime};\n  default_type application/octet-stream;\n\
                 \x20 access_log {d}/access.log;\n\
                 \x20 client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                 \x20 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 \x20 include {d}/flashsale.conf;\n}}\n"
            );
            std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
            let args = |extra: &[&str]| {
                let mut c = Command::new(&bin);
                c.arg("-e")
                    .arg(dir.join("error.log"))
                    .arg("-p")
                    .arg(&dir)
                    .arg("-c")
                    .arg(dir.join("nginx.conf"))
                    .args(extra);
                c
            };
            let t = args(&["-t", "-q"]).output().expect("nginx -t");
            assert!(
                t.status.success(),
                "nginx -t failed for the site rendered from deploy/nginx:\n{}",
                String::from_utf8_lossy(&t.stderr)
            );
            let child = args(&["-g", "daemon off; master_process on;"])
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nginx");
            let pgid = child.id();
            watchdog(pgid);
            let mut n = Nginx {
                pgid,
                child,
                dir,
                port,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return n;
                }
                if n.child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            last = n.error_log();
            drop(n);
            if !last.contains("in use") {
                break;
            }
        }
        panic!("nginx did not start:\n{last}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn site(&self) -> String {
        std::fs::read_to_string(self.dir.join("flashsale.conf")).unwrap_or_default()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        signal_group(self.pgid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while signal_group(self.pgid, "0") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        signal_group(self.pgid, "KILL");
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills process group `pgid` if this test process dies before it does.
pub fn watchdog(pgid: u32) {
    let script = format!(
        "while kill -0 {me} 2>/dev/null && kill -0 -{pgid} 2>/dev/null; do sleep 1; done; \
         kill -0 {me} 2>/dev/null || kill -KILL -{pgid} 2>/dev/null",
        me = std::process::id()
    );
    let child = Command::new("sh")
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
