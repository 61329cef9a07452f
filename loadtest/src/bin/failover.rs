//! The failover harness: sells a sale through one injected fault, on the
//! Redis and Sentinel (or Redis Cluster) settings that deploy/ ships, and
//! checks every run against the contract and against fixed bounds.
//!
//! Each run starts its own Sentinel group (`GroupOptions::default()`: the
//! shipped settings, unless the test kit reports a timing override, which
//! every line then names; the `cluster-*` scenarios start a Redis Cluster
//! instead, see below), its own order ledger (the test kit's throw-away
//! PostgreSQL; `--no-ledger` runs without one, as the matrix was measured
//! before the ledger existed), two `flashsale serve` instances and two
//! `flashsale-worker`s (their own defaults, metrics on a free port,
//! `FLASHSALE_LEDGER_URL` pointing at the ledger), creates
//! a sale, and drives it with thousands of distinct shoppers who behave like
//! the page script: one Idempotency-Key per shopper, backoff and retry on 503
//! or a dropped connection, the other server when one is gone. Every 503 is
//! counted, retried or not. When about a third of the stock is sold it
//! injects one fault, lets the sale finish and the workers drain, then audits
//! from Redis and through the API.
//!
//! A run fails (and the harness exits non-zero) when any of these breaks:
//! - the invariants: no oversell, nobody above the limit, no order id
//!   promised twice, every promised order exists, the audit is consistent;
//! - every order answered 202 or 409 reaches `confirmed` (read from the
//!   master after the workers drain, with a bounded wait);
//! - no answer is 503 when the master switch completed within the hold
//!   (`FLASHSALE_FAILOVER_WAIT_MS`), nor when no data node failed at all
//!   (`kill-worker-server`, `ledger-outage`, `worker-killed-after-commit`);
//!   `kill-replica-sentinel` only reports them;
//! - `planned`: the first 202 answered after the first `+switch-master`
//!   comes within `--resume-bound-ms` of it (unless the sale sold out before);
//! - each server and worker installs at most `--link-installs-bound` Redis
//!   links per switch (`flashsale_redis_link_installs_total`, read from their
//!   metrics before the fault and after the drain; a process that does not
//!   export it counts 0, and the line says so);
//! - with the ledger (after the drain): every promised order is in the
//!   ledger exactly once (no order id twice, no shopper with two orders:
//!   the test kit's `ledger_promises`), and `flashsale audit --sku` with
//!   `FLASHSALE_LEDGER_URL` finds its `ledger` part consistent (Redis and
//!   the ledger hold the same orders, users, quantities and statuses) with
//!   nothing `pending`; the line's `ledger=` says rows, missing, doubled
//!   (ids twice, shoppers twice, the audit's `duplicated`) and differing
//!   (the audit's other totals);
//! - `ledger-outage` (PostgreSQL stopped `--outage-s`, 30 s, while the
//!   shoppers arrive slowly enough that about a third of the stock sells
//!   then and a third after): purchases are answered 202 while it is down
//!   (and no 503), the sale's `confirmed` count does not move from 1 s
//!   after the stop to the start and every order answered in that time is
//!   still `queued`, some worker says `flashsale_ledger_up 0`, and 202s
//!   are answered after it is back (unless the sale sold out before);
//! - `worker-killed-after-commit`: worker-0 runs with the worker's fault
//!   hook `FLASHSALE_WORKER_FAULT=exit-after-ledger-commit:N`
//!   (`--fault-commit`, 3; `src/worker/ledger.rs`: it aborts right after
//!   its N-th ledger commit, before that batch's `fs_confirm_batch`; the
//!   header and the scenario's lines name it). It must die by SIGABRT with
//!   entries pending whose orders are all `queued` in Redis and all in the
//!   ledger (`window=`); it is started again (a new consumer name, as a
//!   restart under systemd), and the others take its entries over once
//!   idle (`--claim-idle-ms`, 10 s) — the ledger write again changes
//!   nothing (`ON CONFLICT DO NOTHING`), then Redis confirms them.
//!
//! **Cluster scenarios** (`cluster-kill-primary`, `cluster-stop-primary`,
//! `cluster-planned`, `cluster-reshard`, `cluster-kill-replica`; `cluster-all`
//! runs the five). The run starts the test kit's Redis Cluster
//! (`RedisCluster::start(ClusterOptions::default())`: three primaries with
//! one replica each, on the shipped settings; a timing override is named
//! like the group's), and the servers and workers get
//! `FLASHSALE_REDIS_CLUSTER` (every node as a seed) and the password, no
//! Sentinel variable; their hold is the cluster's default (12 s, see the
//! header's `hold_ms`). The sale (`harness-sale`) lives in one slot, so on
//! one shard, and the fault is aimed at that shard: P is the primary owning
//! the slot, R its replica. Two more sales, one on each other shard
//! (`side_sales=`: 240 units, 10 shoppers/s from the start, sold out after
//! about 24 s), sell throughout. The faults (`inject_cluster`):
//! - `cluster-kill-primary`: kill -9 of P; once R is primary, P is started
//!   again and rejoins as R's replica, as a supervisor would start it
//!   (until then R acknowledges alone: the cluster believes no replica of
//!   it up);
//! - `cluster-stop-primary`: SIGSTOP of P for 10 s (more than the node
//!   timeout, 5 s, and the election: R is elected), then SIGCONT;
//! - `cluster-planned`: `CLUSTER FAILOVER` on R;
//! - `cluster-reshard`: the slot moved with its keys to another primary
//!   while the sale sells (`migrate_slot`: IMPORTING, MIGRATING, MIGRATE in
//!   batches, SETSLOT NODE everywhere);
//! - `cluster-kill-replica`: kill -9 of R, started again 3 s later.
//!
//! A new owner of the slot is a switch (`switches=`, `switch_after_fault_ms`:
//! when the harness saw it, polling the new primary's `ROLE` and its own
//! `CLUSTER SHARDS` every 50 ms); `ready_after_fault_ms` is when the shard
//! could take acknowledged writes again: the slot's primary serves a
//! replica in sync (`INFO replication`, `state=online`). The checks are the
//! ones above, per sale (invariants, every promise confirmed, the ledger,
//! link installs per switch; the resume bound for `cluster-planned`), and:
//! - no answer is 503 when the shard was ready within the hold — in
//!   kill/stop/planned a new primary with its replica, in kill-replica the
//!   replica back — and none at all in `cluster-reshard` (`TRYAGAIN`, `ASK`
//!   and `MOVED` are retried within the hold); past the hold they are
//!   reported, not failed;
//! - kill/stop/planned/reshard: the slot gets a new primary;
//! - the side sales, on the shards the fault does not touch: no 503, no
//!   shopper left without an answer, and 202s answered while the sale's
//!   shard was out (unless that lasted less than 2 s or they sold out).
//!
//! **Harder faults** (`partition-master-minority`,
//! `partition-app-from-sentinels`, `partition-replica`, `lagging-promotion`,
//! `sentinels-restarted`, `fork-during-sale`, `master-full`,
//! `restart-master-fast`; `harder-all` runs the eight). On the shipped Sentinel group. The partition scenarios
//! and `lagging-promotion` give every data node, Sentinel and server a host
//! of its own (the test kit's `Net`: a network namespace each, veth pairs
//! into one bridge; a cut drops every packet between two groups of hosts,
//! both ways, in an nftables bridge table; a rate limit is tc's `tbf` on a
//! host's bridge port); the harness, the workers and the ledger stay in this
//! namespace and are never cut off. From the fault on, new shoppers arrive
//! at 60/s, so the last two thirds of the stock sell through the fault and
//! after it. The faults (`inject_harder`): the master and serve-0 cut off
//! from everything else for 15 s; serve-0 cut off from the Sentinels and a
//! planned switch 1 s later, healed at 15 s; one replica cut off for 15 s;
//! `replica-priority 0` on one replica and the other's link limited to
//! 1 mbit/s and cut for the last second, then kill -9 of the master (the
//! one behind is promoted, the other must sync in full from it); each Sentinel killed and started again, a planned
//! switch, then one Sentinel started from its config of before the switch;
//! `BGREWRITEAOF` then `BGSAVE` on the master; `maxmemory` below the
//! master's used memory for 5 s; kill -9 of the master and a restart 2 s
//! later, before the Sentinels' down-after (`restart-master-fast`, as the
//! shipped systemd unit restarts it: a 503 fails the run when the master
//! had a replica again within the hold). Besides the checks above (a 503 within the
//! hold fails the run, except in `partition-master-minority` and
//! `master-full`, where the service cannot sell safely on one side or at
//! all), every run of them reports and checks:
//! - the longest time without a 202 from the fault on, when each server's
//!   link moved (`noticed_ms`, from its `flashsale_master_switches_total`),
//!   and the 503s by error code and by server, with when they were
//!   answered; every 503 must be `unavailable` and carry `Retry-After`;
//! - the split-brain accounting (`partition-master-minority`): the orders
//!   the cut-off master took (its stream, read on it just before the heal),
//!   how many of them its replicas had before the cut (they survive), how
//!   many the heal lost, how many of those were promised (must be 0), the
//!   promised orders lost (must be 0), and its role before the heal;
//! - `master-full`: a server counted the full master
//!   (`flashsale_redis_full_total`) and logged it, and 202s came after it
//!   was freed (unless the sale sold out before).
//!
//! One summary line per run, ending in `result=ok` or `result=FAIL: <reasons>`,
//! and a matrix per scenario at the end.
//!
//! ```text
//! cargo run --release -p flashsale-loadtest --bin failover -- \
//!     --scenario all --runs 20
//! cargo run --release -p flashsale-loadtest --bin failover -- \
//!     --scenario kill-master --runs 5 --no-ledger
//! cargo run --release -p flashsale-loadtest --bin failover -- \
//!     --scenario cluster-all --runs 2
//! cargo run --release -p flashsale-loadtest --bin failover -- \
//!     --scenario harder-all --runs 2
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use flashsale::config::Secret;
use flashsale::ledger::{Ledger, LedgerSettings};
use flashsale::redis::{Keys, slots};
use flashsale_loadtest::bench::cpu_seconds;
use flashsale_loadtest::redis_group::{GroupOptions, Node, RedisGroup};
use flashsale_testkit::metrics::counter_sum;
use flashsale_testkit::metrics::metric_value;
use flashsale_testkit::netns::Net;
use flashsale_testkit::orders::{
    ledger_promises, order_statuses, reached_confirmed, unconfirmed_after,
};
use flashsale_testkit::postgres::Postgres;
use flashsale_testkit::procs::redis_env;
use flashsale_testkit::redis_cluster::{ClusterOptions, RedisCluster};
use flashsale_testkit::switch::SwitchWatch;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, Semaphore};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Scenario {
    /// kill -9 of the master process.
    KillMaster,
    /// SIGSTOP of the master for 8 s, then SIGCONT.
    StopMaster,
    /// SENTINEL FAILOVER (planned switch; the old master stays alive).
    Planned,
    /// kill -9 of one replica, then of one Sentinel.
    KillReplicaSentinel,
    /// kill -9 of a worker and of one server instance.
    KillWorkerServer,
    /// kill -9 of the master, then restart it once the switch is done.
    RestartOldMaster,
    /// PostgreSQL (the order ledger) stopped for --outage-s mid-sale, then
    /// started again; the sale goes on throughout (needs the ledger).
    LedgerOutage,
    /// A worker dies (abort) between its ledger commit and the Redis
    /// confirmation of that batch, through the worker's fault hook
    /// FLASHSALE_WORKER_FAULT; it is restarted (needs the ledger).
    WorkerKilledAfterCommit,
    /// Every scenario above, in turn (the Sentinel group's).
    All,
    /// Redis Cluster: kill -9 of the primary owning the sale's slot; it is
    /// started again once its replica is primary (it rejoins as a replica).
    ClusterKillPrimary,
    /// Redis Cluster: SIGSTOP of the sale's primary for 10 s (longer than
    /// cluster-node-timeout: its replica is elected), then SIGCONT.
    ClusterStopPrimary,
    /// Redis Cluster: CLUSTER FAILOVER on the replica of the sale's primary.
    ClusterPlanned,
    /// Redis Cluster: the sale's slot moved with its keys to another primary
    /// while it sells (IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE).
    ClusterReshard,
    /// Redis Cluster: kill -9 of the replica of the sale's primary, started
    /// again 3 s later.
    ClusterKillReplica,
    /// Every cluster scenario above, in turn.
    ClusterAll,
    /// Partition: the master and serve-0 on one side, the Sentinels, the
    /// replicas and serve-1 on the other; healed after 15 s.
    PartitionMasterMinority,
    /// serve-0 cut off from the three Sentinels (it still reaches every
    /// Redis node), a planned switch while it is; healed after 15 s.
    PartitionAppFromSentinels,
    /// One replica cut off from every other process for 15 s, then healed.
    PartitionReplica,
    /// The replica that is promoted is behind the other: its link rate
    /// limited (tc tbf), the other made unpromotable (replica-priority 0);
    /// kill -9 of the master; the other resyncs in full from it.
    LaggingPromotion,
    /// Every Sentinel restarted in turn (kill -9, started again), a planned
    /// switch, then one Sentinel restarted from its config of before it.
    SentinelsRestarted,
    /// BGREWRITEAOF, then BGSAVE, on the master mid-sale.
    ForkDuringSale,
    /// maxmemory reached on the master (noeviction) for 5 s, then freed.
    MasterFull,
    /// kill -9 of the master, started again 2 s later (as the shipped
    /// systemd unit does: RestartSec=2s), before the Sentinels' down-after.
    RestartMasterFast,
    /// Every harder fault above, in turn.
    HarderAll,
}

const ALL: [Scenario; 8] = [
    Scenario::KillMaster,
    Scenario::StopMaster,
    Scenario::Planned,
    Scenario::KillReplicaSentinel,
    Scenario::KillWorkerServer,
    Scenario::RestartOldMaster,
    Scenario::LedgerOutage,
    Scenario::WorkerKilledAfterCommit,
];

const CLUSTER_ALL: [Scenario; 5] = [
    Scenario::ClusterKillPrimary,
    Scenario::ClusterStopPrimary,
    Scenario::ClusterPlanned,
    Scenario::ClusterReshard,
    Scenario::ClusterKillReplica,
];

