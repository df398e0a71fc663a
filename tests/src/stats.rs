//! Small helpers for the benchmarks: percentiles and a table row.

use std::time::Duration;

/// Percentile `p` (0-100) of the samples, nearest-rank.
///
/// # Panics
/// On an empty slice.
#[must_use]
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut v = samples.to_vec();
    v.sort();
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// Milliseconds with two decimals.
#[must_use]
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// Median of the first and of the last `n` samples: (first, last).
#[must_use]
pub fn ends(samples: &[Duration], n: usize) -> (Duration, Duration) {
    let n = n.min(samples.len());
    (
        percentile(&samples[..n], 50.0),
        percentile(&samples[samples.len() - n..], 50.0),
    )
}
