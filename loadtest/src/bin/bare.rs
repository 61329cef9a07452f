//! `bare` — the ceiling of the HTTP layer: a bare axum server on the same
//! runtime (tokio multi-thread, one worker per core)
//! and allocator (mimalloc) as `flashsale serve`, with no middleware, no
//! state and no Redis.
//!
//! - `GET <any path>` → 200 with a fixed JSON body shaped like a product
//!   (`GET /api/products/{sku}` of flashsale), so browse figures compare like
//!   with like;
//! - `POST <any path>` → reads the body, 410 `{"error":"sold_out",…}` — what
//!   flashsale answers a purchase of a sold-out sale.
//!
//! Usage: `bare --listen 127.0.0.1:18080`. Stops on SIGTERM/SIGINT.

use axum::Router;
use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use clap::Parser;

/// The same allocator as `flashsale serve`, so the ceiling compares like
/// with like.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "bare",
    about = "A bare axum handler: the HTTP ceiling of flashsale's load tests"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: std::net::SocketAddr,
}

const PRODUCT: &str = r#"{"sku":"bare-0001","name":"Bare handler","description":"A fixed body of the size of a product","price_cents":1999,"stock_total":1000,"stock_left":1000,"per_user_limit":1,"starts_at":"2030-01-01T00:00:00.000Z","ends_at":"2030-01-01T01:00:00.000Z","state":"live","server_time":"2030-01-01T00:00:01.000Z"}"#;
const SOLD_OUT: &str = r#"{"error":"sold_out","message":"the sale is sold out"}"#;

async fn get() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], PRODUCT)
}

async fn post(_body: Bytes) -> impl IntoResponse {
    (
        StatusCode::GONE,
        [(header::CONTENT_TYPE, "application/json")],
        SOLD_OUT,
    )
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let app = Router::new().fallback(axum::routing::get(get).post(post));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("bare: listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await
}