const HARDER_ALL: [Scenario; 8] = [
    Scenario::PartitionMasterMinority,
    Scenario::PartitionAppFromSentinels,
    Scenario::PartitionReplica,
    Scenario::LaggingPromotion,
    Scenario::SentinelsRestarted,
    Scenario::ForkDuringSale,
    Scenario::MasterFull,
    Scenario::RestartMasterFast,
];

/// New shoppers per second from a harder fault on: the rest of the stock
/// (about two thirds, 1 000 units) then sells over about 17 s, so that
/// purchases go on through the fault and after its end.
const HARDER_PACE: u64 = 60;
/// How long a partition lasts before it is healed.
const PARTITION: Duration = Duration::from_secs(15);
/// How long `master-full` keeps the master full.
const FULL_FOR: Duration = Duration::from_secs(5);
/// `lagging-promotion`: the rate limit on the promoted replica's link.
const LAG_RATE: &str = "1mbit";
/// The hosts of a run that cuts the network: one per data node and
/// Sentinel (the group's order), one per server. The harness, the
/// workers and the ledger stay in this namespace (never cut off).
const NET_HOSTS: [&str; 8] = [
    "redis-0",
    "redis-1",
    "redis-2",
    "sentinel-0",
    "sentinel-1",
    "sentinel-2",
    "serve-0",
    "serve-1",
];

/// How long `cluster-stop-primary` keeps the primary frozen: longer than
/// the shipped cluster-node-timeout (5 s) and the election after it.
const CLUSTER_STOP: Duration = Duration::from_secs(10);
/// How long `cluster-kill-replica` leaves the replica dead.
const CLUSTER_REPLICA_DOWN: Duration = Duration::from_secs(3);

impl Scenario {
    /// Whether the fault gives the sale's data a new master: the Sentinels
    /// switch masters, or the sale's slot gets another primary.
    fn switches(self) -> bool {
        matches!(
            self,
            Scenario::KillMaster
                | Scenario::StopMaster
                | Scenario::Planned
                | Scenario::RestartOldMaster
                | Scenario::ClusterKillPrimary
                | Scenario::ClusterStopPrimary
                | Scenario::ClusterPlanned
                | Scenario::ClusterReshard
                | Scenario::PartitionMasterMinority
                | Scenario::PartitionAppFromSentinels
                | Scenario::LaggingPromotion
                | Scenario::SentinelsRestarted
        )
    }

    /// Whether its processes run on hosts of their own that can be cut
    /// apart (network namespaces on a bridge, the test kit's `Net`).
    fn networked(self) -> bool {
        matches!(
            self,
            Scenario::PartitionMasterMinority
                | Scenario::PartitionAppFromSentinels
                | Scenario::PartitionReplica
                | Scenario::LaggingPromotion
        )
    }

    /// Whether shoppers may be answered 503 although the switch (if any)
    /// completed within the hold: the service cannot sell safely for a
    /// while (serve-0 with an isolated master; a full master).
    fn may_answer_503(self) -> bool {
        matches!(
            self,
            Scenario::PartitionMasterMinority | Scenario::MasterFull
        )
    }

    /// Whether it runs on a Redis Cluster instead of a Sentinel group.
    fn cluster(self) -> bool {
        CLUSTER_ALL.contains(&self) || self == Scenario::ClusterAll
    }

    /// Whether the switch is a planned one (the next 202 is bounded by
    /// `--resume-bound-ms`).
    fn planned(self) -> bool {
        matches!(self, Scenario::Planned | Scenario::ClusterPlanned)
    }

    /// Whether the fault is the ledger's or needs it.
    fn needs_ledger(self) -> bool {
        matches!(
            self,
            Scenario::LedgerOutage | Scenario::WorkerKilledAfterCommit
        )
    }

    /// Whether no Redis data node fails: then no purchase may be answered 503.
    fn redis_untouched(self) -> bool {
        matches!(
            self,
            Scenario::KillWorkerServer
                | Scenario::LedgerOutage
                | Scenario::WorkerKilledAfterCommit
                | Scenario::PartitionReplica
                | Scenario::ForkDuringSale
        )
    }

    /// Whether the master's process is lost and comes back without a
    /// switch (a 503 is then allowed only past the hold from the fault).
    fn master_back(self) -> bool {
        self == Scenario::RestartMasterFast
    }
}

#[derive(Parser, Debug)]
#[command(
    about = "Sell through an injected fault and check the invariants and the failover bounds",
    long_about = "Sell through an injected fault and check the invariants and the failover bounds.\n\n\
        Runs on the Redis and Sentinel settings deploy/ ships (the test kit's default group), \
        or for the cluster-* scenarios on the shipped Redis Cluster settings (the kit's default \
        cluster: 3 primaries, 3 replicas; FLASHSALE_REDIS_CLUSTER); a timing override, if the kit \
        reports one, is named in every line. A run fails on: \
        an invariant violation; a 202/409 order that does not reach `confirmed`; any 503 when \
        the switch completed within the hold (FLASHSALE_FAILOVER_WAIT_MS) or no data node \
        failed; in `planned`, a first 202 later than --resume-bound-ms after `+switch-master`; \
        more than --link-installs-bound Redis link installs per process per switch; with the \
        order ledger (on unless --no-ledger: a throw-away PostgreSQL, the workers' \
        FLASHSALE_LEDGER_URL), a promised order missing from the ledger or in it twice, or any \
        difference `flashsale audit` finds between the ledger and Redis; in `ledger-outage`, an \
        order confirmed while PostgreSQL is down or no purchase answered meanwhile; in \
        `worker-killed-after-commit`, a worker that did not die between a ledger commit and its \
        confirmation (its pending orders queued in Redis and already in the ledger); in the \
        cluster scenarios, a 503 although the sale's shard took acknowledged writes again within \
        the hold (none at all in cluster-reshard), no new primary for the slot (kill, stop, \
        planned, reshard), or a 503 or silence on the sales of the other shards."
)]
struct Args {
    /// Scenarios to run (repeatable).
    #[arg(long, value_enum, required = true)]
    scenario: Vec<Scenario>,
    /// Runs per scenario.
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// Units in the sale.
    #[arg(long, default_value_t = 1500)]
    stock: i64,
    /// Distinct shoppers.
    #[arg(long, default_value_t = 4000)]
    shoppers: usize,
    /// Shoppers buying at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// New shoppers per second (spreads the sale so the fault lands mid-sale).
    #[arg(long, default_value_t = 1000)]
    arrival_rate: u64,
    /// Longest time from the first `+switch-master` (in a cluster: the
    /// slot's new primary) to the next 202 answer (`planned` and
    /// `cluster-planned` fail beyond it).
    #[arg(long, default_value_t = 1000)]
    resume_bound_ms: u64,
    /// Most Redis link installs per process per master switch (in a
    /// cluster: per new owner of the sale's slot).
    #[arg(long, default_value_t = 10)]
    link_installs_bound: u64,
    /// How long the workers get, after the last shopper, to confirm every promise.
    #[arg(long, default_value_t = 45)]
    drain_timeout_s: u64,
    /// Directory of the flashsale binaries (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep each run's logs here (default: a temp dir, removed on success).
    #[arg(long)]
    logs: Option<PathBuf>,
    /// Run without the order ledger: no PostgreSQL, the workers confirm in
    /// Redis alone (as the matrix was measured before the ledger existed);
    /// the ledger's own scenarios refuse it.
    #[arg(long)]
    no_ledger: bool,
    /// How long `ledger-outage` keeps PostgreSQL stopped, in seconds.
    #[arg(long, default_value_t = 30)]
    outage_s: u64,
    /// `worker-killed-after-commit`: worker-0 aborts right after this many
    /// of its ledger commits (FLASHSALE_WORKER_FAULT=exit-after-ledger-commit:N).
    #[arg(long, default_value_t = 3)]
    fault_commit: u64,
}

/// The Redis settings of the servers and workers as the product parses them
/// from this environment (which they inherit): the hold is theirs.
#[derive(Parser, Debug)]
struct ProductRedis {
    #[command(flatten)]
    redis: flashsale::config::RedisArgs,
}

const JWT: &str = "harness-jwt-secret-0123456789";
const ADMIN: &str = "harness-admin-token";
const SKU: &str = "harness-sale";
const LINK_INSTALLS: &str = "flashsale_redis_link_installs_total";
/// The worker's fault hook (`src/worker/ledger.rs`): test only, and every
/// line of a run that sets it says so.
const FAULT_VAR: &str = "FLASHSALE_WORKER_FAULT";

/// The key prefix of every run.
const PREFIX: &str = "fs";

/// The Redis a run sells on, started by the test kit on the shipped
/// settings: a Sentinel group, or a Redis Cluster of three primaries with
/// one replica each.
enum Data {
    Group(RedisGroup),
    Cluster(RedisCluster),
}

impl Data {
    /// `net`: the group's nodes each on their host of it (the first six
    /// of [`NET_HOSTS`]).
    async fn start(cluster: bool, net: Option<&Net>) -> Data {
        if cluster {
            Data::Cluster(RedisCluster::start(ClusterOptions::default()).await)
        } else {
            Data::Group(
                RedisGroup::start(GroupOptions {
                    hosts: net.map(|n| n.hosts()[..6].to_vec()),
                    ..GroupOptions::default()
                })
                .await,
            )
        }
    }

    /// What it runs: "shipped settings", or the timing override the test
    /// kit reports.
    fn settings_label(&self) -> String {
        let o = match self {
            Data::Group(g) => g.timing_override(),
            Data::Cluster(c) => c.timing_override(),
        };
        match o {
            None => "shipped settings".to_owned(),
            Some(o) => format!("TIMING OVERRIDE {o}"),
        }
    }

    /// The Redis variables of a server or worker (and of `flashsale
    /// audit`): the Sentinels, or the cluster's nodes as seeds; the other
    /// mode's variables are removed, should this environment set them.
    fn env<'a>(&self, c: &'a mut Command) -> &'a mut Command {
        match self {
            Data::Group(g) => redis_env(c, g, PREFIX)
                .env_remove("FLASHSALE_REDIS_CLUSTER")
                .env_remove("FLASHSALE_REDIS_URL"),
            Data::Cluster(rc) => c
                .env("FLASHSALE_REDIS_CLUSTER", rc.seeds_env())
                .env("FLASHSALE_REDIS_PASSWORD", rc.password())
                .env("FLASHSALE_KEY_PREFIX", PREFIX)
                .env_remove("FLASHSALE_REDIS_SENTINELS")
                .env_remove("FLASHSALE_REDIS_URL"),
        }
    }

    /// What the run's watchdog runs, once the harness is gone, to stop the
    /// data nodes: the group's script; nothing for the cluster, whose own
    /// watchdog (the test kit's) does it.
    fn watchdog_stop(&self) -> String {
        match self {
            Data::Group(g) => {
                let script =
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis-group.sh");
                format!(
                    "bash '{}' stop --dir '{dir}' >/dev/null 2>&1; rm -rf '{dir}'",
                    script.display(),
                    dir = g.dir().display()
                )
            }
            Data::Cluster(_) => "true".to_owned(),
        }
    }

    fn group(&self) -> Result<&RedisGroup, String> {
        match self {
            Data::Group(g) => Ok(g),
            Data::Cluster(_) => Err("this scenario needs a Sentinel group".into()),
        }
    }

    fn cluster(&self) -> Result<&RedisCluster, String> {
        match self {
            Data::Cluster(c) => Ok(c),
            Data::Group(_) => Err("this scenario needs a Redis Cluster".into()),
        }
    }

    /// A connection to the node that holds SKU's keys: the master, or the
    /// primary owning the sale's slot.
    async fn sale_client(&self, sku: &str) -> MultiplexedConnection {
        match self {
            Data::Group(g) => g.client(g.master_port().await).await,
            Data::Cluster(c) => c.client(c.primary_of_slot(sale_slot(sku)).await).await,
        }
    }

    /// `status` of each order of SKU, read on the node that holds the sale
    /// (`None`: no such order).
    async fn order_statuses(
        &self,
        sku: &str,
        ids: &[String],
    ) -> Result<Vec<Option<String>>, redis::RedisError> {
        match self {
            Data::Group(g) => order_statuses(g, PREFIX, ids).await,
            Data::Cluster(_) if ids.is_empty() => Ok(Vec::new()),
            Data::Cluster(_) => {
                let keys = Keys::new(PREFIX);
                let pipe = ids.iter().fold(redis::pipe(), |mut p, id| {
                    p.hget(keys.order(sku, id), "status");
                    p
                });
                pipe.query_async(&mut self.sale_client(sku).await).await
            }
        }
    }
}

/// The hash slot of a sale's keys (they share the `{sku}` tag).
fn sale_slot(sku: &str) -> u16 {
    slots::slot(Keys::new(PREFIX).sale(sku).as_bytes())
}

/// A child process that dies with the harness.
struct Proc {
    child: Child,
    name: String,
    /// Where its Prometheus metrics are served.
    metrics_url: String,
    /// Started again by the harness after its fault (its counters start
    /// over).
    restarted: bool,
}

