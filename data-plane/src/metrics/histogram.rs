//! A fixed-bucket histogram of atomics: `observe` is a bucket search over a handful of bounds
//! and three relaxed `fetch_add`s — no lock, no allocation. prometheus-client's own histogram
//! takes a lock per observation; this one is read at scrape time and encoded through
//! prometheus-client's encoder (`encode_histogram`), so the exposition format stays the
//! crate's.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{MetricEncoder, NoLabelSet};

/// Bucket bounds of one kind of histogram, in the unit observations are made in, and the
/// factor that turns that unit into the exposed one (e.g. ms → seconds: 0.001).
#[derive(Debug)]
pub(crate) struct Bounds {
    pub(crate) upper: &'static [u64],
    pub(crate) scale: f64,
}

/// Counts per bucket (not cumulative; the last one is open), the sum and nothing else: the
/// count is the buckets' total.
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: &'static Bounds,
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    pub(crate) fn new(bounds: &'static Bounds) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.upper.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one observation of `value` (in the bounds' unit).
    #[inline]
    pub(crate) fn observe(&self, value: u64) {
        let upper = self.bounds.upper;
        // Bounds are short and ascending; most observations land in the first few.
        let index = upper.iter().position(|&bound| value <= bound).unwrap_or(upper.len());
        if let Some(count) = self.counts.get(index) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// The per-bucket counts now (not cumulative), `upper.len() + 1` of them.
    pub(crate) fn counts(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    /// The sum of every observation, in the bounds' unit.
    pub(crate) fn sum(&self) -> u64 {
        self.sum.load(Ordering::Relaxed)
    }

    /// Observations so far.
    pub(crate) fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Encodes it as an OpenMetrics histogram (cumulative buckets, `+Inf` last).
    pub(crate) fn encode(&self, mut encoder: MetricEncoder<'_>) -> std::fmt::Result {
        let counts = self.counts();
        let scale = self.bounds.scale;
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(counts.len());
        for (i, count) in counts.iter().enumerate() {
            cumulative += count;
            let bound =
                self.bounds.upper.get(i).map_or(f64::INFINITY, |&upper| upper as f64 * scale);
            buckets.push((bound, cumulative));
        }
        encoder.encode_histogram::<NoLabelSet>(
            self.sum() as f64 * scale,
            cumulative,
            &buckets,
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static MS: Bounds = Bounds { upper: &[10, 100, 1000], scale: 0.001 };

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::new(&MS);
        for v in [0, 10, 11, 100, 5000] {
            h.observe(v);
        }
        assert_eq!(h.counts(), vec![2, 2, 0, 1]);
        assert_eq!(h.sum(), 5121);
        assert_eq!(h.count(), 5);
    }
}
