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
    /// Sentinel that cannot be reached is skipped).
    pub async fn start(group: &RedisGroup) -> SwitchWatch {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for addr in group.sentinel_addrs() {
            let Ok(client) = redis::Client::open(format!("redis://{addr}")) else {
                continue;
            };
            let Ok(mut ps) = client.get_async_pubsub().await else {
                continue;
            };
            if ps.subscribe("+switch-master").await.is_err() {
                continue;
            }
            let heard = heard.clone();
            tasks.push(tokio::spawn(async move {
                let mut stream = ps.into_on_message();
                while let Some(msg) = stream.next().await {
                    let now = Instant::now();
                    let payload: String = msg.get_payload().unwrap_or_default();
                    let mut h = heard.lock().unwrap_or_else(|e| e.into_inner());
                    if !h.iter().any(|(_, p)| *p == payload) {
                        h.push((now, payload));
                    }
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

impl Drop for SwitchWatch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
