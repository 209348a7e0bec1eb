//! The initial load over Schematic's REST API (spec §2): count, then pages,
//! a few at a time, rate-limited, each page retried, behind a circuit
//! breaker. Companies and users go to the pipeline as REST documents
//! (`rest.Company`, `rest.User`) as the pages of a [`SnapshotLoad`]; the
//! plugin converts them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use super::config::LoadConfig;
use super::protocol::{REST_COMPANY, REST_USER};
use super::status::{DatastreamStatus, bump};
use crate::breaker::CircuitBreaker;
use crate::cache::redis::config::MAX_DURATION;
use crate::model::{Change, ChangeOp};
use crate::sources::{SnapshotLoad, SourceBatch};

/// Why a load stopped early.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The pipeline is gone.
    #[error("the pipeline stopped")]
    Closed,
    /// Cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// What a finished load read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOutcome {
    /// Every count and page arrived, and no entity went missing between
    /// pages: evicting what the load did not see is safe.
    pub complete: bool,
    /// Entities read.
    pub entities: u64,
    /// Pages that failed after every retry.
    pub failed_pages: u64,
}

/// One REST collection to page.
struct Collection {
    path: &'static str,
    collection: &'static str,
}

const COLLECTIONS: [Collection; 2] = [
    Collection {
        path: "companies",
        collection: REST_COMPANY,
    },
    Collection {
        path: "users",
        collection: REST_USER,
    },
];

/// The collections an initial load reads, as the pipeline routes them.
pub fn loaded_collections() -> Vec<String> {
    COLLECTIONS
        .iter()
        .map(|c| c.collection.to_owned())
        .collect()
}

#[derive(Deserialize)]
struct CountResponse {
    data: CountData,
}

#[derive(Deserialize)]
struct CountData {
    count: u64,
}

#[derive(Deserialize)]
struct PageResponse<'a> {
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<serde_json::Value>,
}

/// Pages Schematic's REST API into the pipeline.
#[derive(Clone)]
pub struct RestLoader {
    client: reqwest::Client,
    base: String,
    api_key: String,
    source: String,
    config: LoadConfig,
    breaker: Arc<CircuitBreaker>,
    pacer: Arc<Mutex<tokio::time::Interval>>,
    status: Arc<DatastreamStatus>,
}

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("HTTP {status} from {url}")]
    Status { status: u16, url: String },
    #[error("unexpected body from {url}: {reason}")]
    Body { url: String, reason: String },
}

