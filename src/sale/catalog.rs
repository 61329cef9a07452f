//! The catalog: sales read from the replicas (master as fallback) behind a
//! short-lived in-process cache, plus sale creation and the audit.
//!
//! Staleness bound: a cached catalog is at most `FLASHSALE_CATALOG_CACHE_MS`
//! (default 200 ms) old, plus the time one refresh takes (while one request
//! refreshes an expired catalog, the others answer from the previous one),
//! plus replica lag; `stock_left` shown to shoppers is a display value and
//! never decides a purchase. Creating a sale on this
//! instance drops the cache at once; other instances see it within the bound.
//! A refresh whose caller goes away (client gone, request timeout) lets the
//! next request refresh; a refresh that fails while a previous catalog is
//! served is logged once per streak of failures, not once per request.
//!
//! Pausing, resuming and ending a sale are one Function each on the master,
//! acknowledged by the replicas; they drop this instance's cache, and other
//! instances see the new state within the staleness bound (their purchases
//! are decided by the Function, which sees it at once).
//!
//! A sale that has not opened can be changed (`update`): the Function
//! decides, by the server's clock, whether it is still before the opening,
//! and writes every change at once.
//!
//! Creating a sale is idempotent: the same sale created again (an admin's
//! retry after a lost answer, say across a master switch) is answered like
//! the first creation; another sale under an existing sku is a conflict.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Currency, Error, Sale, valid_sku};
use crate::redis::Redis;
use crate::redis::functions::{
    self, AuditReply, CreateSaleReply, Lifecycle, LifecycleReply, SaleAudit, SaleFields,
    SaleUpdate, UpdateSaleReply,
};

/// A sale's counters and consistency, as `GET /admin/sales/{sku}/audit`
/// shows them: the Function's audit, flattened, plus what follows from it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Audit {
    #[serde(flatten)]
    pub counts: SaleAudit,
    /// Orders not yet confirmed.
    pub pending: i64,
    /// Entries in the sale's dead-letter stream.
    pub dead: i64,
}

/// What an operator asks for when creating a sale (already validated).
#[derive(Clone, Debug)]
pub struct NewSale {
    pub sku: String,
    pub name: String,
    pub description: String,
    pub price_cents: i64,
    pub stock: i64,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub per_user_limit: i64,
    pub currency: Currency,
    pub image_url: Option<String>,
}

pub struct Catalog {
    redis: Redis,
    ttl: Duration,
    cache: Mutex<Option<(Instant, Arc<Vec<Sale>>)>>,
    /// One request refreshes an expired catalog; the others keep answering
    /// from the previous one meanwhile (no stampede on the replicas).
    refreshing: AtomicBool,
    /// Refreshes fail one after another (the previous catalog is served).
    failing: FailureStreak,
}

/// Holds the `refreshing` flag; dropping it (the refresh finished, or its
/// caller went away mid-refresh) lets the next request refresh.
struct Refreshing<'a>(&'a AtomicBool);

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Whether the catalog refresh is failing, so that a streak of failures is
/// logged when it starts and when it ends rather than at every request.
#[derive(Default)]
struct FailureStreak(AtomicBool);

impl FailureStreak {
    /// Records a failure; true when it starts a streak.
    fn failed(&self) -> bool {
        !self.0.swap(true, Ordering::AcqRel)
    }

    /// Records a success; true when it ends a streak.
    fn succeeded(&self) -> bool {
        self.0.load(Ordering::Acquire) && self.0.swap(false, Ordering::AcqRel)
    }
}

fn field<'a>(m: &'a HashMap<String, String>, k: &str) -> &'a str {
    m.get(k).map(String::as_str).unwrap_or("")
}

fn num(m: &HashMap<String, String>, k: &str) -> i64 {
    field(m, k).parse().unwrap_or(0)
}

fn sale_from(m: &HashMap<String, String>) -> Option<Sale> {
    let sku = m.get("sku")?.clone();
    Some(
        Sale {
            name: field(m, "name").to_owned(),
            description: field(m, "description").to_owned(),
            price_cents: num(m, "price_cents"),
            currency: Currency::stored(m.get("currency").map(String::as_str)),
            image_url: m.get("image_url").filter(|u| !u.is_empty()).cloned(),
            stock_total: num(m, "stock_total"),
            stock_left: num(m, "stock_left"),
            starts_ms: num(m, "starts_ms"),
            ends_ms: num(m, "ends_ms"),
            per_user_limit: num(m, "per_user_limit"),
            paused: field(m, "paused") == "1",
            returned: num(m, "returned"),
            sku,
            starts_at: String::new(),
            ends_at: String::new(),
        }
        .with_times(),
    )
}

/// One sale of a catalog snapshot, shared rather than copied.
#[derive(Clone)]
pub struct SaleRef {
    list: Arc<Vec<Sale>>,
    index: usize,
}

impl std::ops::Deref for SaleRef {
    type Target = Sale;
    fn deref(&self) -> &Sale {
        &self.list[self.index]
    }
}

