//! The Redis Cluster side of the test support: the cluster shared by the
//! tests that do not break it, apps and workers on a cluster.
//!
//! As with the Sentinel group ([`super::app::shared_group`]): tests that do
//! not break the cluster share one ([`shared_cluster`]) and isolate
//! themselves by key prefix; tests that kill, freeze, fail over or reshard
//! start their own [`RedisCluster`]. The shared one is started once on its
//! own thread and runtime, and a watchdog process stops it by PID
//! (`redis-cluster.sh stop`) once this test process is gone.

#![allow(dead_code)]

use std::sync::OnceLock;

use flashsale::config::RedisTarget;
use flashsale_testkit::procs::cluster_env;
use flashsale_testkit::redis_cluster::{ClusterOptions, RedisCluster};

use super::app::{
    AppOptions, TestApp, redis_settings_for, serve_settings_on, start_shared, unique,
    worker_command_on,
};

/// The cluster shared by every test that does not break it.
pub fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        start_shared(
            || RedisCluster::start(ClusterOptions::default()),
            "redis-cluster.sh",
            |c| c.dir().to_path_buf(),
        )
    })
}

/// The tests' Redis settings on `cluster`.
pub fn cluster_redis_settings(
    cluster: &RedisCluster,
    prefix: &str,
    opts: &AppOptions,
) -> flashsale::config::RedisSettings {
    redis_settings_for(
        RedisTarget::Cluster {
            seeds: cluster
                .nodes()
                .into_iter()
                .map(|p| ("127.0.0.1".to_owned(), p))
                .collect(),
        },
        cluster.password(),
        prefix,
        opts,
    )
}

/// An in-process `flashsale serve` on `cluster`, on a fresh key prefix
/// unless `opts` names one.
pub async fn spawn_on_cluster(cluster: &RedisCluster, opts: AppOptions) -> TestApp {
    let prefix = opts.prefix.clone().unwrap_or_else(|| unique("c"));
    TestApp::spawn_settings(
        &prefix,
        serve_settings_on(cluster_redis_settings(cluster, &prefix, &opts), &opts),
    )
    .await
}

/// `flashsale-worker` on `cluster` and key prefix `prefix`, polling fast as
/// the tests' workers do; the caller adds arguments and spawns it.
pub fn cluster_worker_command(cluster: &RedisCluster, prefix: &str) -> tokio::process::Command {
    worker_command_on(|cmd| cluster_env(cmd, cluster, prefix))
}

/// A sku starting with `name` whose slot the primary on `port` owns now.
pub async fn sku_on(cluster: &RedisCluster, port: u16, name: &str) -> String {
    let shards = cluster.shards().await;
    let shard = shards
        .iter()
        .find(|s| s.primary() == Some(port))
        .unwrap_or_else(|| panic!("{port} is not a primary: {shards:?}"));
    (0..100_000)
        .map(|i| format!("{name}-{i}"))
        .find(|sku| shard.owns(flashsale::redis::slots::slot(sku.as_bytes())))
        .unwrap_or_else(|| panic!("no sku of {name} on {port}"))
}
