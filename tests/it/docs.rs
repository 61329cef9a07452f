//! The documentation agrees with the code: README.md's configuration
//! tables against the variables the binaries' `--help` lists (and those the
//! code reads itself), `docs/API.md`'s routes and error codes against the
//! OpenAPI document the running server serves, and every command's `--help`
//! against the exit-code rule (each one lists its exit codes).

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

use crate::support::app::{AppOptions, TestApp, shared_group};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{REPO}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn help(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{bin} {args:?} --help: {e}"));
    assert!(out.status.success(), "{bin} {args:?} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `[env: FLASHSALE_X=…]` names in a help text.
fn env_names(text: &str) -> BTreeSet<String> {
    text.match_indices("[env: ")
        .filter_map(|(i, m)| {
            let rest = &text[i + m.len()..];
            let end = rest.find(['=', ']'])?;
            Some(rest[..end].to_owned())
        })
        .collect()
}

/// `FLASHSALE_*` names in the first column of README's tables.
fn readme_table_names(readme: &str) -> BTreeSet<String> {
    readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `FLASHSALE_"))
        .filter_map(|l| l.split('`').next())
        .map(|n| format!("FLASHSALE_{n}"))
        .collect()
}

/// The subcommands a `Commands:` section of a help text lists (not `help`).
fn subcommands(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn readme_lists_every_variable_and_only_real_ones() {
    let flashsale = env!("CARGO_BIN_EXE_flashsale");
    let worker = env!("CARGO_BIN_EXE_flashsale-worker");
    let mut in_help = BTreeSet::new();
    for cmd in subcommands(&help(flashsale, &[])) {
        in_help.extend(env_names(&help(flashsale, &[cmd.as_str()])));
    }
    in_help.extend(env_names(&help(worker, &[])));
    // Read by the code directly, not through a flag.
    in_help.insert("FLASHSALE_LOG_FORMAT".to_owned());

    let readme = read("README.md");
    let table = readme_table_names(&readme);
    // A secret's `_FILE` form is covered by the README's rule for them.
    let missing: Vec<&String> = in_help
        .iter()
        .filter(|n| !table.contains(*n))
        .filter(|n| {
            !n.strip_suffix("_FILE")
                .is_some_and(|base| table.contains(base) && readme.contains("<VARIABLE>_FILE"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "variables of the binaries missing from README.md's tables: {missing:?}"
    );
    let unknown: Vec<&String> = table.iter().filter(|n| !in_help.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "README.md's tables list variables no binary reads: {unknown:?}"
    );
}

#[test]
fn every_command_lists_its_exit_codes() {
    let flashsale = env!("CARGO_BIN_EXE_flashsale");
    let worker = env!("CARGO_BIN_EXE_flashsale-worker");
    let mut texts = vec![
        ("flashsale".to_owned(), help(flashsale, &[])),
        ("flashsale-worker".to_owned(), help(worker, &[])),
    ];
    for cmd in subcommands(&texts[0].1) {
        texts.push((format!("flashsale {cmd}"), help(flashsale, &[cmd.as_str()])));
    }
    for (name, text) in &texts {
        assert!(
            text.contains("Exit codes:") && text.contains("78"),
            "`{name} --help` does not list its exit codes (78 included):\n{text}"
        );
    }
}

/// `` `METHOD /path` `` mentions in docs/API.md's route table.
fn documented_routes(api_md: &str) -> BTreeSet<(String, String)> {
    let table = api_md
        .split("## Routes")
        .nth(1)
        .expect("docs/API.md has a Routes section")
        .split("\n## ")
        .next()
        .unwrap_or("");
    let mut routes = BTreeSet::new();
    for line in table.lines().filter(|l| l.starts_with('|')) {
        let first = line.split(" | ").next().unwrap_or("");
        for part in first.split('`').skip(1).step_by(2) {
            let mut words = part.split_whitespace();
            if let (Some(m), Some(p)) = (words.next(), words.next())
                && ["GET", "POST", "PATCH", "PUT", "DELETE"].contains(&m)
                && p.starts_with('/')
            {
                routes.insert((m.to_lowercase(), p.to_owned()));
            }
        }
        // `POST /admin/sales/{sku}/pause` \| `resume` \| `end`: siblings.
        if let Some(base) = first
            .split('`')
            .nth(1)
            .filter(|p| p.starts_with("POST /admin/sales/{sku}/pause"))
        {
            let stem = base.trim_start_matches("POST ").trim_end_matches("pause");
            for sibling in ["resume", "end"] {
                if first.contains(&format!("`{sibling}`")) {
                    routes.insert(("post".to_owned(), format!("{stem}{sibling}")));
                }
            }
        }
    }
    routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_api_agrees_with_the_openapi_document() {
    let app = TestApp::spawn(shared_group(), AppOptions::default()).await;
    let doc: Value = app
        .http
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    let mut served = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("operations").keys() {
            served.insert((method.clone(), path.clone()));
        }
    }
    let api_md = read("docs/API.md");
    let documented = documented_routes(&api_md);
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes of the OpenAPI document missing from docs/API.md: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "docs/API.md lists routes the server does not describe: {unserved:?}"
    );
    let codes = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode enum");
    for code in codes {
        let code = code.as_str().expect("code");
        assert!(
            api_md.contains(&format!("`{code}`")),
            "error code {code} is not in docs/API.md"
        );
    }
    app.stop().await;
}