impl Catalog {
    pub fn new(redis: Redis, ttl: Duration) -> Self {
        Self {
            redis,
            ttl,
            cache: Mutex::new(None),
            refreshing: AtomicBool::new(false),
            failing: FailureStreak::default(),
        }
    }

    pub(super) fn redis(&self) -> &Redis {
        &self.redis
    }

    /// The cached catalog and whether it is still fresh.
    fn cached(&self) -> Option<(Arc<Vec<Sale>>, bool)> {
        let guard = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .map(|(at, v)| (v.clone(), at.elapsed() < self.ttl))
    }

    /// Drops the cached catalog (after a sale is created here).
    pub fn invalidate(&self) {
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Every sale, ordered by start time (cached for the TTL).
    pub async fn list(&self) -> Result<Arc<Vec<Sale>>, Error> {
        let stale = match self.cached() {
            Some((v, true)) => return Ok(v),
            Some((v, false)) => Some(v),
            None => None,
        };
        let _refreshing = match &stale {
            Some(v) if self.refreshing.swap(true, Ordering::AcqRel) => {
                // Another request is refreshing it right now.
                return Ok(v.clone());
            }
            Some(_) => Some(Refreshing(&self.refreshing)),
            // Nothing to answer with meanwhile: every such request loads.
            None => None,
        };
        let loaded = self.load_all(false).await;
        let fresh = match (loaded, stale) {
            (Ok(v), _) => {
                if self.failing.succeeded() {
                    tracing::info!("catalog refresh works again");
                }
                Arc::new(v)
            }
            (Err(e), Some(old)) => {
                if self.failing.failed() {
                    tracing::warn!(error = %e, "catalog refresh failed; serving the previous one until a refresh works");
                } else {
                    tracing::debug!(error = %e, "catalog refresh failed again");
                }
                return Ok(old);
            }
            (Err(e), None) => return Err(e),
        };
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), fresh.clone()));
        Ok(fresh)
    }

    /// Every sale straight from Redis (`master`: from the master, not replicas).
    pub async fn load_all(&self, master: bool) -> Result<Vec<Sale>, Error> {
        let keys = self.redis.keys();
        let index_cmd = {
            let mut c = redis::cmd("ZRANGE");
            c.arg(keys.sales_index()).arg(0).arg(-1);
            c
        };
        let skus: Vec<String> = if master {
            self.redis.read_master(&index_cmd).await?
        } else {
            self.redis.read(&index_cmd).await?
        };
        let skus: Vec<String> = skus.into_iter().filter(|s| valid_sku(s)).collect();
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        let cmds: Vec<redis::Cmd> = skus
            .iter()
            .map(|sku| {
                let mut c = redis::cmd("HGETALL");
                c.arg(keys.sale(sku));
                c
            })
            .collect();
        let rows: Vec<HashMap<String, String>> = self.redis.read_each(&cmds, master).await?;
        Ok(rows.iter().filter_map(sale_from).collect())
    }

    /// One sale: from the cached catalog, else straight from Redis (a sale
    /// created on another instance a moment ago).
    pub async fn get(&self, sku: &str) -> Result<SaleRef, Error> {
        if !valid_sku(sku) {
            return Err(Error::UnknownSku);
        }
        let list = self.list().await?;
        if let Some(index) = list.iter().position(|s| s.sku == sku) {
            return Ok(SaleRef { list, index });
        }
        let cmd = {
            let mut c = redis::cmd("HGETALL");
            c.arg(self.redis.keys().sale(sku));
            c
        };
        let m: HashMap<String, String> = self.redis.read(&cmd).await?;
        let sale = sale_from(&m).ok_or(Error::UnknownSku)?;
        Ok(SaleRef {
            list: Arc::new(vec![sale]),
            index: 0,
        })
    }

    /// Creates a sale (201), answers a repeat of the same creation like the
    /// first one, or reports that another sale holds the sku (409).
    /// Acknowledged by the replicas before it returns.
    pub async fn create(&self, s: &NewSale) -> Result<Sale, Error> {
        let cmd = functions::create_sale_call(
            self.redis.keys(),
            &SaleFields {
                sku: &s.sku,
                name: &s.name,
                description: &s.description,
                price_cents: s.price_cents,
                stock: s.stock,
                starts_ms: s.starts_ms,
                ends_ms: s.ends_ms,
                per_user_limit: s.per_user_limit,
                currency: s.currency.code(),
                image_url: s.image_url.as_deref().unwrap_or(""),
            },
        );
        let reply: CreateSaleReply = self.redis.write_acked(&cmd).await?;
        if matches!(reply, CreateSaleReply::Created | CreateSaleReply::Replayed) {
            // The index after the sale (the index may live on another
            // shard): a sale is listed once it exists; a create retried
            // after a crash between the two lists it then.
            let index = functions::index_call(self.redis.keys(), &s.sku, s.starts_ms);
            let _: i64 = self.redis.write_acked(&index).await?;
        }
        self.invalidate();
        match reply {
            CreateSaleReply::Created | CreateSaleReply::Replayed => Ok(Sale {
                sku: s.sku.clone(),
                name: s.name.clone(),
                description: s.description.clone(),
                price_cents: s.price_cents,
                currency: s.currency,
                image_url: s.image_url.clone(),
                stock_total: s.stock,
                stock_left: s.stock,
                starts_ms: s.starts_ms,
                ends_ms: s.ends_ms,
                per_user_limit: s.per_user_limit,
                paused: false,
                returned: 0,
                starts_at: String::new(),
                ends_at: String::new(),
            }
            .with_times()),
            CreateSaleReply::Exists => Err(Error::SaleExists),
            CreateSaleReply::Invalid(field) => {
                Err(Error::invalid("invalid_sale", format!("invalid {field}")))
            }
        }
    }

    /// One sale read from the master now (no cache): what an operator's
    /// change left.
    pub async fn get_fresh(&self, sku: &str) -> Result<Sale, Error> {
        if !valid_sku(sku) {
            return Err(Error::UnknownSku);
        }
        let cmd = {
            let mut c = redis::cmd("HGETALL");
            c.arg(self.redis.keys().sale(sku));
            c
        };
        let m: HashMap<String, String> = self.redis.read_master(&cmd).await?;
        sale_from(&m).ok_or(Error::UnknownSku)
    }

    /// Pauses, resumes or ends a sale on the master (acknowledged by the
    /// replicas) and answers with the sale as it is now. Pausing a paused
    /// sale again is answered like the first pause; resuming a sale that is
    /// not paused, or changing an ended one, is a conflict.
    pub async fn change(&self, sku: &str, change: Lifecycle) -> Result<Sale, Error> {
        if !valid_sku(sku) {
            return Err(Error::UnknownSku);
        }
        let cmd = functions::lifecycle_call(self.redis.keys(), sku, change);
        let reply: LifecycleReply = self.redis.write_acked(&cmd).await?;
        self.invalidate();
        match reply {
            LifecycleReply::Done => self.get_fresh(sku).await,
            LifecycleReply::UnknownSku => Err(Error::UnknownSku),
            LifecycleReply::Conflict(reason) if reason == "not_paused" => {
                Err(Error::StateConflict {
                    code: "not_paused",
                    message: "the sale is not paused".into(),
                })
            }
            LifecycleReply::Conflict(_) => Err(Error::StateConflict {
                code: "sale_ended",
                message: "the sale has ended".into(),
            }),
        }
    }

    /// Changes a sale that has not opened yet (acknowledged by the replicas)
    /// and answers with the sale as it is now. After the opening: 409
    /// `sale_open`; after the end: 409 `sale_ended`; a value the Function
    /// refuses (an empty window): 422 `invalid_sale`.
    pub async fn update(&self, sku: &str, u: &SaleUpdate) -> Result<Sale, Error> {
        if !valid_sku(sku) {
            return Err(Error::UnknownSku);
        }
        let cmd = functions::update_sale_call(self.redis.keys(), sku, u);
        let reply: UpdateSaleReply = self.redis.write_acked(&cmd).await?;
        self.invalidate();
        match reply {
            UpdateSaleReply::Updated => {
                let sale = self.get_fresh(sku).await?;
                if u.starts_ms.is_some() {
                    let index = functions::index_call(self.redis.keys(), sku, sale.starts_ms);
                    let _: i64 = self.redis.write_acked(&index).await?;
                    self.invalidate();
                }
                Ok(sale)
            }
            UpdateSaleReply::UnknownSku => Err(Error::UnknownSku),
            UpdateSaleReply::Invalid(field) => {
                Err(Error::invalid("invalid_sale", format!("invalid {field}")))
            }
            UpdateSaleReply::Conflict(reason) if reason == "ended" => Err(Error::StateConflict {
                code: "sale_ended",
                message: "the sale has ended".into(),
            }),
            UpdateSaleReply::Conflict(_) => Err(Error::StateConflict {
                code: "sale_open",
                message: "the sale has opened; it can no longer be changed".into(),
            }),
        }
    }

    /// The audit of one sale, read from the master.
    pub async fn audit(&self, sku: &str) -> Result<Audit, Error> {
        if !valid_sku(sku) {
            return Err(Error::UnknownSku);
        }
        let keys = self.redis.keys();
        let mut pipe = redis::pipe();
        pipe.add_command(functions::audit_call(keys, sku))
            .cmd("XLEN")
            .arg(keys.dead_letters(sku));
        let (row, dead): (AuditReply, i64) = self.redis.read_master(&pipe).await?;
        let AuditReply::Sale(a) = row else {
            return Err(Error::UnknownSku);
        };
        Ok(Audit {
            pending: a.orders - a.confirmed,
            dead,
            counts: a,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_in_streaks() {
        let f = FailureStreak::default();
        assert!(!f.succeeded(), "no streak to end");
        assert!(f.failed(), "the first failure starts a streak");
        assert!(!f.failed(), "later ones are in the same streak");
        assert!(!f.failed());
        assert!(f.succeeded(), "a success ends it");
        assert!(!f.succeeded());
        assert!(f.failed(), "the next failure starts another");
    }

    #[test]
    fn a_dropped_refresh_releases_the_flag() {
        let flag = AtomicBool::new(true);
        drop(Refreshing(&flag));
        assert!(!flag.load(Ordering::Acquire));
    }
}