impl RestLoader {
    /// A loader for the API at `base` (no trailing slash) with `api_key`,
    /// sending batches as source `source`.
    pub fn new(
        base: &str,
        api_key: &str,
        source: &str,
        config: LoadConfig,
        status: Arc<DatastreamStatus>,
    ) -> Result<RestLoader, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms.max(1)))
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        let mut pacer = tokio::time::interval(pace(config.rate_limit_rps));
        pacer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(RestLoader {
            client,
            base: base.trim_end_matches('/').to_owned(),
            api_key: api_key.to_owned(),
            source: source.to_owned(),
            breaker: Arc::new(CircuitBreaker::new(
                config.breaker_threshold.max(1),
                Duration::from_millis(config.breaker_timeout_ms).min(MAX_DURATION),
            )),
            config,
            pacer: Arc::new(Mutex::new(pacer)),
            status,
        })
    }

    /// Load companies, then users, into `out` as the pages of `load`.
    pub async fn load(
        &self,
        load: &SnapshotLoad,
        out: &mpsc::Sender<SourceBatch>,
        cancel: &CancellationToken,
    ) -> Result<LoadOutcome, LoadError> {
        let mut outcome = LoadOutcome {
            complete: true,
            ..LoadOutcome::default()
        };
        for collection in &COLLECTIONS {
            let part = self.load_collection(collection, load, out, cancel).await?;
            outcome.complete &= part.complete;
            outcome.entities += part.entities;
            outcome.failed_pages += part.failed_pages;
        }
        Ok(outcome)
    }

    async fn load_collection(
        &self,
        collection: &Collection,
        load: &SnapshotLoad,
        out: &mpsc::Sender<SourceBatch>,
        cancel: &CancellationToken,
    ) -> Result<LoadOutcome, LoadError> {
        let count_url = format!("{}/{}/count", self.base, collection.path);
        let count = match self
            .with_retries(cancel, || async {
                let body = self.get(&count_url).await?;
                serde_json::from_slice::<CountResponse>(&body)
                    .map(|c| c.data.count)
                    .map_err(|e| RequestError::Body {
                        url: count_url.clone(),
                        reason: e.to_string(),
                    })
            })
            .await?
        {
            Some(count) => count,
            None => {
                return Ok(LoadOutcome {
                    complete: false,
                    failed_pages: 1,
                    ..LoadOutcome::default()
                });
            }
        };
        let page_size = self.config.page_size.max(1) as u64;
        let pages = count.div_ceil(page_size);
        tracing::info!(source = %self.source, collection = collection.path, count, pages, "initial load: paging");
        let seen: Arc<std::sync::Mutex<HashSet<String>>> = Arc::default();
        let results: Vec<Result<bool, LoadError>> = futures_util::stream::iter(0..pages)
            .map(|page| {
                let seen = seen.clone();
                async move {
                    let url = format!(
                        "{}/{}?limit={}&offset={}",
                        self.base,
                        collection.path,
                        page_size,
                        page * page_size
                    );
                    let Some(changes) = self
                        .with_retries(cancel, || async {
                            let body = self.get(&url).await?;
                            self.changes(&body, collection.collection)
                                .map_err(|reason| RequestError::Body {
                                    url: url.clone(),
                                    reason,
                                })
                        })
                        .await?
                    else {
                        return Ok(false);
                    };
                    bump(&self.status.counters.pages);
                    if let Ok(mut seen) = seen.lock() {
                        seen.extend(changes.iter().map(|c| c.id.clone()));
                    }
                    if !changes.is_empty() {
                        bump(&self.status.counters.batches);
                        out.send(load.page(changes))
                            .await
                            .map_err(|_| LoadError::Closed)?;
                    }
                    Ok(true)
                }
            })
            .buffer_unordered(self.config.max_concurrent.max(1))
            .collect()
            .await;
        let mut outcome = LoadOutcome {
            complete: true,
            ..LoadOutcome::default()
        };
        for result in results {
            if !result? {
                outcome.failed_pages += 1;
                outcome.complete = false;
            }
        }
        let distinct = seen.lock().map(|s| s.len() as u64).unwrap_or(0);
        outcome.entities = distinct;
        self.status
            .counters
            .loaded_entities
            .fetch_add(distinct, std::sync::atomic::Ordering::Relaxed);
        if distinct < count {
            // Entities deleted while paging shift later pages: one may have
            // been skipped, so nothing is evicted this time.
            tracing::warn!(source = %self.source, collection = collection.path, count, read = distinct,
                "initial load read fewer entities than counted; nothing will be evicted");
            outcome.complete = false;
        }
        Ok(outcome)
    }

    /// The changes of one page body.
    fn changes(&self, body: &[u8], collection: &str) -> Result<Vec<Change>, String> {
        let page: PageResponse<'_> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        page.data
            .into_iter()
            .map(|raw| {
                let id = serde_json::from_str::<IdOnly>(raw.get())
                    .map_err(|e| format!("entity is not an object: {e}"))?
                    .id;
                let id = match id {
                    Some(serde_json::Value::String(id)) => id,
                    Some(serde_json::Value::Number(n)) => n.to_string(),
                    _ => return Err("entity without an id".to_owned()),
                };
                Ok(Change {
                    source: self.source.clone(),
                    collection: collection.to_owned(),
                    op: ChangeOp::Upsert,
                    id,
                    document: Some(raw.get().to_owned()),
                    current: None,
                })
            })
            .collect()
    }

    /// Run `request` until it succeeds, at most `page_retries + 1` times,
    /// waiting out an open breaker and backing off between attempts.
    /// `None` when every attempt failed.
    async fn with_retries<T, F, Fut>(
        &self,
        cancel: &CancellationToken,
        mut request: F,
    ) -> Result<Option<T>, LoadError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RequestError>>,
    {
        let mut backoff = Duration::from_millis(self.config.retry_backoff_ms.max(1));
        for attempt in 0..=self.config.page_retries {
            while let Err(open) = self.breaker.check() {
                tracing::debug!(
                    wait_ms = open.retry_in.as_millis() as u64,
                    "REST circuit breaker open"
                );
                sleep_or_cancel(open.retry_in, cancel).await?;
            }
            {
                let mut pacer = self.pacer.lock().await;
                tokio::select! {
                    _ = cancel.cancelled() => return Err(LoadError::Cancelled),
                    _ = pacer.tick() => {}
                }
            }
            match request().await {
                Ok(value) => {
                    self.breaker.success();
                    return Ok(Some(value));
                }
                Err(error) => {
                    self.breaker.failure();
                    bump(&self.status.counters.page_failures);
                    self.status.set_error(error.to_string());
                    tracing::warn!(source = %self.source, attempt, %error, "REST request failed");
                    if attempt < self.config.page_retries {
                        sleep_or_cancel(backoff, cancel).await?;
                        backoff = backoff.saturating_mul(2).min(Duration::from_secs(30));
                    }
                }
            }
        }
        Ok(None)
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, RequestError> {
        let response = self
            .client
            .get(url)
            .header("X-Schematic-Api-Key", &self.api_key)
            .header("Accept", "application/json")
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            return Err(RequestError::Status {
                status: status.as_u16(),
                url: url.to_owned(),
            });
        }
        Ok(response.bytes().await?.to_vec())
    }
}

/// The wait between two requests at `rps` requests per second: at least
/// 1 µs (an interval cannot be zero), at most 100 s (rates below 0.01/s,
/// zero, negative or not a number).
fn pace(rps: f64) -> Duration {
    const FASTEST: Duration = Duration::from_micros(1);
    const SLOWEST: Duration = Duration::from_secs(100);
    if rps.is_nan() || rps < 0.01 {
        return SLOWEST;
    }
    Duration::try_from_secs_f64(1.0 / rps)
        .unwrap_or(SLOWEST)
        .clamp(FASTEST, SLOWEST)
}

async fn sleep_or_cancel(wait: Duration, cancel: &CancellationToken) -> Result<(), LoadError> {
    tokio::select! {
        _ = cancel.cancelled() => Err(LoadError::Cancelled),
        _ = tokio::time::sleep(wait) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_is_never_zero_nor_endless() {
        assert_eq!(pace(10.0), Duration::from_millis(100));
        assert_eq!(pace(1e12), Duration::from_micros(1));
        assert_eq!(pace(f64::INFINITY), Duration::from_micros(1));
        for rps in [0.0, -1.0, f64::NAN, 1e-300] {
            assert_eq!(pace(rps), Duration::from_secs(100), "{rps}");
        }
    }
}
