//! A throw-away PostgreSQL server for tests and benchmarks: Debian's
//! packaged binaries (`/usr/lib/postgresql/<version>/bin`, the newest
//! version installed), `initdb` into a fresh temp dir, one server on a free
//! loopback port (TCP on 127.0.0.1 only; its unix socket in the temp dir).
//!
//! The server runs as an unprivileged user when this process is root
//! (`initdb` and `postgres` refuse root): the `postgres` system user the
//! package creates, or `nobody`; the temp dir is handed to that user. The
//! superuser `flashsale` has a password (TCP connections must give it, so a
//! test can check that the password is never printed); the database
//! `flashsale` is created empty.
//!
//! [`Postgres::stop`] and [`Postgres::start`] simulate an outage (a fast
//! shutdown: clients are disconnected and the port is closed; then the
//! same data dir on the same port). Dropping it kills the server by PID
//! (the one it started; `SIGQUIT`, then `SIGKILL`) and removes the temp
//! dir, also while a test panics; a watchdog process does the same if this
//! process dies without unwinding.
//!
//! Timings on the project's 2-core machine: `init` ≈ 1 s (initdb 0.7 s),
//! `stop` ≈ 0.1 s, `start` ≈ 0.2 s.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::process::{Child, Command};

/// Where Debian installs the server binaries, one directory per version.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
/// Ports are drawn from here: below the Redis groups' range and below
/// Linux's ephemeral range, so no client socket takes the port between a
/// `stop` and a `start`.
const PORT_RANGE: (u16, u16) = (15000, 19999);
/// The superuser and the database the tests use.
pub const USER: &str = "flashsale";
pub const DATABASE: &str = "flashsale";

