//! When the Sentinels announced a master switch, as heard by a test: every
//! distinct `+switch-master` of any Sentinel, with the instant it was first
//! heard.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::StreamExt;

use crate::redis_group::RedisGroup;

/// Listens for `+switch-master` on every Sentinel of a group until dropped.
pub struct SwitchWatch {
    heard: Arc<Mutex<Vec<(Instant, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SwitchWatch {
    /// Subscribes on every Sentinel; returns once each one listens (a
    /// Sentinel that cannot be reached is skipped for now). A subscription
    /// that ends (its Sentinel was restarted) is made again, every 100 ms
    /// until it succeeds.
    pub async fn start(group: &RedisGroup) -> SwitchWatch {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for addr in group.sentinel_addrs() {
            let first = subscribe(&addr).await;
            let heard = heard.clone();
            tasks.push(tokio::spawn(async move {
                let mut ps = first;
                loop {
                    if let Some(p) = ps.take() {
                        let mut stream = p.into_on_message();
                        while let Some(msg) = stream.next().await {
                            let now = Instant::now();
                            let payload: String = msg.get_payload().unwrap_or_default();
                            let mut h = heard.lock().unwrap_or_else(|e| e.into_inner());
                            if !h.iter().any(|(_, p)| *p == payload) {
                                h.push((now, payload));
                            }
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    ps = subscribe(&addr).await;
                }
            }));
        }
        SwitchWatch { heard, tasks }
    }

    /// The first `+switch-master` heard, if any.
    pub fn first(&self) -> Option<Instant> {
        self.all().iter().map(|(t, _)| *t).min()
    }

    /// Every distinct switch heard (instant, payload), in the order heard.
    pub fn all(&self) -> Vec<(Instant, String)> {
        self.heard.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A subscription to `+switch-master` on the Sentinel at `addr`.
async fn subscribe(addr: &str) -> Option<redis::aio::PubSub> {
    let client = redis::Client::open(format!("redis://{addr}")).ok()?;
    let mut ps = tokio::time::timeout(std::time::Duration::from_secs(1), client.get_async_pubsub())
        .await
        .ok()?
        .ok()?;
    ps.subscribe("+switch-master").await.ok()?;
    Some(ps)
}

impl Drop for SwitchWatch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
