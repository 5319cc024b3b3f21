//! Percentiles, medians and human units.

use std::time::Duration;

/// The `q`-quantile (0.0–1.0) of `values` by the nearest-rank method (the smallest value
/// with at least `q` of the samples at or below it); `None` when empty. NaNs sort last.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let q = q.clamp(0.0, 1.0);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The median: the middle value, or the mean of the two middle ones.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    Some(if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 })
}

/// The largest value.
pub fn max(values: &[f64]) -> Option<f64> {
    values.iter().copied().max_by(f64::total_cmp)
}

/// Durations as seconds.
pub fn secs(d: &[Duration]) -> Vec<f64> {
    d.iter().map(Duration::as_secs_f64).collect()
}

/// Every subscriber's latency of every push (a config change, a fleet-health change), seconds.
pub fn every_latency<'a>(pushes: impl Iterator<Item = &'a [Duration]>) -> Vec<f64> {
    pushes.flat_map(secs).collect()
}

/// Per push, the slowest subscriber's latency, seconds.
pub fn slowest_per_push<'a>(pushes: impl Iterator<Item = &'a [Duration]>) -> Vec<f64> {
    pushes.filter_map(|l| max(&secs(l))).collect()
}

/// `x` with 3 significant digits (at least 0 decimals), e.g. 1.23, 12.3, 123, 1234.
pub fn sig3(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let a = x.abs();
    let decimals = if a == 0.0 || a >= 100.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else {
        // 0.0123 → 4 decimals: 3 significant digits after the leading zeros.
        (2 - a.log10().floor() as i32).clamp(0, 9) as usize
    };
    format!("{x:.decimals$}")
}

/// A duration given in seconds, in µs below 1 ms, in ms below 10 s, else s.
pub fn fmt_secs(s: f64) -> String {
    if !s.is_finite() {
        return "n/a".into();
    }
    let a = s.abs();
    if a < 1e-3 {
        format!("{} µs", sig3(s * 1e6))
    } else if a < 10.0 {
        format!("{} ms", sig3(s * 1e3))
    } else {
        format!("{} s", sig3(s))
    }
}

pub fn fmt_opt_secs(s: Option<f64>) -> String {
    s.map_or_else(|| "—".into(), fmt_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        // Order of the input does not matter.
        let rev: Vec<f64> = v.iter().rev().copied().collect();
        assert_eq!(percentile(&rev, 0.99), Some(99.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
        // Five samples: p50 is the third, p99 the fifth.
        assert_eq!(percentile(&[5.0, 1.0, 4.0, 2.0, 3.0], 0.5), Some(3.0));
        assert_eq!(percentile(&[5.0, 1.0, 4.0, 2.0, 3.0], 0.99), Some(5.0));
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(max(&[1.0, 9.0, 3.0]), Some(9.0));
    }

    #[test]
    fn human_units_keep_three_significant_digits() {
        assert_eq!(fmt_secs(0.000_123_4), "123 µs");
        assert_eq!(fmt_secs(0.000_012_34), "12.3 µs");
        assert_eq!(fmt_secs(0.001_234), "1.23 ms");
        assert_eq!(fmt_secs(0.045_67), "45.7 ms");
        assert_eq!(fmt_secs(12.3), "12.3 s");
        assert_eq!(fmt_secs(-0.000_05), "-50.0 µs");
        assert_eq!(sig3(0.012_34), "0.0123");
        assert_eq!(sig3(1234.6), "1235");
        assert_eq!(sig3(f64::NAN), "n/a");
    }
}