impl Proc {
    fn pid(&self) -> Option<i32> {
        self.child.id().map(|p| p as i32)
    }
    fn kill9(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// What one run starts: the data nodes, the ledger, the servers, the
/// workers.
struct Rig {
    data: Data,
    /// The order ledger (`None`: --no-ledger).
    pg: Option<Postgres>,
    servers: Vec<(String, Proc)>,
    workers: Vec<Proc>,
    bin_dir: PathBuf,
    logs: PathBuf,
    /// PIDs of the servers and workers this run started, one a line, for
    /// the watchdog (a restarted worker is added).
    pid_file: PathBuf,
    watchdog: std::process::Child,
    /// The hosts of a run that cuts the network (dropped last: the
    /// processes in them are gone by then).
    net: Option<Net>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        // A normal end: the group's and PostgreSQL's own Drop and
        // kill_on_drop clean up.
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// What every server and worker of a run is given.
fn service_env(c: &mut Command, data: &Data) {
    data.env(c)
        .env("FLASHSALE_JWT_SECRET", JWT)
        .env("FLASHSALE_ADMIN_TOKEN", ADMIN)
        .env("FLASHSALE_RATE_LIMIT_PER_SHOPPER", "0")
        .env("FLASHSALE_RATE_LIMIT_PER_IP", "0")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
}

impl Rig {
    /// `cluster`: on a Redis Cluster; `fault`: the worker fault hook's
    /// value for worker-0, if any.
    async fn start(
        bin_dir: &Path,
        logs: &Path,
        cluster: bool,
        networked: bool,
        ledger: bool,
        fault: Option<&str>,
    ) -> Rig {
        let net = networked.then(|| Net::create(&NET_HOSTS));
        let data = Data::start(cluster, net.as_ref()).await;
        std::fs::create_dir_all(logs).expect("log dir");
        let pg = if ledger {
            Some(Postgres::init().await)
        } else {
            None
        };
        let mut servers = Vec::new();
        for i in 0..2 {
            let port = free_port();
            let log = std::fs::File::create(logs.join(format!("serve-{i}.log"))).expect("log");
            let name = format!("serve-{i}");
            // In a run that cuts the network, each server on its own host.
            let (mut c, ip) = match &net {
                Some(n) => (
                    n.command(&name, bin_dir.join("flashsale")),
                    n.host(&name).ip.clone(),
                ),
                None => (
                    Command::new(bin_dir.join("flashsale")),
                    "127.0.0.1".to_owned(),
                ),
            };
            service_env(&mut c, &data);
            c.arg("serve")
                .env("FLASHSALE_LISTEN", format!("{ip}:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::from(log));
            let child = c.spawn().expect("spawn flashsale serve");
            let base = format!("http://{ip}:{port}");
            servers.push((
                base.clone(),
                Proc {
                    child,
                    name,
                    metrics_url: format!("{base}/metrics"),
                    restarted: false,
                },
            ));
        }
        let pid_file = logs.join("pids");
        // If the harness itself is killed, Drop never runs: a watchdog stops
        // what this run started, by PID, once the harness is gone.
        let watchdog = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; for p in $(cat '{pids}' 2>/dev/null); do grep -qs flashsale /proc/$p/cmdline && kill -9 $p; done; {stop}; {net}",
            me = std::process::id(),
            pids = pid_file.display(),
            stop = data.watchdog_stop(),
            net = net
                .as_ref()
                .map_or_else(|| "true".to_owned(), Net::teardown_script),
        );
        let watchdog = std::process::Command::new("sh")
            .arg("-c")
            .arg(watchdog)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the watchdog");
        let mut rig = Rig {
            data,
            pg,
            servers,
            workers: Vec::new(),
            bin_dir: bin_dir.to_owned(),
            logs: logs.to_owned(),
            pid_file,
            watchdog,
            net,
        };
        for (_, p) in &rig.servers {
            rig.note_pid(p);
        }
        for i in 0..2 {
            let w = rig.spawn_worker(i, if i == 0 { fault } else { None });
            rig.workers.push(w);
        }
        let http = reqwest::Client::new();
        for (base, p) in &rig.servers {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(r) = http.get(format!("{base}/readyz")).send().await
                    && r.status().is_success()
                {
                    break;
                }
                assert!(Instant::now() < deadline, "{} did not become ready", p.name);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for w in &rig.workers {
            wait_metrics(&http, w).await;
        }
        rig
    }

    /// Adds a process to the watchdog's list.
    fn note_pid(&self, p: &Proc) {
        use std::io::Write;
        if let Some(pid) = p.pid()
            && let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.pid_file)
        {
            let _ = writeln!(f, "{pid}");
        }
    }

    /// Starts `flashsale-worker` number `i` (its own defaults, metrics on a
    /// free port, the ledger when there is one; `fault`: the value of the
    /// worker's fault hook). Its log is appended to, so a restart keeps
    /// what the first one wrote.
    fn spawn_worker(&self, i: usize, fault: Option<&str>) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("worker-{i}.log")))
            .expect("log");
        let port = free_port();
        let mut c = Command::new(self.bin_dir.join("flashsale-worker"));
        service_env(&mut c, &self.data);
        if let Some(pg) = &self.pg {
            c.env("FLASHSALE_LEDGER_URL", pg.url());
        }
        if let Some(f) = fault {
            c.env(FAULT_VAR, f);
        }
        c.args(["--metrics", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let p = Proc {
            child: c.spawn().expect("spawn flashsale-worker"),
            name: format!("worker-{i}"),
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
            restarted: false,
        };
        self.note_pid(&p);
        p
    }

    fn procs(&self) -> impl Iterator<Item = &Proc> {
        self.servers
            .iter()
            .map(|(_, p)| p)
            .chain(self.workers.iter())
    }
}

/// Waits until a worker serves its metrics (it is connected and running).
async fn wait_metrics(http: &reqwest::Client, w: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(&w.metrics_url).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{} does not serve its metrics",
            w.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One process's link-install counter: `Err` when its metrics cannot be read
/// (the process is gone), `Ok(None)` when it does not export the counter.
async fn link_installs(http: &reqwest::Client, p: &Proc) -> Result<Option<u64>, ()> {
    let r = http
        .get(&p.metrics_url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|_| ())?;
    let text = r.text().await.map_err(|_| ())?;
    Ok(counter_sum(&text, LINK_INSTALLS).map(|v| v as u64))
}

/// What the shoppers saw.
#[derive(Default)]
struct Observed {
    /// shopper → (final status, order id)
    finals: HashMap<usize, (u16, Option<String>)>,
    requests: u64,
    n503: u64,
    transport_errors: u64,
    /// First failure (503 or transport) after the fault, and first success after that.
    first_failure: Option<Instant>,
    first_success_after_failure: Option<Instant>,
    failed_shoppers: u64,
    /// Every 202 answered, when, with its order id.
    answered_202: Vec<(Instant, String)>,
    /// The `error` code of each 503 answer, counted.
    codes_503: BTreeMap<String, u64>,
    /// 503 answers without a `Retry-After` header.
    n503_without_retry_after: u64,
    /// Each 503: when it was sent and answered, and by which server.
    answered_503: Vec<(Instant, Instant, usize)>,
}

/// One sale of a run and what its shoppers saw: the sale the fault is
/// aimed at (the first), and in a cluster one more on each other shard.
struct SaleRun {
    sku: String,
    stock: i64,
    shoppers: usize,
    /// Shoppers buying at once.
    concurrency: usize,
    /// New shoppers per second now (a scenario may slow the sale down).
    pace: AtomicU64,
    accepted: AtomicI64,
    first_ok_after_switch: std::sync::Mutex<Option<Instant>>,
    /// When the first 410 `sold_out` was answered.
    first_sold_out: std::sync::Mutex<Option<Instant>>,
    observed: Mutex<Observed>,
}

impl SaleRun {
    fn new(sku: &str, stock: i64, shoppers: usize, concurrency: usize, rate: u64) -> SaleRun {
        SaleRun {
            sku: sku.to_owned(),
            stock,
            shoppers,
            concurrency,
            pace: AtomicU64::new(rate.max(1)),
            accepted: AtomicI64::new(0),
            first_ok_after_switch: std::sync::Mutex::new(None),
            first_sold_out: std::sync::Mutex::new(None),
            observed: Mutex::new(Observed::default()),
        }
    }
}

/// When the sale's data got a new master: every distinct `+switch-master`
/// the Sentinels announced, or every new owner of the sale's slot the
/// harness saw (a primary with the slot in its own `CLUSTER SHARDS`).
enum Switches {
    Sentinel(SwitchWatch),
    Slot(std::sync::Mutex<Vec<(Instant, String)>>),
}

impl Switches {
    fn all(&self) -> Vec<(Instant, String)> {
        match self {
            Switches::Sentinel(w) => w.all(),
            Switches::Slot(s) => s.lock().expect("lock").clone(),
        }
    }

    fn first(&self) -> Option<Instant> {
        self.all().iter().map(|(t, _)| *t).min()
    }

    /// Records a new owner of the sale's slot.
    fn slot_moved(&self, at: Instant, what: String) {
        if let Switches::Slot(s) = self {
            s.lock().expect("lock").push((at, what));
        }
    }
}

struct Shared {
    servers: Vec<String>,
    http: reqwest::Client,
    tokens: Vec<String>,
    fault_at: std::sync::Mutex<Option<Instant>>,
    switches: Switches,
    dead_server: AtomicU64,
    /// `sales[0]` is the one the fault is aimed at.
    sales: Vec<SaleRun>,
}

impl Shared {
    fn first_switch(&self) -> Option<Instant> {
        self.switches.first()
    }

    fn main(&self) -> &SaleRun {
        &self.sales[0]
    }
}

fn mint(user: &str) -> String {
    flashsale::web::auth::mint(&flashsale::config::Secret::new(JWT), user, 3600).expect("mint")
}

/// Shopper `i` of sale number `sale`.
async fn shopper(shared: Arc<Shared>, sale: usize, i: usize) {
    let s = &shared.sales[sale];
    let key = format!("h-{i}-{}", uuid::Uuid::new_v4().simple());
    let mut server = i % shared.servers.len();
    let mut attempt = 0u32;
    loop {
        if shared.dead_server.load(Ordering::SeqCst) == server as u64 + 1 {
            server = (server + 1) % shared.servers.len();
        }
        let url = format!("{}/api/sales/{}/purchase", shared.servers[server], s.sku);
        let sent = Instant::now();
        let r = shared
            .http
            .post(&url)
            .bearer_auth(&shared.tokens[i])
            .header("idempotency-key", &key)
            .json(&json!({"qty": 1}))
            .send()
            .await;
        let mut retry_after = false;
        let (status, body) = match r {
            Ok(r) => {
                let s = r.status().as_u16();
                retry_after = r.headers().contains_key("retry-after");
                (s, r.json::<Value>().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        };
        let done = Instant::now();
        {
            let mut o = s.observed.lock().await;
            o.requests += 1;
            let fault = *shared.fault_at.lock().expect("lock");
            match status {
                503 | 0 => {
                    if status == 503 {
                        o.n503 += 1;
                        let code = body["error"].as_str().unwrap_or("-").to_owned();
                        *o.codes_503.entry(code).or_default() += 1;
                        if !retry_after {
                            o.n503_without_retry_after += 1;
                        }
                        o.answered_503.push((sent, done, server));
                    } else {
                        o.transport_errors += 1;
                    }
                    if fault.is_some_and(|f| sent >= f) && o.first_failure.is_none() {
                        o.first_failure = Some(done);
                    }
                }
                202 if o.first_failure.is_some() && o.first_success_after_failure.is_none() => {
                    o.first_success_after_failure = Some(done);
                }
                _ => {}
            }
        }
        if status == 202 {
            s.accepted.fetch_add(1, Ordering::SeqCst);
            if let Some(sw) = shared.first_switch()
                && done >= sw
            {
                let mut first = s.first_ok_after_switch.lock().expect("lock");
                if first.is_none_or(|f| done < f) {
                    *first = Some(done);
                }
            }
        }
        if status == 410 && body["error"] == "sold_out" {
            let mut first = s.first_sold_out.lock().expect("lock");
            if first.is_none_or(|f| done < f) {
                *first = Some(done);
            }
        }
        if status == 0 || status >= 500 {
            // The page script's retry goes through the balancer: to the
            // other server (after a dropped connection the server may be
            // gone; after a 503 it may be the one that cannot sell).
            server = (server + 1) % shared.servers.len();
            attempt += 1;
            if attempt <= 12 {
                let backoff = 50u64 * (1 << attempt.min(5));
                tokio::time::sleep(Duration::from_millis(backoff)).await;
                continue;
            }
            let mut o = s.observed.lock().await;
            o.failed_shoppers += 1;
        }
        let id = body["order_id"].as_str().map(str::to_owned);
        let mut o = s.observed.lock().await;
        if let (202, Some(id)) = (status, &id) {
            o.answered_202.push((done, id.clone()));
        }
        o.finals.insert(i, (status, id));
        return;
    }
}

/// What a fault left for the run's line and checks.
#[derive(Default)]
struct Fault {
    /// Said in the run's line (empty for the Redis faults).
    text: String,
    /// `ledger-outage`: when PostgreSQL answered again.
    ledger_back: Option<Instant>,
    /// The cluster faults: when the sale's shard could take acknowledged
    /// writes again (its primary owns the slot and has a replica in sync).
    ready: Option<Instant>,
    /// `partition-master-minority`: what the cut-off master took.
    split: Option<Split>,
    /// `master-full`: when the master was full, and when freed again.
    full: Option<(Instant, Instant)>,
}

/// What the master on the minority side of a partition accepted while it
/// was cut off: the sale's stream entries added on it from the cut to just
/// before the heal (read on it directly; the harness is never cut off).
struct Split {
    /// Orders it took (their ids). Those its replicas got before the cut
    /// survive the heal; the others are lost, and none of them may have
    /// been promised.
    ids: Vec<String>,
    /// Of `ids`, those the final master does not have (after the drain).
    lost: Vec<String>,
    /// Its `ROLE` just before the heal.
    role: String,
}

/// Injects the scenario's fault. Failures of the fault's own checks go to
/// `violations` (the contract broke) or `reasons` (the run did not do what
/// it should); an error means the fault could not be injected.
async fn inject(
    scenario: Scenario,
    rig: &mut Rig,
    shared: &Shared,
    args: &Args,
    violations: &mut Vec<String>,
    reasons: &mut Vec<String>,
) -> Result<Fault, String> {
    if scenario.cluster() {
        return inject_cluster(scenario, rig.data.cluster()?, shared).await;
    }
    if HARDER_ALL.contains(&scenario) {
        return inject_harder(scenario, rig, shared).await;
    }
    let Data::Group(g) = &mut rig.data else {
        return Err("the Sentinel scenarios need a Sentinel group".into());
    };
    match scenario {
        Scenario::KillMaster | Scenario::RestartOldMaster => {
            let m = g.master_index().await;
            g.kill9(Node::Redis(m));
        }
        Scenario::StopMaster => {
            let m = g.master_index().await;
            g.sigstop(Node::Redis(m));
            tokio::time::sleep(Duration::from_secs(8)).await;
            g.sigcont(Node::Redis(m));
        }
        Scenario::Planned => g.sentinel_failover().await,
        Scenario::KillReplicaSentinel => {
            let m = g.master_index().await;
            let r = (m + 1) % 3;
            g.kill9(Node::Redis(r));
            tokio::time::sleep(Duration::from_secs(2)).await;
            g.kill9(Node::Sentinel(1));
        }
        Scenario::KillWorkerServer => {
            rig.workers[0].kill9();
            shared.dead_server.store(1, Ordering::SeqCst);
            rig.servers[0].1.kill9();
        }
        Scenario::LedgerOutage => {
            return ledger_outage(rig, shared, args, violations, reasons).await;
        }
        Scenario::WorkerKilledAfterCommit => {
            return worker_killed_after_commit(rig, shared, args, reasons).await;
        }
        _ => unreachable!("not a Sentinel fault: {scenario:?}"),
    }
    Ok(Fault::default())
}

/// The last entry id of the sale's stream on the node at `port` ("0-0"
/// when it has none).
async fn last_stream_id(g: &RedisGroup, port: u16) -> String {
    let mut c = g.client(port).await;
    let last: Vec<(String, HashMap<String, String>)> = redis::cmd("XREVRANGE")
        .arg(Keys::new(PREFIX).stream(SKU))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    last.into_iter()
        .next()
        .map_or_else(|| "0-0".to_owned(), |(id, _)| id)
}

/// `INFO <section>` of the data node at `port` (`None` when it does not
/// answer within 2 s).
async fn info_text(g: &RedisGroup, port: u16, section: &str) -> Option<String> {
    let url = format!(
        "redis://:{}@{}:{port}/",
        flashsale_testkit::redis_group::url_encode(g.password()),
        g.host_of_port(port)
    );
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let mut c = redis::Client::open(url)
        .ok()?
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .ok()?;
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut c)
        .await
        .ok()
}

/// `field` of `INFO <section>` on the data node at `port`.
async fn info_field(g: &RedisGroup, port: u16, section: &str, field: &str) -> Option<String> {
    let info = info_text(g, port, section).await?;
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix(field)?.strip_prefix(':'))
        .map(str::to_owned)
}

/// The harder faults (Sentinel group; the partitions on hosts of their
/// own, see [`NET_HOSTS`]). M is the master when the fault starts.
/// - partition-master-minority: M and serve-0 cut off from everything else
///   for [`PARTITION`]; what M took meanwhile is read on it before the
///   heal ([`Split`]);
/// - partition-app-from-sentinels: serve-0 cut off from the Sentinels,
///   `SENTINEL FAILOVER` 1 s later, healed [`PARTITION`] after the cut;
/// - partition-replica: one replica cut off from everything for
///   [`PARTITION`];
/// - lagging-promotion: `replica-priority 0` on replica L (the Sentinels
///   may not promote it), replica P's link limited to [`LAG_RATE`] (P falls
///   behind L: every purchase waits for P's acknowledgement, so nothing
///   promised is missing on P, but L holds more), P cut off from M for the
///   last 1 s, then kill -9 of M: P is promoted, the limit goes, and L,
///   ahead of P, must sync in full (the run fails if it did not);
/// - sentinels-restarted: each Sentinel in turn killed and started again
///   (1 s down, 2 s apart), then sentinel-2's config copied, a planned
///   switch, and sentinel-2 killed and started from the copy (a config of
///   before the switch);
/// - fork-during-sale: BGREWRITEAOF, then BGSAVE once it is done;
/// - master-full: maxmemory set below M's used memory for [`FULL_FOR`],
///   then 0 again (the group's own: the shipped settings set none).
async fn inject_harder(
    scenario: Scenario,
    rig: &mut Rig,
    shared: &Shared,
) -> Result<Fault, String> {
    let Data::Group(g) = &mut rig.data else {
        return Err("the harder faults need a Sentinel group".into());
    };
    let m = g.master_index().await;
    let mport = g.redis_port(m);
    let t0 = Instant::now();
    let since = |t: Instant| t.saturating_duration_since(t0).as_millis();
    let node = |n: Node| match n {
        Node::Redis(i) => format!("redis-{i}"),
        Node::Sentinel(i) => format!("sentinel-{i}"),
    };
    let sentinels = ["sentinel-0", "sentinel-1", "sentinel-2"];
    shared.main().pace.store(HARDER_PACE, Ordering::SeqCst);
    let mut fault = Fault::default();
    match scenario {
        Scenario::PartitionMasterMinority => {
            let net = rig.net.as_ref().ok_or("no hosts to cut apart")?;
            let last = last_stream_id(g, mport).await;
            let master = node(Node::Redis(m));
            let minority = [master.as_str(), "serve-0"];
            let majority: Vec<&str> = NET_HOSTS
                .iter()
                .copied()
                .filter(|h| !minority.contains(h))
                .collect();
            net.cut(&minority, &majority);
            tokio::time::sleep(PARTITION).await;
            let mut c = g.client(mport).await;
            let taken: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
                .arg(Keys::new(PREFIX).stream(SKU))
                .arg(format!("({last}"))
                .arg("+")
                .query_async(&mut c)
                .await
                .map_err(|e| format!("XRANGE on the cut-off master: {e}"))?;
            let role: Vec<redis::Value> = redis::cmd("ROLE")
                .query_async(&mut c)
                .await
                .unwrap_or_default();
            let role = match role.first() {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(redis::Value::SimpleString(s)) => s.clone(),
                _ => "unknown".to_owned(),
            };
            net.heal();
            fault.split = Some(Split {
                ids: taken
                    .into_iter()
                    .filter_map(|(_, f)| f.get("order_id").cloned())
                    .collect(),
                lost: Vec::new(),
                role,
            });
            fault.text = format!(
                "cut={master}+serve-0 healed_after_ms={}",
                since(Instant::now())
            );
        }
        Scenario::PartitionAppFromSentinels => {
            let net = rig.net.as_ref().ok_or("no hosts to cut apart")?;
            net.cut(&["serve-0"], &sentinels);
            tokio::time::sleep(Duration::from_secs(1)).await;
            g.sentinel_failover().await;
            tokio::time::sleep_until((t0 + PARTITION).into()).await;
            net.heal();
            fault.text = format!(
                "cut=serve-0/sentinels healed_after_ms={}",
                since(Instant::now())
            );
        }
        Scenario::PartitionReplica => {
            let net = rig.net.as_ref().ok_or("no hosts to cut apart")?;
            let r = node(Node::Redis((m + 1) % 3));
            let rest: Vec<&str> = NET_HOSTS.iter().copied().filter(|h| *h != r).collect();
            net.cut(&[r.as_str()], &rest);
            tokio::time::sleep(PARTITION).await;
            net.heal();
            fault.text = format!("cut={r} healed_after_ms={}", since(Instant::now()));
        }
        Scenario::LaggingPromotion => {
            let net = rig.net.as_ref().ok_or("no hosts to cut apart")?;
            let (p, l) = ((m + 1) % 3, (m + 2) % 3);
            let (pn, ln) = (node(Node::Redis(p)), node(Node::Redis(l)));
            // L may not be promoted: the Sentinels must choose P, behind it.
            let mut lc = g.client(g.redis_port(l)).await;
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("replica-priority")
                .arg(0)
                .query_async::<()>(&mut lc)
                .await
                .map_err(|e| format!("CONFIG SET replica-priority 0 on {ln}: {e}"))?;
            net.limit_rate(&pn, LAG_RATE);
            tokio::time::sleep(Duration::from_secs(3)).await;
            // How far P is behind L, as M sees their acknowledged offsets.
            let repl = info_text(g, mport, "replication").await.unwrap_or_default();
            let acked = |port: u16| {
                repl.lines()
                    .filter(|l| l.starts_with("slave") && l.contains(&format!("port={port},")))
                    .find_map(|l| l.split(',').find_map(|kv| kv.strip_prefix("offset=")))
                    .and_then(|o| o.trim().parse::<i64>().ok())
            };
            let behind = match (acked(g.redis_port(l)), acked(g.redis_port(p))) {
                (Some(a), Some(b)) => (a - b).to_string(),
                _ => "unknown".to_owned(),
            };
            // The last second before the kill, P gets nothing at all: what
            // L takes then, P never has (and no purchase of that second is
            // promised: each waits for P too).
            let mn = node(Node::Redis(m));
            net.cut(&[pn.as_str()], &[mn.as_str()]);
            tokio::time::sleep(Duration::from_secs(1)).await;
            g.kill9(Node::Redis(m));
            net.heal();
            let new = g.wait_master_change(mport, Duration::from_secs(30)).await;
            let promoted = if new == g.redis_port(p) {
                pn.clone()
            } else {
                format!("port {new}")
            };
            net.unlimit(&pn);
            // L had what P had not: it must sync in full from P.
            let switched = Instant::now();
            let mut synced = None;
            while switched.elapsed() < Duration::from_secs(60) {
                let up = info_field(g, g.redis_port(l), "replication", "master_link_status").await;
                let of = info_field(g, g.redis_port(l), "replication", "master_port").await;
                if up.as_deref() == Some("up") && of == Some(new.to_string()) {
                    synced = Some(switched.elapsed().as_millis());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let full = info_field(g, new, "stats", "sync_full")
                .await
                .unwrap_or_default();
            fault.text = format!(
                "lagging={pn}@{LAG_RATE}(cut from the master the last 1 s) ahead={ln}(replica-priority 0) ahead_by_bytes={behind} promoted={promoted} synced_after_switch_ms={} full_syncs_on_new_master={full}",
                synced.map_or_else(|| "none".to_owned(), |ms| ms.to_string())
            );
            if full.parse::<u64>().unwrap_or(0) == 0 {
                return Err(format!(
                    "{ln} did not sync in full from {pn}: the promoted replica was not behind"
                ));
            }
        }
        Scenario::SentinelsRestarted => {
            for i in 0..3 {
                g.kill9(Node::Sentinel(i));
                tokio::time::sleep(Duration::from_secs(1)).await;
                g.restart(Node::Sentinel(i)).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let conf = g.conf_path(Node::Sentinel(2));
            let stale = std::fs::read(&conf).map_err(|e| format!("{}: {e}", conf.display()))?;
            g.sentinel_failover().await;
            g.wait_master_change(mport, Duration::from_secs(30)).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            g.kill9(Node::Sentinel(2));
            std::fs::write(&conf, stale).map_err(|e| format!("{}: {e}", conf.display()))?;
            g.restart(Node::Sentinel(2)).await;
            fault.text = format!(
                "restarted=sentinel-0,1,2 then sentinel-2 from its config of before the switch, at {} ms",
                since(Instant::now())
            );
        }
        Scenario::ForkDuringSale => {
            let mut c = g.client(mport).await;
            let _: String = redis::cmd("BGREWRITEAOF")
                .query_async(&mut c)
                .await
                .map_err(|e| format!("BGREWRITEAOF: {e}"))?;
            let g: &RedisGroup = g;
            let idle = |f: &'static str| async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    if info_field(g, mport, "persistence", f).await.as_deref() == Some("0") {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                false
            };
            let aof = idle("aof_rewrite_in_progress").await;
            let aof_fork = info_field(g, mport, "stats", "latest_fork_usec").await;
            let aof_ms = since(Instant::now());
            let _: String = redis::cmd("BGSAVE")
                .query_async(&mut c)
                .await
                .map_err(|e| format!("BGSAVE: {e}"))?;
            let rdb = idle("rdb_bgsave_in_progress").await;
            let rdb_fork = info_field(g, mport, "stats", "latest_fork_usec").await;
            if !aof || !rdb {
                return Err("a background rewrite or save did not end within 30 s".into());
            }
            fault.text = format!(
                "bgrewriteaof_done_ms={aof_ms} fork_us={} bgsave_done_ms={} fork_us={}",
                aof_fork.unwrap_or_default(),
                since(Instant::now()),
                rdb_fork.unwrap_or_default()
            );
        }
        Scenario::MasterFull => {
            let mut c = g.client(mport).await;
            let used: u64 = info_field(g, mport, "memory", "used_memory")
                .await
                .and_then(|v| v.parse().ok())
                .ok_or("no used_memory")?;
            let cap = used.saturating_sub(512 * 1024).max(1024 * 1024);
            let set = |v: u64| {
                let mut c = c.clone();
                async move {
                    redis::cmd("CONFIG")
                        .arg("SET")
                        .arg("maxmemory")
                        .arg(v)
                        .query_async::<()>(&mut c)
                        .await
                }
            };
            set(cap)
                .await
                .map_err(|e| format!("CONFIG SET maxmemory: {e}"))?;
            let from = Instant::now();
            tokio::time::sleep(FULL_FOR).await;
            set(0)
                .await
                .map_err(|e| format!("CONFIG SET maxmemory 0: {e}"))?;
            let to = Instant::now();
            let _ = &mut c;
            fault.full = Some((from, to));
            fault.text = format!(
                "maxmemory={cap} (used {used}) for {} ms",
                FULL_FOR.as_millis()
            );
        }
        Scenario::RestartMasterFast => {
            g.kill9(Node::Redis(m));
            tokio::time::sleep(Duration::from_secs(2)).await;
            g.restart(Node::Redis(m)).await;
            let back = Instant::now();
            // Purchases can go on once a replica is attached again.
            let mut ready = None;
            while back.elapsed() < Duration::from_secs(30) {
                let n = info_field(g, mport, "replication", "connected_slaves").await;
                if n.and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| n >= 1)
                {
                    ready = Some(Instant::now());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let role = info_field(g, mport, "replication", "role").await;
            let full = info_field(g, mport, "stats", "sync_full").await;
            fault.ready = ready;
            fault.text = format!(
                "restarted_after_ms=2000 answering_after_ms={} replica_attached_after_ms={} role_after={} full_syncs={}",
                since(back),
                ready.map_or_else(|| "none".to_owned(), |t| since(t).to_string()),
                role.unwrap_or_default(),
                full.unwrap_or_default()
            );
        }
        _ => unreachable!("not a harder fault: {scenario:?}"),
    }
    Ok(fault)
}

/// The cluster faults, aimed at the shard of the sale's slot (its primary
/// P, P's replica R). Each new owner of the slot is recorded as a switch
/// the moment the harness sees it (`primary_within`: `ROLE` master and the
/// slot in its own `CLUSTER SHARDS`, polled every 50 ms); then it waits
/// until the shard can take acknowledged writes again (`ready`: the owner
/// serves a replica in sync, `attached_replicas`).
/// - kill-primary: kill -9 of P; once R is primary, P is started again
///   (it rejoins as R's replica; without it R would have none, and every
///   purchase on the shard waits for one's acknowledgement);
/// - stop-primary: SIGSTOP of P for [`CLUSTER_STOP`], then SIGCONT (P
///   finds itself failed over and follows R);
/// - planned: `CLUSTER FAILOVER` on R (P follows R at once);
/// - reshard: the slot and its keys moved to another primary
///   (`migrate_slot`), recorded when every live node names it;
/// - kill-replica: kill -9 of R, started again [`CLUSTER_REPLICA_DOWN`]
///   later.
async fn inject_cluster(
    scenario: Scenario,
    rc: &RedisCluster,
    shared: &Shared,
) -> Result<Fault, String> {
    let slot = sale_slot(&shared.main().sku);
    let primary = rc.primary_of_slot(slot).await;
    let replica = *rc
        .replicas_of(primary)
        .await
        .first()
        .ok_or_else(|| format!("primary {primary} has no replica"))?;
    let t0 = Instant::now();
    let ms =
        |d: Option<Duration>| d.map_or_else(|| "none".to_owned(), |d| d.as_millis().to_string());
    // Records R as the slot's new owner, `took` after the fault.
    let promoted = |took: Option<Duration>| {
        if let Some(d) = took {
            shared
                .switches
                .slot_moved(t0 + d, format!("slot {slot}: {primary} -> {replica}"));
        }
        if took.is_some() { replica } else { primary }
    };
    let switch_wait = Duration::from_secs(60);
    let (owner, text) = match scenario {
        Scenario::ClusterKillPrimary => {
            rc.kill(primary);
            let took = rc.primary_within(replica, switch_wait).await;
            rc.restart(primary).await;
            (
                promoted(took),
                format!(
                    "killed={primary} promoted={replica}:{} old_primary_restarted_ms={}",
                    ms(took),
                    ms(Some(t0.elapsed()))
                ),
            )
        }
        Scenario::ClusterStopPrimary => {
            rc.stop_process(primary);
            let mut took = rc.primary_within(replica, CLUSTER_STOP).await;
            tokio::time::sleep_until((t0 + CLUSTER_STOP).into()).await;
            rc.cont(primary);
            let resumed = t0.elapsed();
            if took.is_none() {
                // Not yet: it may still happen now that P answers again.
                took = rc
                    .primary_within(replica, Duration::from_secs(10))
                    .await
                    .map(|_| t0.elapsed());
            }
            (
                promoted(took),
                format!(
                    "stopped={primary} stop_ms={} promoted={replica}:{}",
                    resumed.as_millis(),
                    ms(took)
                ),
            )
        }
        Scenario::ClusterPlanned => {
            rc.request_failover(replica).await?;
            let took = rc.primary_within(replica, switch_wait).await;
            (
                promoted(took),
                format!("failover_on={replica} promoted={replica}:{}", ms(took)),
            )
        }
        Scenario::ClusterReshard => {
            let to = rc
                .primaries()
                .await
                .into_iter()
                .find(|p| *p != primary)
                .ok_or("no other primary")?;
            let keys: Result<u64, _> = redis::cmd("CLUSTER")
                .arg("COUNTKEYSINSLOT")
                .arg(slot)
                .query_async(&mut rc.client(primary).await)
                .await;
            rc.migrate_slot(slot, to).await;
            let took = t0.elapsed();
            shared
                .switches
                .slot_moved(t0 + took, format!("slot {slot}: {primary} -> {to}"));
            (
                to,
                format!(
                    "moved={primary}->{to} keys_at_start={} migrate_ms={}",
                    keys.map_or_else(|e| format!("?({e})"), |n| n.to_string()),
                    took.as_millis()
                ),
            )
        }
        Scenario::ClusterKillReplica => {
            rc.kill(replica);
            tokio::time::sleep(CLUSTER_REPLICA_DOWN).await;
            rc.restart(replica).await;
            (
                primary,
                format!(
                    "killed_replica={replica} restarted_ms={}",
                    t0.elapsed().as_millis()
                ),
            )
        }
        _ => unreachable!("not a cluster fault: {scenario:?}"),
    };
    // Until the owner serves a replica in sync (a minute at most).
    let deadline = t0 + switch_wait;
    let ready = loop {
        if rc.attached_replicas(owner).await.is_ok_and(|n| n > 0) {
            break Some(Instant::now());
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Ok(Fault {
        text: format!("slot={slot} {text}"),
        ledger_back: None,
        ready,
        ..Fault::default()
    })
}

/// One field of the sale's hash on the node that holds it (0 when absent).
async fn sale_field(data: &Data, field: &str) -> Result<i64, String> {
    let mut c = data.sale_client(SKU).await;
    let v: Option<i64> = redis::cmd("HGET")
        .arg(Keys::new(PREFIX).sale(SKU))
        .arg(field)
        .query_async(&mut c)
        .await
        .map_err(|e| e.to_string())?;
    Ok(v.unwrap_or(0))
}

/// `ledger-outage`: PostgreSQL stopped (a fast shutdown: every connection
/// dropped, the port closed) for `--outage-s`, then started again on the
/// same data and port. While it is down the shoppers arrive slowly enough
/// that about a third of the stock sells then and a third is left for
/// after. Checked: purchases are answered while it is down (the 503 bound
/// of a run where no Redis node fails applies throughout); from 1 s after
/// the stop (a batch committed just before it may still be confirmed) to
/// the start, the sale's `confirmed` count does not move and every order
/// answered 202 in that time is still `queued`; at least one worker says
/// `flashsale_ledger_up 0` meanwhile.
async fn ledger_outage(
    rig: &mut Rig,
    shared: &Shared,
    args: &Args,
    violations: &mut Vec<String>,
    reasons: &mut Vec<String>,
) -> Result<Fault, String> {
    let outage = Duration::from_secs(args.outage_s.max(2));
    let settle = Duration::from_secs(1);
    let slow = (args.stock.max(3) as u64 / 3 / outage.as_secs()).clamp(1, args.arrival_rate.max(1));
    shared.main().pace.store(slow, Ordering::SeqCst);
    let pg = rig.pg.as_mut().ok_or("no ledger to stop")?;
    pg.stop().await;
    let down_at = Instant::now();
    tokio::time::sleep(settle).await;
    let confirmed_from = sale_field(&rig.data, "confirmed").await?;
    tokio::time::sleep_until((down_at + outage / 2).into()).await;
    let mut ups = Vec::new();
    for w in &rig.workers {
        let up = match shared.http.get(&w.metrics_url).send().await {
            Ok(r) => r
                .text()
                .await
                .ok()
                .and_then(|t| metric_value(&t, "flashsale_ledger_up")),
            Err(_) => None,
        };
        ups.push(up.map_or_else(|| "-".to_owned(), |v| v.to_string()));
    }
    tokio::time::sleep_until((down_at + outage).into()).await;
    let confirmed_to = sale_field(&rig.data, "confirmed").await?;
    let now = Instant::now();
    let answered: Vec<String> = {
        let o = shared.main().observed.lock().await;
        o.answered_202
            .iter()
            .filter(|(t, _)| *t >= down_at + settle && *t <= now)
            .map(|(_, id)| id.clone())
            .collect()
    };
    let statuses = rig
        .data
        .order_statuses(SKU, &answered)
        .await
        .map_err(|e| e.to_string())?;
    let not_queued = statuses
        .iter()
        .filter(|s| s.as_deref() != Some("queued"))
        .count();
    let pg = rig.pg.as_mut().ok_or("no ledger to start")?;
    pg.start().await;
    let back = Instant::now();
    shared
        .main()
        .pace
        .store(args.arrival_rate.max(1), Ordering::SeqCst);
    let answered_while_down = shared
        .main()
        .observed
        .lock()
        .await
        .answered_202
        .iter()
        .filter(|(t, _)| *t >= down_at && *t <= back)
        .count();
    if confirmed_to != confirmed_from {
        violations.push(format!(
            "{} orders confirmed while the ledger was down",
            confirmed_to - confirmed_from
        ));
    }
    if not_queued > 0 {
        violations.push(format!(
            "{not_queued} of the {} orders answered while the ledger was down are not queued",
            answered.len()
        ));
    }
    if answered_while_down == 0 {
        reasons.push("no purchase answered 202 while the ledger was down".into());
    }
    // How long the workers take to confirm what was answered while the
    // ledger was down, once it is back (the sale goes on meanwhile).
    let caught_up = unconfirmed_after(
        rig.data.group()?,
        PREFIX,
        &answered,
        Duration::from_secs(30),
    )
    .await
    .is_empty()
    .then(|| back.elapsed().as_millis());
    if !ups.iter().any(|u| u == "0") {
        reasons.push(format!(
            "no worker said flashsale_ledger_up 0 while the ledger was down ({})",
            ups.join(",")
        ));
    }
    Ok(Fault {
        text: format!(
            "ledger_down_ms={} answered_202_while_down={answered_while_down} confirmed_while_down={} checked_queued={}/{} ledger_up_mid_outage={} confirmed_after_back_ms={}",
            back.duration_since(down_at).as_millis(),
            confirmed_to - confirmed_from,
            answered.len() - not_queued,
            answered.len(),
            ups.join(","),
            caught_up.map_or_else(|| ">30000".to_owned(), |ms| ms.to_string()),
        ),
        ledger_back: Some(back),
        ready: None,
        ..Fault::default()
    })
}

/// `worker-killed-after-commit`: worker-0 runs with the worker's fault
/// hook (`FLASHSALE_WORKER_FAULT=exit-after-ledger-commit:N`: it aborts
/// right after its N-th ledger commit, before confirming that batch).
/// Waits for its death, then checks that it died in that window: it has
/// entries pending, and each one's order is `queued` in Redis and already
/// in the ledger. Then starts it again, as systemd would (a new consumer
/// name: the entries it held are taken over by whichever worker reclaims
/// them once idle, `--claim-idle-ms`).
async fn worker_killed_after_commit(
    rig: &mut Rig,
    shared: &Shared,
    args: &Args,
    reasons: &mut Vec<String>,
) -> Result<Fault, String> {
    use std::os::unix::process::ExitStatusExt;
    let hook = format!("{FAULT_VAR}={}", fault_value(args));
    let pid = rig.workers[0].pid().ok_or("worker-0 has no pid")?;
    let status =
        match tokio::time::timeout(Duration::from_secs(60), rig.workers[0].child.wait()).await {
            Ok(Ok(st)) => st,
            _ => {
                return Err(format!(
                    "worker-0 did not die within 60 s with {hook} (fewer commits than that?)"
                ));
            }
        };
    let sold = shared.main().accepted.load(Ordering::SeqCst);
    // SIGABRT, what std::process::abort() ends a process with.
    if status.signal() != Some(6) {
        reasons.push(format!(
            "worker-0 ended with {status}, not the hook's abort"
        ));
    }
    let (pending, queued, in_ledger) = fault_window(rig, pid).await?;
    if pending == 0 || queued != pending || in_ledger != pending {
        reasons.push(format!(
            "worker-0 did not die between a ledger commit and its confirmation: {pending} entries pending, {queued} of their orders queued in Redis, {in_ledger} in the ledger"
        ));
    }
    let mut w = rig.spawn_worker(0, None);
    w.restarted = true;
    rig.workers[0] = w;
    wait_metrics(&shared.http, &rig.workers[0]).await;
    Ok(Fault {
        text: format!(
            "fault_hook=\"{hook}\" worker0_exit=\"{status}\" sold_at_death={sold} window=pending:{pending},queued:{queued},in_ledger:{in_ledger} worker0_restarted"
        ),
        ..Fault::default()
    })
}

/// The value of the fault hook worker-0 runs with in
/// `worker-killed-after-commit`.
fn fault_value(args: &Args) -> String {
    format!("exit-after-ledger-commit:{}", args.fault_commit.max(1))
}

/// What a dead worker (by PID) left: its pending entries of the sale's
/// stream, how many of their orders are `queued` in Redis, and how many
/// are in the ledger. Its consumer name is the worker's default,
/// `host-<pid>-<random>`.
async fn fault_window(rig: &Rig, pid: i32) -> Result<(usize, usize, usize), String> {
    let e2s = |e: redis::RedisError| e.to_string();
    let keys = Keys::new(PREFIX);
    let stream = keys.stream(SKU);
    let mut c = rig.data.sale_client(SKU).await;
    let consumers: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&stream)
        .arg(flashsale::worker::GROUP)
        .query_async(&mut c)
        .await
        .map_err(e2s)?;
    let mark = format!("-{pid}-");
    let Some(consumer) = consumers.consumers.iter().find(|c| c.name.contains(&mark)) else {
        return Ok((0, 0, 0));
    };
    let p: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(&stream)
        .arg(flashsale::worker::GROUP)
        .arg("-")
        .arg("+")
        .arg(100_000)
        .arg(&consumer.name)
        .query_async(&mut c)
        .await
        .map_err(e2s)?;
    if p.ids.is_empty() {
        return Ok((0, 0, 0));
    }
    let mut pipe = redis::pipe();
    for e in &p.ids {
        pipe.cmd("XRANGE").arg(&stream).arg(&e.id).arg(&e.id);
    }
    let entries: Vec<redis::streams::StreamRangeReply> =
        pipe.query_async(&mut c).await.map_err(e2s)?;
    let orders: Vec<String> = entries
        .iter()
        .flat_map(|r| r.ids.iter())
        .filter_map(|e| e.get::<String>("order_id"))
        .collect();
    let statuses = rig.data.order_statuses(SKU, &orders).await.map_err(e2s)?;
    let queued = statuses
        .iter()
        .filter(|s| s.as_deref() == Some("queued"))
        .count();
    let pg = rig.pg.as_ref().ok_or("no ledger")?;
    let ledger = connect_ledger(pg).await?;
    let mut in_ledger = 0;
    for id in &orders {
        if ledger.order(id).await.map_err(|e| e.to_string())?.is_some() {
            in_ledger += 1;
        }
    }
    ledger.close().await;
    Ok((p.ids.len(), queued, in_ledger))
}

/// A connection to the run's ledger, as the product makes one.
async fn connect_ledger(pg: &Postgres) -> Result<Ledger, String> {
    let settings = LedgerSettings::parse(&Secret::new(pg.url())).map_err(|e| e.to_string())?;
    Ledger::connect(&settings, "failover harness")
        .await
        .map_err(|e| e.to_string())
}

/// The ledger's side of a run, after the drain: `flashsale audit` with the
/// ledger (its `ledger` part must be consistent, nothing `pending`) and
/// every promised order in exactly one row (the test kit's
/// `ledger_promises`).
struct LedgerAudit {
    text: String,
    missing: u64,
    doubled: u64,
    differing: u64,
}

async fn audit_ledger(
    rig: &Rig,
    sku: &str,
    promised: &[String],
    violations: &mut Vec<String>,
    reasons: &mut Vec<String>,
) -> Option<LedgerAudit> {
    let pg = rig.pg.as_ref()?;
    let mut c = Command::new(rig.bin_dir.join("flashsale"));
    service_env(&mut c, &rig.data);
    c.env("FLASHSALE_LEDGER_URL", pg.url())
        .args(["audit", "--sku", sku]);
    let (mut differing, mut doubled, mut missing) = (0u64, 0u64, 0u64);
    let mut pending = None;
    let mut problems = Vec::new();
    match c.output().await {
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let parsed: Option<Value> = stdout
                .lines()
                .next()
                .and_then(|l| serde_json::from_str(l).ok());
            match parsed.as_ref().map(|v| &v["ledger"]) {
                Some(l) if l.is_object() => {
                    let t = |k: &str| l["totals"][k].as_u64().unwrap_or(0);
                    differing = t("missing_in_ledger")
                        + t("missing_in_redis")
                        + t("status_differs")
                        + t("fields_differ")
                        + t("unreadable");
                    doubled += t("duplicated");
                    pending = l["pending"].as_u64();
                    if l["consistent"] != true {
                        problems.push(format!("flashsale audit: ledger inconsistent: {l}"));
                    }
                }
                _ => problems.push(format!(
                    "flashsale audit printed no ledger part (exit {:?}): {stdout}{}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr)
                )),
            }
            if out.status.code() != Some(0) {
                problems.push(format!(
                    "flashsale audit with the ledger exited {:?}",
                    out.status.code()
                ));
            }
        }
        Err(e) => problems.push(format!("flashsale audit did not run: {e}")),
    }
    let mut promises_text = String::from("rows:?");
    match connect_ledger(pg).await {
        Ok(ledger) => {
            match ledger_promises(&ledger, sku, promised, 1).await {
                Ok(p) => {
                    missing = p.missing_total;
                    doubled += p.doubled();
                    promises_text = format!("rows:{}", p.rows);
                    if p.unpromised > 0 {
                        promises_text.push_str(&format!(",unpromised:{}", p.unpromised));
                    }
                    if !p.exact() {
                        problems.push(format!(
                            "ledger vs promises: {} missing (e.g. {:?}), order ids twice {:?}, shoppers past the limit {:?}",
                            p.missing_total, p.missing, p.doubled_ids, p.over_limit_users
                        ));
                    }
                }
                Err(e) => problems.push(format!("reading the ledger: {e}")),
            }
            ledger.close().await;
        }
        Err(e) => problems.push(format!("connecting to the ledger: {e}")),
    }
    violations.extend(problems);
    if let Some(n) = pending.filter(|n| *n > 0) {
        reasons.push(format!(
            "{n} orders not recorded in the ledger after the drain"
        ));
    }
    Some(LedgerAudit {
        text: format!(
            "ledger={promises_text},missing:{missing},doubled:{doubled},differing:{differing},pending:{}",
            pending.map_or_else(|| "?".to_owned(), |p| p.to_string())
        ),
        missing,
        doubled,
        differing,
    })
}

/// What one run measured; `reasons` is empty when it passed.
struct RunResult {
    scenario: Scenario,
    /// What the group ran ("shipped settings" or the override).
    settings: String,
    line: String,
    /// Invariant violations (oversell, limit, duplicates, missing orders, audit).
    violations: usize,
    unconfirmed: usize,
    n503: u64,
    resume_ms: Option<u128>,
    /// Most link installs of one process per switch (None: no process exported the counter).
    max_link_installs: Option<u64>,
    /// Promised orders missing from the ledger, doubled there, and
    /// differences the audit found (`None`: no ledger).
    ledger: Option<(u64, u64, u64)>,
    reasons: Vec<String>,
}

/// The sales beside the one the fault is aimed at, in a cluster: one on
/// each other shard, selling slowly from the start to past the fault's end,
/// to show that the other shards do not notice it.
const SIDE_STOCK: i64 = 240;
const SIDE_SHOPPERS: usize = 300;
/// New shoppers per second of a side sale: sold out after 24 s.
const SIDE_RATE: u64 = 10;
const SIDE_CONCURRENCY: usize = 16;

/// A SKU for each primary of the cluster but the one owning `SKU`'s slot,
/// whose slot that primary owns.
async fn side_skus(rc: &RedisCluster) -> Vec<String> {
    let shards = rc.shards().await;
    let main = sale_slot(SKU);
    shards
        .iter()
        .filter(|s| !s.slots.is_empty() && !s.owns(main))
        .filter_map(|shard| {
            (0..10_000)
                .map(|n| format!("harness-side-{n}"))
                .find(|sku| shard.owns(sale_slot(sku)))
        })
        .collect()
}

/// Creates a sale of `stock` units that runs for an hour, through the API.
async fn create_sale(http: &reqwest::Client, base: &str, sku: &str, stock: i64) {
    let now = time::OffsetDateTime::now_utc();
    let fmt = &time::format_description::well_known::Rfc3339;
    let r = http
        .post(format!("{base}/admin/sales"))
        .bearer_auth(ADMIN)
        .json(
            &json!({"sku": sku, "name": "Harness sale", "description": "", "price_cents": 100,
            "stock": stock, "per_user_limit": 1,
            "starts_at": (now - time::Duration::seconds(1)).format(fmt).expect("fmt"),
            "ends_at": (now + time::Duration::hours(1)).format(fmt).expect("fmt")}),
        )
        .send()
        .await
        .expect("create sale");
    assert_eq!(r.status().as_u16(), 201, "create sale {sku}");
}

/// Sends sale number `k`'s shoppers in at its pace, at most its
/// concurrency at once; ends when every one of them has.
fn drive(shared: Arc<Shared>, k: usize, started: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let sale = &shared.sales[k];
        let sem = Arc::new(Semaphore::new(sale.concurrency));
        let mut tasks = Vec::with_capacity(sale.shoppers);
        let mut due = started;
        for i in 0..sale.shoppers {
            if i > 0 {
                let rate = sale.pace.load(Ordering::SeqCst).max(1);
                due += Duration::from_micros(1_000_000 / rate);
            }
            tokio::time::sleep_until(due.into()).await;
            let permit = sem.clone().acquire_owned().await.expect("semaphore");
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                shopper(shared, k, i).await;
                drop(permit);
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    })
}

/// A sale after the drain: its promises, the API's audit, the orders'
/// statuses.
struct Drained {
    promised: Vec<String>,
    audit: Value,
    statuses: Vec<Option<String>>,
}

impl Drained {
    fn all_confirmed(&self) -> bool {
        self.statuses.len() == self.promised.len()
            && self
                .statuses
                .iter()
                .all(|s| reached_confirmed(s.as_deref()))
    }

    fn drained(&self) -> bool {
        self.audit["pending"] == 0 && self.audit["orders"].as_i64().is_some()
    }
}

/// Every promise (202/409) names an order; lets the workers confirm them
/// all, in every sale (at most `--drain-timeout-s`).
async fn drain(rig: &Rig, shared: &Shared, args: &Args, reasons: &mut Vec<String>) -> Vec<Drained> {
    let mut out = Vec::new();
    for sale in &shared.sales {
        let o = sale.observed.lock().await;
        out.push(Drained {
            promised: o
                .finals
                .values()
                .filter(|(s, _)| *s == 202 || *s == 409)
                .filter_map(|(_, id)| id.clone())
                .collect(),
            audit: Value::Null,
            statuses: Vec::new(),
        });
    }
    let live = &rig.servers[(shared.dead_server.load(Ordering::SeqCst) as usize) % 2].0;
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_timeout_s);
    loop {
        for (sale, d) in shared.sales.iter().zip(&mut out) {
            let url = format!("{live}/admin/sales/{}/audit", sale.sku);
            if let Ok(r) = shared.http.get(&url).bearer_auth(ADMIN).send().await
                && r.status().is_success()
            {
                d.audit = r.json().await.unwrap_or(Value::Null);
            }
            if let Ok(s) = rig.data.order_statuses(&sale.sku, &d.promised).await {
                d.statuses = s;
            }
        }
        if out.iter().all(|d| d.all_confirmed() && d.drained()) {
            return out;
        }
        if Instant::now() >= drain_deadline {
            for (sale, d) in shared.sales.iter().zip(&out) {
                if !d.drained() {
                    reasons.push(format!(
                        "workers did not drain {} in {} s: {}",
                        sale.sku, args.drain_timeout_s, d.audit
                    ));
                }
            }
            return out;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One sale's invariants, from the node that holds it and from the API's
/// audit: no oversell, nobody over the limit, no order id promised twice,
/// every promise on record and confirmed, one order record per unit sold.
/// Returns (sold, total, unconfirmed).
async fn audit_sale(
    data: &Data,
    sku: &str,
    d: &Drained,
    violations: &mut Vec<String>,
    reasons: &mut Vec<String>,
) -> (i64, i64, usize) {
    let keys = Keys::new(PREFIX);
    let mut redis = data.sale_client(sku).await;
    let sale: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(keys.sale(sku))
        .query_async::<HashMap<String, String>>(&mut redis)
        .await
        .expect("sale")
        .into_iter()
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k, v)))
        .collect();
    let total = sale.get("stock_total").copied().unwrap_or(-1);
    let left = sale.get("stock_left").copied().unwrap_or(-1);
    let sold = sale.get("sold").copied().unwrap_or(-1);
    let orders = sale.get("orders").copied().unwrap_or(-1);
    // Named by its SKU unless it is the sale the fault is aimed at.
    let of = if sku == SKU {
        String::new()
    } else {
        format!("{sku}: ")
    };
    if !(sold <= total && left + sold == total && left >= 0) {
        violations.push(format!(
            "{of}oversell: total {total} left {left} sold {sold}"
        ));
    }
    let units: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(keys.units(sku))
        .query_async(&mut redis)
        .await
        .expect("units");
    let over_limit = units.values().filter(|u| **u > 1).count();
    if over_limit > 0 {
        violations.push(format!("{of}{over_limit} shoppers over the limit"));
    }
    if units.values().sum::<i64>() != sold {
        violations.push(format!(
            "{of}units held {} != sold {sold}",
            units.values().sum::<i64>()
        ));
    }
    let distinct: HashSet<&String> = d.promised.iter().collect();
    if distinct.len() != d.promised.len() {
        violations.push(format!("{of}an order id was promised to two shoppers"));
    }
    let missing = d.statuses.iter().filter(|s| s.is_none()).count()
        + d.promised.len().saturating_sub(d.statuses.len());
    let unconfirmed = d.promised.len()
        - d.statuses
            .iter()
            .filter(|s| reached_confirmed(s.as_deref()))
            .count();
    if missing > 0 {
        violations.push(format!("{of}{missing} promised orders missing"));
    }
    if unconfirmed > 0 {
        reasons.push(format!(
            "{of}{unconfirmed} promised orders (202/409) never reached confirmed ({missing} of them missing)"
        ));
    }
    // Orders on record: one per sold unit, each once.
    let order_keys = flashsale_testkit::orders::order_records(&mut redis, &keys, sku)
        .await
        .expect("scan") as i64;
    if order_keys != orders || orders != sold {
        violations.push(format!(
            "{of}records {order_keys}, orders {orders}, sold {sold} disagree"
        ));
    }
    if d.audit["consistent"] != true {
        violations.push(format!("{of}API audit inconsistent: {}", d.audit));
    }
    (sold, total, unconfirmed)
}

/// What the side sales saw (the other shards of a cluster): each must
/// answer no 503 and leave no shopper without an answer, and, when the
/// fault kept the sale's shard from acknowledging writes for 2 s or more,
/// keep answering 202 meanwhile (unless sold out before).
async fn side_sales(
    shared: &Shared,
    data: &Data,
    drained: &[Drained],
    outage: (Instant, Instant),
    violations: &mut Vec<String>,
    reasons: &mut Vec<String>,
) -> String {
    let mut parts = Vec::new();
    for (sale, d) in shared.sales.iter().zip(drained).skip(1) {
        let (sold, total, unconfirmed) = audit_sale(data, &sale.sku, d, violations, reasons).await;
        let o = sale.observed.lock().await;
        let during = o
            .answered_202
            .iter()
            .filter(|(t, _)| *t >= outage.0 && *t <= outage.1)
            .count();
        let sold_out_before = sale
            .first_sold_out
            .lock()
            .expect("lock")
            .is_some_and(|t| t <= outage.1);
        if o.n503 > 0 || o.failed_shoppers > 0 {
            reasons.push(format!(
                "{}, on another shard, answered {} 503s ({} shoppers without an answer)",
                sale.sku, o.n503, o.failed_shoppers
            ));
        }
        if during == 0 && !sold_out_before && outage.1 >= outage.0 + Duration::from_secs(2) {
            reasons.push(format!(
                "{}, on another shard, answered no 202 while the sale's shard was out",
                sale.sku
            ));
        }
        parts.push(format!(
            "{}:sold={sold}/{total},promised={},unconfirmed={unconfirmed},n503={},202_during_outage={during}",
            sale.sku,
            d.promised.len(),
            o.n503
        ));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("side_sales=[{}] ", parts.join(" "))
    }
}

/// When each server's link first moved to another master (by index).
type Noticed = Arc<std::sync::Mutex<Vec<Option<Instant>>>>;

/// Polls each server's `flashsale_master_switches_total` every 100 ms
/// from `from` (for 120 s at most): when it first moved, per server.
fn watch_switches(
    http: &reqwest::Client,
    servers: &[(String, Proc)],
    from: Instant,
) -> (Noticed, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(std::sync::Mutex::new(vec![None; servers.len()]));
    let urls: Vec<String> = servers.iter().map(|(_, p)| p.metrics_url.clone()).collect();
    let http = http.clone();
    let out = seen.clone();
    let task = tokio::spawn(async move {
        let read = |url: String| {
            let http = http.clone();
            async move {
                let r = http
                    .get(url)
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .ok()?;
                counter_sum(&r.text().await.ok()?, "flashsale_master_switches_total")
            }
        };
        let mut base = Vec::new();
        for u in &urls {
            base.push(read(u.clone()).await.unwrap_or(0.0));
        }
        while from.elapsed() < Duration::from_secs(120) {
            for (i, u) in urls.iter().enumerate() {
                if out.lock().expect("lock")[i].is_some() {
                    continue;
                }
                if read(u.clone()).await.is_some_and(|v| v > base[i]) {
                    out.lock().expect("lock")[i] = Some(Instant::now());
                }
            }
            if out.lock().expect("lock").iter().all(Option::is_some) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (seen, task)
}

/// The harder faults' part of a run's line, and their own checks:
/// - every fault: the longest time without a 202 from the fault on, when
///   each server's link moved (`noticed_ms`), the 503s by error code
///   (every one must be `unavailable`);
/// - partition-master-minority (split-brain accounting): the orders the
///   cut-off master took, how many of them were promised (must be 0), the
///   promised orders lost (must be 0), and its role before the heal;
/// - master-full: some server counted the full master
///   (`flashsale_redis_full_total`) and logged it (`maxmemory`), and a 202
///   came after it was freed (unless the sale sold out before).
#[allow(clippy::too_many_arguments)]
fn harder_accounting(
    rig: &Rig,
    fault: &Fault,
    o: &Observed,
    main: &Drained,
    fault_at: Instant,
    sold_out: Option<Instant>,
    noticed: &std::sync::Mutex<Vec<Option<Instant>>>,
    server_metrics: &[String],
    violations: &mut Vec<String>,
    reasons: &mut Vec<String>,
) -> String {
    let mut text = format!(
        " longest_without_202_ms={}",
        longest_without_202(o, fault_at, sold_out)
    );
    let noticed: Vec<String> = rig
        .servers
        .iter()
        .zip(noticed.lock().expect("lock").iter())
        .map(|((_, p), t)| {
            format!(
                "{}:{}",
                p.name,
                t.map_or_else(
                    || "never".to_owned(),
                    |t| t
                        .saturating_duration_since(fault_at)
                        .as_millis()
                        .to_string()
                )
            )
        })
        .collect();
    text.push_str(&format!(" noticed_ms={}", noticed.join(",")));
    text.push_str(&format!(" codes_503={:?}", o.codes_503));
    // When the 503s were answered (ms after the fault; a request sent
    // before the fault counts from the fault too), per server.
    for (k, (_, p)) in rig.servers.iter().enumerate() {
        let at: Vec<i128> = o
            .answered_503
            .iter()
            .filter(|(_, _, s)| *s == k)
            .map(|(_, done, _)| {
                if *done >= fault_at {
                    done.duration_since(fault_at).as_millis() as i128
                } else {
                    -(fault_at.duration_since(*done).as_millis() as i128)
                }
            })
            .collect();
        if let (Some(lo), Some(hi)) = (at.iter().min(), at.iter().max()) {
            text.push_str(&format!(" {}_503s={}@{lo}..{hi}ms", p.name, at.len()));
        }
    }
    let odd: u64 = o
        .codes_503
        .iter()
        .filter(|(c, _)| *c != "unavailable")
        .map(|(_, n)| n)
        .sum();
    if odd > 0 {
        reasons.push(format!(
            "{odd} answers were 503 with another code than `unavailable`"
        ));
    }
    let lost = main.statuses.iter().filter(|s| s.is_none()).count()
        + main.promised.len().saturating_sub(main.statuses.len());
    if let Some(split) = &fault.split {
        let promised: HashSet<&String> = main.promised.iter().collect();
        let isolated_promised = split.lost.iter().filter(|id| promised.contains(id)).count();
        text.push_str(&format!(
            " split_brain=(taken_by_cut_off_master={} of_them_replicated_before_the_cut={} lost={} promised_of_the_lost={isolated_promised} promised_lost={lost} cut_off_master_role_before_heal={})",
            split.ids.len(),
            split.ids.len() - split.lost.len(),
            split.lost.len(),
            split.role
        ));
        if isolated_promised > 0 {
            violations.push(format!(
                "{isolated_promised} orders the cut-off master took, and the heal lost, were promised"
            ));
        }
        if lost > 0 {
            violations.push(format!("{lost} promised orders lost"));
        }
    }
    if let Some((_, freed)) = fault.full {
        let counted: f64 = server_metrics
            .iter()
            .filter_map(|t| counter_sum(t, "flashsale_redis_full_total"))
            .sum();
        let logged = rig.servers.iter().any(|(_, p)| {
            std::fs::read_to_string(rig.logs.join(format!("{}.log", p.name)))
                .is_ok_and(|l| l.contains("maxmemory"))
        });
        let after = o.answered_202.iter().filter(|(t, _)| *t > freed).count();
        text.push_str(&format!(
            " full_counted={counted} full_logged={logged} answered_202_after_freed={after}"
        ));
        if counted <= 0.0 {
            reasons.push("no server counted the full master (flashsale_redis_full_total)".into());
        }
        if !logged {
            reasons.push("no server logged the full master (maxmemory)".into());
        }
        if after == 0 && sold_out.is_none_or(|t| t > freed) {
            reasons.push("no 202 after the master's memory was freed".into());
        }
    }
    text
}

/// The longest time without a 202 on the sale from `from` until it sold
/// out (or its last 202), in ms.
fn longest_without_202(o: &Observed, from: Instant, sold_out: Option<Instant>) -> u128 {
    let mut times: Vec<Instant> = o
        .answered_202
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| *t >= from)
        .collect();
    times.sort_unstable();
    let end = sold_out.or_else(|| times.last().copied()).unwrap_or(from);
    let mut prev = from;
    let mut most = Duration::ZERO;
    for t in times.into_iter().chain(std::iter::once(end)) {
        if t > end {
            break;
        }
        most = most.max(t.saturating_duration_since(prev));
        prev = t;
    }
    most.as_millis()
}

async fn one_run(
    args: &Args,
    scenario: Scenario,
    run: u32,
    hold: Duration,
    bin_dir: &Path,
    logs: &Path,
) -> RunResult {
    let fault_hook = (scenario == Scenario::WorkerKilledAfterCommit).then(|| fault_value(args));
    let mut rig = Rig::start(
        bin_dir,
        logs,
        scenario.cluster(),
        scenario.networked(),
        !args.no_ledger,
        fault_hook.as_deref(),
    )
    .await;
    let settings = rig.data.settings_label();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    // The sale the fault is aimed at; in a cluster one more per other shard.
    let mut sales = vec![SaleRun::new(
        SKU,
        args.stock,
        args.shoppers,
        args.concurrency,
        args.arrival_rate,
    )];
    let switches = match &rig.data {
        Data::Group(g) => Switches::Sentinel(SwitchWatch::start(g).await),
        Data::Cluster(rc) => {
            for sku in side_skus(rc).await {
                sales.push(SaleRun::new(
                    &sku,
                    SIDE_STOCK,
                    SIDE_SHOPPERS,
                    SIDE_CONCURRENCY,
                    SIDE_RATE,
                ));
            }
            Switches::Slot(std::sync::Mutex::new(Vec::new()))
        }
    };
    for sale in &sales {
        create_sale(&http, &rig.servers[0].0, &sale.sku, sale.stock).await;
    }
    let most = sales.iter().map(|s| s.shoppers).max().unwrap_or(0);
    let tokens: Vec<String> = (0..most).map(|i| mint(&format!("h{i}"))).collect();
    let shared = Arc::new(Shared {
        servers: rig.servers.iter().map(|(b, _)| b.clone()).collect(),
        http,
        tokens,
        fault_at: std::sync::Mutex::new(None),
        switches,
        dead_server: AtomicU64::new(0),
        sales,
    });

    let started = Instant::now();
    let drivers: Vec<_> = (0..shared.sales.len())
        .map(|k| drive(shared.clone(), k, started))
        .collect();
    // Fault once about a third of the stock is sold (a worker with the
    // fault hook chooses its own moment: it is watched from the start).
    let third = args.stock / 3;
    let fault_deadline = Instant::now() + Duration::from_secs(60);
    while scenario != Scenario::WorkerKilledAfterCommit
        && shared.main().accepted.load(Ordering::SeqCst) < third
        && Instant::now() < fault_deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Link installs so far (start-up), per process.
    let mut installs_before = Vec::new();
    for p in rig.procs() {
        installs_before.push(link_installs(&shared.http, p).await);
    }
    let fault_at = Instant::now();
    *shared.fault_at.lock().expect("lock") = Some(fault_at);
    let mut violations = Vec::new();
    let mut reasons = Vec::new();
    // CPU of every server and worker from the fault until 1 s after
    // purchases resumed behind the first `+switch-master` (2 s after it
    // when none did, 30 s at most): what following the switch costs.
    let cpu_window = {
        let pids: Vec<(String, u32)> = rig
            .procs()
            .filter_map(|p| Some((p.name.clone(), p.pid()? as u32)))
            .collect();
        let before: Vec<Option<f64>> = pids.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
        let shared = shared.clone();
        tokio::spawn(async move {
            let give_up = fault_at + Duration::from_secs(30);
            while shared.first_switch().is_none() && Instant::now() < give_up {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if let Some(sw) = shared.first_switch() {
                let resumed_by = sw + Duration::from_secs(20);
                while shared
                    .main()
                    .first_ok_after_switch
                    .lock()
                    .expect("lock")
                    .is_none()
                    && Instant::now() < resumed_by.min(give_up)
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let until = match *shared.main().first_ok_after_switch.lock().expect("lock") {
                    Some(ok) => ok + Duration::from_secs(1),
                    None => sw + Duration::from_secs(2),
                };
                tokio::time::sleep_until(until.into()).await;
            }
            let window = fault_at.elapsed();
            let per_proc: Vec<String> = pids
                .iter()
                .zip(before)
                .map(|((name, pid), b)| match (b, cpu_seconds(*pid)) {
                    (Some(b), Some(a)) => format!("{name}:{:.0}", (a - b) * 1000.0),
                    _ => format!("{name}:gone"),
                })
                .collect();
            format!(
                "switch_cpu_ms={} over {:.1}s",
                per_proc.join(","),
                window.as_secs_f64()
            )
        })
    };
    // When each server's link first moved to another master.
    let noticed = watch_switches(&shared.http, &rig.servers, fault_at);
    let mut fault = match inject(
        scenario,
        &mut rig,
        &shared,
        args,
        &mut violations,
        &mut reasons,
    )
    .await
    {
        Ok(f) => f,
        Err(e) => {
            reasons.push(format!("fault injection failed: {e}"));
            Fault::default()
        }
    };
    let drive_deadline = Instant::now() + Duration::from_secs(180);
    for d in drivers {
        if tokio::time::timeout_at(drive_deadline.into(), d)
            .await
            .is_err()
        {
            reasons.push("shoppers did not finish in time".into());
            break;
        }
    }
    if scenario == Scenario::RestartOldMaster
        && let Data::Group(g) = &mut rig.data
    {
        // Bring the old master back once the switch is done; it must rejoin as a replica.
        let dead = (0..3).find(|i| g.pid(Node::Redis(*i)).is_none());
        if let Some(i) = dead {
            g.restart(Node::Redis(i)).await;
        }
        g.wait_converged(Duration::from_secs(40)).await;
    }

    // Let the workers confirm every promise, then audit through the API
    // and from Redis.
    let drained = drain(&rig, &shared, args, &mut reasons).await;

    // Link installs during the fault, per process and switch.
    let switches = shared.switches.all().len() as u64;
    let mut installs = Vec::new();
    let mut max_installs: Option<u64> = None;
    let mut exported = false;
    for (p, before) in rig.procs().zip(&installs_before) {
        let after = link_installs(&shared.http, p).await;
        let text = match (before, after) {
            // Started again after the fault: every install is the new one's.
            (_, Ok(a)) if p.restarted => format!("{}(restarted)", a.unwrap_or(0)),
            (Ok(b), Ok(a)) => {
                exported |= b.is_some() || a.is_some();
                let delta = a.unwrap_or(0).saturating_sub(b.unwrap_or(0));
                let per_switch = delta.div_ceil(switches.max(1));
                max_installs = Some(max_installs.unwrap_or(0).max(per_switch));
                if per_switch > args.link_installs_bound {
                    reasons.push(format!(
                        "{} installed {delta} Redis links in {switches} switch(es) (bound {} per switch)",
                        p.name, args.link_installs_bound
                    ));
                }
                delta.to_string()
            }
            _ => "gone".to_owned(),
        };
        installs.push(format!("{}:{text}", p.name));
    }
    let cpu_text = cpu_window
        .await
        .unwrap_or_else(|_| "switch_cpu_ms=unknown".into());
    let installs_text = if exported {
        format!(
            "link_installs={} (max {}/switch)",
            installs.join(","),
            max_installs.unwrap_or(0)
        )
    } else {
        format!("link_installs=absent ({LINK_INSTALLS} not exported; counted as 0)")
    };

    // Audit straight from Redis: the sale the fault is aimed at, then the
    // others (side sales, on the other shards of a cluster).
    let main = &drained[0];
    let promised = &main.promised;
    let (sold, total, unconfirmed) =
        audit_sale(&rig.data, SKU, main, &mut violations, &mut reasons).await;
    if scenario == Scenario::RestartOldMaster {
        // Nothing the old master had comes back as a sale.
        match sale_field(&rig.data, "sold").await {
            Ok(after) if after == sold => {}
            after => violations.push(format!(
                "sold changed after the old master rejoined: {sold} -> {after:?}"
            )),
        }
    }
    // The cluster faults: from the fault until the sale's shard could take
    // acknowledged writes again.
    let ready_ms = fault
        .ready
        .map(|r| r.saturating_duration_since(fault_at).as_millis());
    let outage = (fault_at, fault.ready.unwrap_or_else(Instant::now));
    let side_text = side_sales(
        &shared,
        &rig.data,
        &drained,
        outage,
        &mut violations,
        &mut reasons,
    )
    .await;

    // The ledger: every promise in it once, and the same as Redis.
    let mut ledger = None;
    for (sale, d) in shared.sales.iter().zip(&drained) {
        let audit = audit_ledger(&rig, &sale.sku, &d.promised, &mut violations, &mut reasons).await;
        ledger = match (ledger, audit) {
            (None, a) => a,
            (Some(l), None) => Some(l),
            (Some(mut l), Some(a)) => {
                // The side sales' totals join the first's, their text is
                // named by SKU.
                l.missing += a.missing;
                l.doubled += a.doubled;
                l.differing += a.differing;
                l.text.push_str(&format!(" {}:{}", sale.sku, a.text));
                Some(l)
            }
        };
    }
    let ledger_text = ledger
        .as_ref()
        .map_or_else(|| "ledger=off".to_owned(), |l| l.text.clone());
    let o = shared.main().observed.lock().await;
    let mut fault_text = fault.text.clone();
    if let Some(split) = &mut fault.split {
        match rig.data.order_statuses(SKU, &split.ids).await {
            Ok(st) => {
                split.lost = split
                    .ids
                    .iter()
                    .zip(st)
                    .filter(|(_, s)| s.is_none())
                    .map(|(id, _)| id.clone())
                    .collect()
            }
            Err(e) => reasons.push(format!("the split-brain orders could not be read: {e}")),
        }
    }
    if HARDER_ALL.contains(&scenario) {
        let mut server_metrics = Vec::new();
        for (_, p) in &rig.servers {
            if let Ok(r) = shared.http.get(&p.metrics_url).send().await
                && let Ok(t) = r.text().await
            {
                server_metrics.push(t);
            }
        }
        let harder = harder_accounting(
            &rig,
            &fault,
            &o,
            main,
            fault_at,
            *shared.main().first_sold_out.lock().expect("lock"),
            &noticed.0,
            &server_metrics,
            &mut violations,
            &mut reasons,
        );
        fault_text.push_str(&harder);
    }
    noticed.1.abort();
    if o.n503_without_retry_after > 0 {
        reasons.push(format!(
            "{} answers were 503 without Retry-After",
            o.n503_without_retry_after
        ));
    }
    if let Some(back) = fault.ledger_back {
        // The sale goes on once the ledger is back (unless it sold out before).
        let after = o.answered_202.iter().filter(|(t, _)| *t > back).count();
        let sold_out_before = shared
            .main()
            .first_sold_out
            .lock()
            .expect("lock")
            .is_some_and(|t| t <= back);
        if after == 0 && !sold_out_before {
            reasons.push("no purchase answered 202 after the ledger was back".into());
        }
        fault_text.push_str(&format!(" answered_202_after={after}"));
    }
    if scenario.cluster() {
        fault_text.push_str(&format!(
            " ready_after_fault_ms={}",
            ready_ms.map_or_else(|| "none".to_owned(), |ms| ms.to_string())
        ));
    }
    if !fault_text.is_empty() {
        fault_text.push(' ');
    }

    // The switch, the 503s and the resume.
    let switch = shared.first_switch();
    let switch_ms = switch.map(|s| s.saturating_duration_since(fault_at).as_millis());
    let resume = match (
        switch,
        *shared.main().first_ok_after_switch.lock().expect("lock"),
    ) {
        (Some(sw), Some(ok)) => Some(ok.saturating_duration_since(sw).as_millis()),
        _ => None,
    };
    // No 202 after the switch is no failure when the sale sold out: every
    // unit went before it.
    let sold_out_before_switch =
        resume.is_none() && shared.main().first_sold_out.lock().expect("lock").is_some();
    if scenario.switches() && switch.is_none() {
        reasons.push(if scenario.cluster() {
            "the sale's slot got no new primary".to_owned()
        } else {
            "no +switch-master was heard".to_owned()
        });
    }
    let within = |ms: Option<u128>| ms.is_some_and(|ms| ms <= hold.as_millis());
    // With Sentinels: the switch within the hold, or no data node failed.
    // In a cluster: the shard could take acknowledged writes again within
    // the hold (a new primary with a replica in sync, or the replica back),
    // or the slot only moved.
    let no503_bound = if scenario.cluster() {
        within(ready_ms) || scenario == Scenario::ClusterReshard
    } else {
        ((scenario.switches() && within(switch_ms))
            || scenario.redis_untouched()
            || (scenario.master_back() && within(ready_ms)))
            && !scenario.may_answer_503()
    };
    if no503_bound && o.n503 > 0 {
        reasons.push(format!(
            "{} answers were 503 although {}",
            o.n503,
            if scenario == Scenario::ClusterReshard {
                "the slot only moved (TRYAGAIN, ASK and MOVED are retried within the hold)"
                    .to_owned()
            } else if scenario.cluster() {
                format!(
                    "the shard took acknowledged writes again {} ms after the fault, within the {} ms hold",
                    ready_ms.unwrap_or(0),
                    hold.as_millis()
                )
            } else if scenario.switches() && within(switch_ms) {
                format!(
                    "the switch completed {} ms after the fault, within the {} ms hold",
                    switch_ms.unwrap_or(0),
                    hold.as_millis()
                )
            } else if scenario.master_back() {
                format!(
                    "the master was back with a replica {} ms after the fault, within the {} ms hold",
                    ready_ms.unwrap_or(0),
                    hold.as_millis()
                )
            } else if scenario == Scenario::PartitionReplica {
                "only a replica was cut off".to_owned()
            } else {
                "no data node failed".to_owned()
            }
        ));
    }
    if scenario.planned() {
        match resume {
            Some(ms) if ms > u128::from(args.resume_bound_ms) => reasons.push(format!(
                "the next 202 came {ms} ms after the switch (bound {} ms)",
                args.resume_bound_ms
            )),
            None if switch.is_some() && !sold_out_before_switch => {
                reasons.push("no 202 after the switch although the sale was not sold out".into())
            }
            _ => {}
        }
    }
    reasons.splice(0..0, violations.iter().cloned());

    let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
    for (s, _) in o.finals.values() {
        *by_status.entry(*s).or_default() += 1;
    }
    let window_ms = match (o.first_failure, o.first_success_after_failure) {
        (Some(f), Some(s)) => s.saturating_duration_since(f).as_millis().to_string(),
        (Some(_), None) => "open".into(),
        _ => "0".into(),
    };
    let opt = |v: Option<u128>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let line = format!(
        "scenario={scenario:?} run={run} settings=\"{settings}\" hold_ms={} sold={sold}/{total} promised={} unconfirmed={unconfirmed} statuses={by_status:?} requests={} n503={} transport_errors={} failed_shoppers={} unavailable_ms={window_ms} switches={switches} switch_after_fault_ms={} resume_after_switch_ms={} {installs_text} {cpu_text} {fault_text}{side_text}{ledger_text} violations={} result={}",
        hold.as_millis(),
        promised.len(),
        o.requests,
        o.n503,
        o.transport_errors,
        o.failed_shoppers,
        opt(switch_ms),
        match (switch, resume) {
            (Some(_), Some(ms)) => ms.to_string(),
            (Some(_), None) if sold_out_before_switch => "sold-out-before-switch".to_owned(),
            (Some(_), None) => "none".to_owned(),
            (None, _) => "-".to_owned(),
        },
        violations.len(),
        if reasons.is_empty() {
            "ok".to_owned()
        } else {
            format!("FAIL: {}", reasons.join("; "))
        },
    );
    let n503 = o.n503;
    drop(o);
    for (_, p) in &mut rig.servers {
        p.kill9();
    }
    for w in &mut rig.workers {
        w.kill9();
    }
    RunResult {
        scenario,
        settings,
        line,
        violations: violations.len(),
        unconfirmed,
        n503,
        resume_ms: resume,
        max_link_installs: exported.then_some(max_installs.unwrap_or(0)),
        ledger: ledger.map(|l| (l.missing, l.doubled, l.differing)),
        reasons,
    }
}

/// The matrix: one row per scenario over all its runs.
fn print_matrix(results: &[RunResult], settings: &str) {
    println!("failover matrix ({settings}):");
    println!(
        "  {:<24} {:>5} {:>7} {:>10} {:>11} {:>6} {:>15} {:>17} {:>24}",
        "scenario",
        "runs",
        "failed",
        "violations",
        "unconfirmed",
        "n503",
        "max_resume_ms",
        "max_link_installs",
        "ledger(miss/doub/diff)"
    );
    let mut by: BTreeMap<Scenario, Vec<&RunResult>> = BTreeMap::new();
    for r in results {
        by.entry(r.scenario).or_default().push(r);
    }
    for (scenario, rs) in by {
        let max_resume = rs
            .iter()
            .filter_map(|r| r.resume_ms)
            .max()
            .map_or_else(|| "-".to_owned(), |v| v.to_string());
        let max_links = rs
            .iter()
            .filter_map(|r| r.max_link_installs)
            .max()
            .map_or_else(|| "absent".to_owned(), |v| v.to_string());
        let ledger = if rs.iter().all(|r| r.ledger.is_none()) {
            "off".to_owned()
        } else {
            let sum = |f: fn(&(u64, u64, u64)) -> u64| {
                rs.iter()
                    .filter_map(|r| r.ledger.as_ref())
                    .map(f)
                    .sum::<u64>()
            };
            format!("{}/{}/{}", sum(|l| l.0), sum(|l| l.1), sum(|l| l.2))
        };
        println!(
            "  {:<24} {:>5} {:>7} {:>10} {:>11} {:>6} {:>15} {:>17} {:>24}",
            format!("{scenario:?}"),
            rs.len(),
            rs.iter().filter(|r| !r.reasons.is_empty()).count(),
            rs.iter().map(|r| r.violations).sum::<usize>(),
            rs.iter().map(|r| r.unconfirmed).sum::<usize>(),
            rs.iter().map(|r| r.n503).sum::<u64>(),
            max_resume,
            max_links,
            ledger
        );
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let bin_dir = args.bin_dir.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("target/release"))
    });
    for b in ["flashsale", "flashsale-worker"] {
        if !bin_dir.join(b).is_file() {
            eprintln!(
                "failover: {} not found; build with `cargo build --workspace --bins` (or pass --bin-dir)",
                bin_dir.join(b).display()
            );
            return ExitCode::FAILURE;
        }
    }
    // The hold the servers run with, with Sentinels and in a cluster:
    // their own default for the mode unless this environment (which they
    // inherit) sets FLASHSALE_FAILOVER_WAIT_MS.
    let hold = |cluster: bool| {
        let seeds = if cluster { "127.0.0.1:1" } else { "" };
        ProductRedis::try_parse_from(["flashsale", "--redis-cluster", seeds])
            .map(|p| Duration::from_millis(p.redis.failover_wait_ms()))
    };
    let (sentinel_hold, cluster_hold) = match (hold(false), hold(true)) {
        (Ok(s), Ok(c)) => (s, c),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("failover: the product's Redis settings do not parse here: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut scenarios: Vec<Scenario> = Vec::new();
    for s in &args.scenario {
        let expanded = match s {
            Scenario::All => ALL.to_vec(),
            Scenario::ClusterAll => CLUSTER_ALL.to_vec(),
            Scenario::HarderAll => HARDER_ALL.to_vec(),
            s => vec![*s],
        };
        for s in expanded {
            if !scenarios.contains(&s) {
                scenarios.push(s);
            }
        }
    }
    // The hold of each kind of run in the header, named by its variable.
    let hold_label = {
        let mut parts = Vec::new();
        if scenarios.iter().any(|s| !s.cluster()) {
            parts.push(format!("{} with Sentinels", sentinel_hold.as_millis()));
        }
        if scenarios.iter().any(|s| s.cluster()) {
            parts.push(format!("{} in a cluster", cluster_hold.as_millis()));
        }
        format!("hold_ms={} (FLASHSALE_FAILOVER_WAIT_MS)", parts.join(", "))
    };
    if args.no_ledger {
        let named: Vec<Scenario> = args
            .scenario
            .iter()
            .copied()
            .filter(|s| s.needs_ledger())
            .collect();
        if !named.is_empty() {
            eprintln!("failover: {named:?} need the ledger; drop --no-ledger");
            return ExitCode::from(2);
        }
        scenarios.retain(|s| !s.needs_ledger());
    }
    // What the workers record in: the test kit's PostgreSQL (the newest
    // version Debian installed; the kit panics naming the package when
    // there is none), or nothing.
    let ledger_label = if args.no_ledger {
        "ledger off (--no-ledger: workers confirm in Redis alone)".to_owned()
    } else {
        let bin = flashsale_testkit::postgres::bin_dir();
        let version = bin
            .parent()
            .and_then(Path::file_name)
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!(
            "ledger on (PostgreSQL {version}, the test kit's; FLASHSALE_LEDGER_URL on every worker)"
        )
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut results: Vec<RunResult> = Vec::new();
    let mut settings: Option<String> = None;
    for scenario in &scenarios {
        for run in 1..=args.runs {
            let logs = match &args.logs {
                Some(l) => l.join(format!("{scenario:?}-{run}")),
                None => std::env::temp_dir().join(format!(
                    "flashsale-failover-{}-{scenario:?}-{run}",
                    std::process::id()
                )),
            };
            let hold = if scenario.cluster() {
                cluster_hold
            } else {
                sentinel_hold
            };
            let result = rt.block_on(one_run(&args, *scenario, run, hold, &bin_dir, &logs));
            if settings.is_none() {
                // The header, once the first group has said what it runs.
                println!(
                    "failover: settings=\"{}\" {ledger_label} {hold_label} stock={} shoppers={} arrival_rate={}/s concurrency={} runs={} scenarios={scenarios:?} resume_bound_ms={} link_installs_bound={}{}",
                    result.settings,
                    args.stock,
                    args.shoppers,
                    args.arrival_rate,
                    args.concurrency,
                    args.runs,
                    args.resume_bound_ms,
                    args.link_installs_bound,
                    if scenarios.contains(&Scenario::WorkerKilledAfterCommit) {
                        format!(
                            " outage_s={} FAULT HOOK {FAULT_VAR}={} on worker-0 in worker-killed-after-commit",
                            args.outage_s,
                            fault_value(&args)
                        )
                    } else if scenarios.contains(&Scenario::LedgerOutage) {
                        format!(" outage_s={}", args.outage_s)
                    } else {
                        String::new()
                    },
                );
                settings = Some(result.settings.clone());
            }
            println!("{}", result.line);
            if result.reasons.is_empty() {
                if args.logs.is_none() {
                    let _ = std::fs::remove_dir_all(&logs);
                }
            } else {
                println!("  logs: {}", logs.display());
            }
            results.push(result);
        }
    }
    let failed = results.iter().filter(|r| !r.reasons.is_empty()).count();
    let passed = results.len() - failed;
    print_matrix(&results, settings.as_deref().unwrap_or("-"));
    println!(
        "failover: {passed} passed, {failed} failed ({}; {ledger_label})",
        settings.as_deref().unwrap_or("-")
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
