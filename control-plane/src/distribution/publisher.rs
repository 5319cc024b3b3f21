//! The publisher: reloads the snapshot from the store after each announced change (and when a
//! poll finds a newer version, for replicas sharing PostgreSQL), validates, indexes and encodes
//! it once, and swaps it in for every stream.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use modelgw_model::{ConfigVersion, EndpointId, Snapshot};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::Instrument as _;

use super::DataPlaneRegistry;
use crate::{ControlPlaneMetrics, Store};

/// A snapshot as it is distributed: the validated domain value, the set of its endpoint ids
/// (health reports are checked against it in O(1)), and its protobuf encoding, made once per
/// version and shared by every stream.
#[derive(Debug)]
pub struct PublishedSnapshot {
    snapshot: Arc<Snapshot>,
    endpoint_ids: HashSet<EndpointId>,
    encoded: Bytes,
    /// When it was ready to send (encoded): the start of its propagation to data planes.
    ready_at: Instant,
}

impl PublishedSnapshot {
    /// Indexes and encodes `snapshot` (once per version).
    pub fn new(snapshot: Snapshot) -> PublishedSnapshot {
        let endpoint_ids = snapshot.endpoints.iter().map(|e| e.id).collect();
        let encoded = modelgw_model::wire::encode_snapshot(&snapshot);
        PublishedSnapshot {
            snapshot: Arc::new(snapshot),
            endpoint_ids,
            encoded,
            ready_at: Instant::now(),
        }
    }

    /// When it was encoded and ready to send to data planes.
    pub fn ready_at(&self) -> Instant {
        self.ready_at
    }

    pub fn version(&self) -> ConfigVersion {
        self.snapshot.version
    }

    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    pub fn contains_endpoint(&self, id: EndpointId) -> bool {
        self.endpoint_ids.contains(&id)
    }

    /// The protobuf encoding of the `Snapshot` message (shared, reference-counted).
    pub fn encoded(&self) -> &Bytes {
        &self.encoded
    }
}

pub(super) struct Publisher {
    pub(super) store: Store,
    pub(super) registry: DataPlaneRegistry,
    pub(super) snapshots: watch::Sender<Arc<PublishedSnapshot>>,
    pub(super) requested: watch::Receiver<ConfigVersion>,
    pub(super) poll_interval: Duration,
    /// Woken to do a poll's work at once (`notify.rs`).
    pub(super) check: Arc<tokio::sync::Notify>,
    pub(super) metrics: ControlPlaneMetrics,
}

impl Publisher {
    pub(super) async fn run(mut self) {
        let start = tokio::time::Instant::now() + self.poll_interval;
        let mut ticker = tokio::time::interval_at(start, self.poll_interval);
        // After a stall, one check is enough: ticks carry no data.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let announced = tokio::select! {
                changed = self.requested.changed() => {
                    if changed.is_err() {
                        return; // every ConfigChanges handle is gone: nothing will announce
                    }
                    Some(*self.requested.borrow_and_update())
                }
                _ = ticker.tick() => {
                    self.merge_stored_health().await;
                    None
                }
                // Another replica stored health or committed something we may have missed
                // (PostgreSQL notifications, `notify.rs`): the poll's work, now.
                () = self.check.notified() => {
                    self.merge_stored_health().await;
                    None
                }
            };
            let current = self.current();
            match announced {
                Some(v) if v <= current => continue,
                Some(_) => {}
                // The cheap version check first; a full load only when something changed.
                None => match self.store.config_version().await {
                    Ok(v) if v > current => {
                        tracing::debug!(config_version = %v, "poll found a newer version");
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "config version poll failed; retrying at the next tick");
                        continue;
                    }
                },
            }
            // A failed load is retried by the next poll tick, which sees the version still ahead.
            let started = Instant::now();
            let span = publish_span();
            match self.store.load_snapshot().instrument(span.clone()).await {
                Ok(snapshot) => span.in_scope(|| self.publish(snapshot, started)),
                Err(e) => span.in_scope(|| {
                    tracing::warn!(error = %e, "loading the snapshot failed; retrying at the next poll tick");
                }),
            }
        }
    }

    /// Merges the health reports and resets other replicas received (their data planes are
    /// not ours).
    async fn merge_stored_health(&self) {
        match self.store.load_endpoint_health().await {
            Ok(records) => self.registry.merge_stored(records),
            Err(e) => {
                tracing::warn!(error = %e, "endpoint health poll failed; retrying at the next tick")
            }
        }
        match self.store.load_health_resets().await {
            Ok(resets) => self.registry.merge_resets(resets),
            Err(e) => {
                tracing::warn!(error = %e, "endpoint health reset poll failed; retrying at the next tick")
            }
        }
    }

    fn current(&self) -> ConfigVersion {
        self.snapshots.borrow().version()
    }

    /// Swaps in `snapshot` for every stream unless a newer one is already out; `started` is
    /// when its load from the store began (logged as the build time: load, validation,
    /// indexing and encoding).
    fn publish(&self, snapshot: Snapshot, started: Instant) {
        let version = snapshot.version;
        // Loads can finish out of order with concurrent writers: never encode (let alone
        // publish) a version streams already have or have passed.
        if version <= self.current() {
            return;
        }
        let encoded =
            tracing::info_span!("snapshot.encode").in_scope(|| PublishedSnapshot::new(snapshot));
        let mut fresh = Some(Arc::new(encoded));
        let published = self.snapshots.send_if_modified(|current| {
            if version > current.version()
                && let Some(p) = fresh.take()
            {
                *current = p;
                true
            } else {
                false
            }
        });
        if published {
            let current = self.snapshots.borrow().clone();
            self.registry.retain_health(&current);
            self.registry.retain_stats(&current);
            let build = started.elapsed();
            self.metrics.snapshot_published(build);
            log_publish(&current, build);
        }
    }
}

/// Logs a publish with its build time (store load, validation, wire encoding) and encoded
/// size, and names it on the publish span (if in one). A snapshot that breaks a rule never gets
/// here: the store's load refuses it.
pub(super) fn log_publish(published: &PublishedSnapshot, build: Duration) {
    let (version, endpoints, gateways, bytes) = (
        published.version().0,
        published.snapshot.endpoints.len(),
        published.snapshot.gateways.len(),
        published.encoded.len(),
    );
    tracing::info!(
        config_version = version,
        endpoints,
        gateways,
        bytes,
        build_us = build.as_micros() as u64,
        "snapshot published"
    );
    // As i64: the OpenTelemetry layer exports unsigned fields as strings.
    let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let span = tracing::Span::current();
    span.record("modelgw.config_version", int(version));
    span.record("modelgw.endpoints", int(endpoints as u64));
    span.record("modelgw.gateways", int(gateways as u64));
    span.record("modelgw.snapshot_bytes", int(bytes as u64));
}

/// The span of one publish: the store's load (and the validation in it), the encoding, the
/// swap. A root of its own trace, not a child of the publisher task's span: that lives as long
/// as the process.
fn publish_span() -> tracing::Span {
    tracing::info_span!(
        parent: None,
        "snapshot.publish",
        modelgw.config_version = tracing::field::Empty,
        modelgw.endpoints = tracing::field::Empty,
        modelgw.gateways = tracing::field::Empty,
        modelgw.snapshot_bytes = tracing::field::Empty,
    )
}
