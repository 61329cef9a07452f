//! `bench_sale` — the benchmark sale of the load tests, through the
//! Function library's typed face, for the parts of the load tests written
//! in Python (which must not spell the library's calls themselves):
//!
//! - `create --sku S --stock N`: creates the sale (limit 1 000 000, open
//!   for six hours) on the group's master;
//! - `audit --sku S`: prints the sale's audit as one JSON object;
//! - `purchase-command --sku S`: prints, one argument per line, the
//!   purchase call with `__rand_int__` in the user and order ids, as
//!   `redis-benchmark` takes it (it fills those in per request).
//!
//! The group comes from the same environment the service reads
//! (`FLASHSALE_REDIS_SENTINELS`, `_MASTER_NAME`, `_PASSWORD`, `_KEY_PREFIX`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flashsale::redis::functions::{
    AuditReply, CreateSaleReply, SaleFields, audit_call, purchase_call,
};
use flashsale::redis::keys::Keys;
use flashsale_loadtest::bench::{GroupArgs, now_unix_ms};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "bench_sale",
    about = "The load tests' benchmark sale, through the Function face"
)]
struct Args {
    #[command(flatten)]
    group: GroupArgs,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    Create {
        #[arg(long)]
        sku: String,
        #[arg(long, default_value_t = 100_000_000)]
        stock: i64,
    },
    Audit {
        #[arg(long)]
        sku: String,
    },
    PurchaseCommand {
        #[arg(long)]
        sku: String,
    },
}

async fn run(args: Args) -> Result<(), String> {
    let keys = Keys::new(args.group.prefix.clone());
    match args.action {
        Action::PurchaseCommand { sku } => {
            let cmd = purchase_call(
                &keys,
                &sku,
                "u__rand_int__",
                1,
                &format!("{sku}.o__rand_int__"),
                None,
            );
            for arg in cmd.args_iter() {
                if let redis::Arg::Simple(bytes) = arg {
                    println!("{}", String::from_utf8_lossy(bytes));
                }
            }
            Ok(())
        }
        Action::Create { sku, stock } => {
            let mut c = args.group.master_conn().await?;
            let now = now_unix_ms();
            let fields = SaleFields {
                sku: &sku,
                name: "bench",
                description: "",
                price_cents: 100,
                stock,
                starts_ms: now - 60_000,
                ends_ms: now + 6 * 3_600_000,
                per_user_limit: 1_000_000,
                currency: "USD",
                image_url: "",
            };
            let r: CreateSaleReply =
                flashsale_loadtest::bench::create_indexed_sale(&mut c, &keys, &fields)
                    .await
                    .map_err(|e| e.to_string())?;
            match r {
                CreateSaleReply::Created => Ok(()),
                other => Err(format!("fs_create_sale replied {other:?}")),
            }
        }
        Action::Audit { sku } => {
            let mut c = args.group.master_conn().await?;
            let r: AuditReply = audit_call(&keys, &sku)
                .query_async(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            let AuditReply::Sale(a) = r else {
                return Err(format!("no sale {sku}"));
            };
            println!(
                "{}",
                json!({
                    "stock_total": a.stock_total, "stock_left": a.stock_left, "sold": a.sold,
                    "orders": a.orders, "consistent": a.consistent,
                })
            );
            Ok(())
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_sale: {e}");
            ExitCode::FAILURE
        }
    }
}