static RESERVED_PORTS: Mutex<Vec<u16>> = Mutex::new(Vec::new());
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn random_u64() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    RandomState::new().hash_one((
        nanos,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
    ))
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb` and
/// `postgres`; panics with what to install when there is none.
pub fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file())
                .then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "postgres: no PostgreSQL server in {DEBIAN_ROOT}/<version>/bin (initdb, postgres); \
             install it with `apt-get install -y postgresql` (scripts/setup.sh does)"
        ),
    }
}

/// The effective uid of this process (`/proc/self/status`).
fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1))
                .and_then(|id| id.parse().ok())
        })
        .unwrap_or_else(|| panic!("postgres: cannot read the effective uid from /proc/self/status"))
}

/// uid and gid of a user in `/etc/passwd`.
fn passwd_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// The user the server runs as: `None` (this process's) unless root.
fn server_user() -> Option<(u32, u32)> {
    if effective_uid() != 0 {
        return None;
    }
    let ids = passwd_ids("postgres").or_else(|| passwd_ids("nobody"));
    Some(ids.unwrap_or_else(|| {
        panic!(
            "postgres: running as root, and neither the `postgres` nor the `nobody` user \
             exists to run the server as (initdb refuses root)"
        )
    }))
}

fn pick_port() -> u16 {
    let (lo, hi) = PORT_RANGE;
    for _ in 0..500 {
        let port = lo + (random_u64() % u64::from(hi - lo)) as u16;
        let mut reserved = RESERVED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
        if reserved.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            reserved.push(port);
            return port;
        }
    }
    panic!("postgres: no free port in {lo}..{hi} after 500 tries");
}

fn fresh_temp_dir() -> PathBuf {
    let root = std::env::temp_dir();
    for _ in 0..100 {
        let dir = root.join(format!(
            "flashsale-pg-{}-{:016x}",
            std::process::id(),
            random_u64()
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("postgres: cannot create {}: {e}", dir.display()),
        }
    }
    panic!("postgres: no fresh temp dir under {}", root.display());
}

/// Sends a signal with `kill(1)`; errors are ignored (it may be gone).
fn signal(sig: &str, pid: u32) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A running (or stopped) PostgreSQL server in a temp dir; see the module
/// docs.
pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    password: String,
    user: Option<(u32, u32)>,
    child: Option<Child>,
}

impl Postgres {
    /// `initdb`, start, create the database. Panics, with the server's log,
    /// when any of it fails.
    pub async fn init() -> Postgres {
        let bin = bin_dir();
        let user = server_user();
        let dir = fresh_temp_dir();
        let mut pg = Postgres {
            port: pick_port(),
            password: format!("pw-{:016x}", random_u64()),
            dir,
            bin,
            user,
            child: None,
        };
        // From here on Drop cleans up.
        pg.own(&pg.dir.clone(), 0o700);
        let sock = pg.dir.join("sock");
        std::fs::create_dir(&sock).expect("postgres: socket dir");
        pg.own(&sock, 0o700);
        let pwfile = pg.dir.join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", pg.password)).expect("postgres: password file");
        pg.own(&pwfile, 0o600);
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(pg.data_dir())
            .args(["-U", USER, "--no-locale", "-E", "UTF8", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("postgres: cannot run initdb: {e}"));
        let _ = std::fs::remove_file(&pwfile);
        assert!(
            out.status.success(),
            "postgres: initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        pg.watchdog();
        pg.start().await;
        let out = Command::new(pg.bin.join("createdb"))
            .args(["-h"])
            .arg(&sock)
            .args(["-p", &pg.port.to_string(), "-U", USER, DATABASE])
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("postgres: cannot run createdb: {e}"));
        assert!(
            out.status.success(),
            "postgres: createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg
    }

    /// `postgres://flashsale:<password>@127.0.0.1:<port>/flashsale`.
    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{DATABASE}",
            self.password, self.port
        )
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp dir (data dir `data/`, socket dir `sock/`, `postgres.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// PID of the running server (`None` while stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Hands `path` to the server's user.
    fn own(&self, path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("postgres: chown {}: {e}", path.display()));
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("postgres: chmod {}: {e}", path.display()));
    }

    /// A server binary, run as the server's user.
    fn command(&self, bin: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(bin));
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        cmd.env("LC_ALL", "C").env_remove("PGDATA");
        cmd
    }

    /// Starts the server (after [`Postgres::stop`]; `init` starts it first)
    /// and waits until it accepts connections on its port.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "postgres: start: already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))
            .expect("postgres: log file");
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.join("sock").display()
            ))
            .args(["-c", "max_connections=40", "-c", "shared_buffers=32MB"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("postgres: log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("postgres: cannot start the server: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.ready().await {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                panic!(
                    "postgres: the server exited ({status}); log:\n{}",
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "postgres: not accepting connections after 15 s; log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server with a fast shutdown (every client disconnected,
    /// the port closed) and waits until it has exited.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            panic!("postgres: stop: not running");
        };
        if let Some(pid) = child.id() {
            signal("INT", pid);
        }
        match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
            Ok(Ok(_)) => {}
            _ => {
                let _ = child.start_kill();
                panic!(
                    "postgres: did not stop within 15 s; log:\n{}",
                    self.log_tail()
                );
            }
        }
    }

    /// Whether the server accepts connections on its TCP port.
    async fn ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", USER, "-d", "postgres", "-t", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success())
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// A shell that outlives a test process killed without unwinding: once
    /// this process is gone, it stops the server whose PID the data dir
    /// names (only if that process's command line names the dir) and
    /// removes the dir. It ends by itself when Drop removed the dir.
    fn watchdog(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null && [ -d '{dir}' ]; do sleep 1; done; \
             [ -d '{dir}' ] || exit 0; \
             p=$(head -n1 '{dir}/data/postmaster.pid' 2>/dev/null); \
             if [ -n \"$p\" ] && grep -qF '{dir}' /proc/$p/cmdline 2>/dev/null; then \
               kill -QUIT $p; sleep 2; kill -KILL $p 2>/dev/null; fi; \
             rm -rf '{dir}'",
            pid = std::process::id(),
            dir = self.dir.display(),
        );
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres: watchdog");
        // Not waited for on purpose: it must outlive this process.
        std::mem::forget(child);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                // Immediate shutdown: the postmaster stops its backends too.
                signal("QUIT", pid);
                let deadline = Instant::now() + Duration::from_secs(5);
                while !matches!(child.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            let _ = child.start_kill();
            let _ = child.try_wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let mut reserved = RESERVED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
        reserved.retain(|&p| p != self.port);
    }
}
