//! Build script:
//! - rebuilds the crate when a ledger migration is added or changed:
//!   `sqlx::migrate!` embeds the files of `migrations/` at compile time,
//!   and cargo does not otherwise watch that folder (as sqlx's
//!   documentation advises);
//! - records the commit the binaries are built from (`BUILD_GIT_COMMIT`,
//!   shown by `flashsale_build_info`), reading the local git checkout only;
//!   outside one (a source tarball) the commit is `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

/// Reruns this script when `path` changes; a path that does not exist
/// would make every build rerun it, so it is left out.
fn watch(path: &str) {
    if std::path::Path::new(path).exists() {
        println!("cargo:rerun-if-changed={path}");
    }
}

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=build.rs");
    // Rebuild the value when HEAD moves: HEAD itself, the branch it
    // points to, and the packed refs.
    for path in ["HEAD", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            watch(&p);
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(p) = git(&["rev-parse", "--git-path", &branch])
    {
        watch(&p);
    }
    if let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) {
        println!("cargo:rustc-env=BUILD_GIT_COMMIT={commit}");
    }
}
