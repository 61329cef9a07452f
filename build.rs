//! Rebuilds the crate when a ledger migration is added or changed:
//! `sqlx::migrate!` embeds the files of `migrations/` at compile time, and
//! cargo does not otherwise watch that folder (as sqlx's documentation
//! advises).

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
