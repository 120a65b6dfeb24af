//! The canary judge's statistics, per analysis interval, canary against baseline:
//!
//! - errors: a one-sided two-proportion z-test (is the canary's 5xx rate higher?) at
//!   α = 0.01, failing only when the canary is also at least 1 percentage point worse;
//! - latency: a one-sided Mann–Whitney U test (are the canary's latencies larger?) with the
//!   normal approximation, tie correction and continuity correction, at α = 0.01, failing
//!   only when the Hodges–Lehmann shift (the median of all canary − baseline differences) is
//!   at least 10% of the baseline's median;
//! - fewer than 50 requests for either side is no data: the interval holds.

/// Standard normal upper tail, P(Z > z).
pub fn normal_sf(z: f64) -> f64 {
    0.5 * libm::erfc(z / std::f64::consts::SQRT_2)
}

/// One-sided two-proportion z-test that the canary's rate (`x1`/`n1`) exceeds the baseline's
/// (`x2`/`n2`): the p-value. 1.0 when it cannot tell (no variance).
pub fn two_proportion_p(x1: u64, n1: u64, x2: u64, n2: u64) -> f64 {
    if n1 == 0 || n2 == 0 {
        return 1.0;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let (p1, p2) = (x1 as f64 / n1f, x2 as f64 / n2f);
    let pooled = (x1 + x2) as f64 / (n1f + n2f);
    let var = pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f);
    if var <= 0.0 {
        return if p1 > p2 { 0.0 } else { 1.0 };
    }
    normal_sf((p1 - p2) / var.sqrt())
}

/// One-sided Mann–Whitney U test that `canary` tends to be larger than `baseline`: the
/// p-value (normal approximation, corrected for ties and continuity).
pub fn mann_whitney_greater_p(canary: &[f64], baseline: &[f64]) -> f64 {
    let (n1, n2) = (canary.len(), baseline.len());
    if n1 == 0 || n2 == 0 {
        return 1.0;
    }
    let mut all: Vec<(f64, bool)> = canary
        .iter()
        .map(|&x| (x, true))
        .chain(baseline.iter().map(|&x| (x, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = all.len();
    let (mut rank_sum, mut tie_term) = (0.0f64, 0.0f64);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        // Ranks i+1..=j+1 share their average.
        let avg = (i + j + 2) as f64 / 2.0;
        let t = (j - i + 1) as f64;
        tie_term += t * t * t - t;
        rank_sum += avg * all[i..=j].iter().filter(|(_, c)| *c).count() as f64;
        i = j + 1;
    }
    let (n1f, n2f, nf) = (n1 as f64, n2 as f64, n as f64);
    let u = rank_sum - n1f * (n1f + 1.0) / 2.0;
    let mean = n1f * n2f / 2.0;
    let var = n1f * n2f / 12.0 * ((nf + 1.0) - tie_term / (nf * (nf - 1.0)));
    if var <= 0.0 {
        return 1.0;
    }
    normal_sf((u - mean - 0.5) / var.sqrt())
}

/// Sorted values thinned to at most `max` evenly spaced ones (keeps the pairwise work bounded).
fn thin(values: &[f64], max: usize) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.len() <= max {
        return v;
    }
    (0..max).map(|k| v[k * v.len() / max]).collect()
}

/// The Hodges–Lehmann estimate of how much larger `canary` is than `baseline`: the median of
/// all pairwise differences (each side thinned to 2,000 values at most).
pub fn hodges_lehmann_shift(canary: &[f64], baseline: &[f64]) -> Option<f64> {
    if canary.is_empty() || baseline.is_empty() {
        return None;
    }
    let (c, b) = (thin(canary, 2000), thin(baseline, 2000));
    let mut diffs: Vec<f64> = c
        .iter()
        .flat_map(|x| b.iter().map(move |y| x - y))
        .collect();
    Some(median_in_place(&mut diffs))
}

fn median_in_place(v: &mut [f64]) -> f64 {
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let m = *m;
    if v.len() % 2 == 1 {
        m
    } else {
        let lower = v[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lower + m) / 2.0
    }
}

pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    Some(median_in_place(&mut values.to_vec()))
}

/// What one version did in one interval.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub requests: u64,
    pub errors: u64,
    /// Latencies (any unit; both sides the same).
    pub latencies: Vec<f64>,
}

/// An interval's verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Too few requests on a side: hold.
    NoData,
    Pass,
    Fail(String),
}

/// The thresholds (the issue's: 50 requests, α = 0.01, 1 point, 10%).
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub min_requests: u64,
    pub alpha: f64,
    pub error_points: f64,
    pub latency_shift: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_requests: 50,
            alpha: 0.01,
            error_points: 0.01,
            latency_shift: 0.10,
        }
    }
}

/// The latency check's p-value: a one-sided Mann–Whitney U test that the canary is slower
/// than the baseline *by more than the margin* (`latency_shift` × the baseline's median),
/// i.e. run on the canary's latencies minus the margin. Rejecting it means the one-sided
/// (1 − α) confidence bound of the Hodges–Lehmann shift lies above the margin — Kayenta's
/// rule of comparing the interval with the tolerance. Testing "slower at all" and then
/// gating on the point estimate instead fails same-version (A/A) comparisons whenever the
/// latency noise of 100 requests is near the margin (measured: 1 of 20 two-minute A/A runs on
/// loopback).
pub fn latency_p(canary: &Sample, baseline: &Sample, t: &Thresholds) -> f64 {
    let Some(base_median) = median(&baseline.latencies) else {
        return 1.0;
    };
    let margin = t.latency_shift * base_median;
    let shifted: Vec<f64> = canary.latencies.iter().map(|x| x - margin).collect();
    mann_whitney_greater_p(&shifted, &baseline.latencies)
}

/// An interval's verdict with the p-values it rests on (both computed whatever the verdict,
/// for export).
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub verdict: Verdict,
    pub errors_p: f64,
    pub latency_p: f64,
}

/// Judges one interval of `canary` against `baseline`.
pub fn judge(canary: &Sample, baseline: &Sample, t: &Thresholds) -> Verdict {
    assess(canary, baseline, t).verdict
}

/// Judges one interval and keeps its p-values; each test runs once.
pub fn assess(canary: &Sample, baseline: &Sample, t: &Thresholds) -> Assessment {
    let errors_p = two_proportion_p(
        canary.errors,
        canary.requests,
        baseline.errors,
        baseline.requests,
    );
    let latency_p = latency_p(canary, baseline, t);
    let verdict = verdict(canary, baseline, t, errors_p, latency_p);
    Assessment {
        verdict,
        errors_p,
        latency_p,
    }
}

fn verdict(
    canary: &Sample,
    baseline: &Sample,
    t: &Thresholds,
    errors_p: f64,
    latency_p: f64,
) -> Verdict {
    if canary.requests < t.min_requests || baseline.requests < t.min_requests {
        return Verdict::NoData;
    }
    let rate = |s: &Sample| s.errors as f64 / s.requests as f64;
    let (rc, rb) = (rate(canary), rate(baseline));
    if errors_p < t.alpha && rc - rb >= t.error_points {
        return Verdict::Fail(format!(
            "errors: canary {:.2}% vs baseline {:.2}% (p = {errors_p:.2e} < {}, difference >= {} points)",
            rc * 100.0,
            rb * 100.0,
            t.alpha,
            t.error_points * 100.0
        ));
    }
    // The pairwise Hodges–Lehmann estimate is the costly part: only when the test rejects.
    if latency_p < t.alpha {
        if let (Some(shift), Some(base_median)) = (
            hodges_lehmann_shift(&canary.latencies, &baseline.latencies),
            median(&baseline.latencies),
        ) {
            let margin = t.latency_shift * base_median;
            if shift >= margin {
                return Verdict::Fail(format!(
                    "latency: shift {shift:.3} vs baseline median {base_median:.3} (p = {latency_p:.2e} < {} that the shift exceeds {}% = {margin:.3})",
                    t.alpha,
                    t.latency_shift * 100.0
                ));
            }
        }
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normal_tail() {
        assert!((normal_sf(0.0) - 0.5).abs() < 1e-12);
        assert!((normal_sf(2.326_347_874) - 0.01).abs() < 1e-6);
        assert!((normal_sf(-1.959_963_985) - 0.975).abs() < 1e-6);
    }

    #[test]
    fn two_proportions() {
        // 5% vs 0.5% over 1,000 each: clearly worse.
        assert!(two_proportion_p(50, 1000, 5, 1000) < 1e-6);
        assert!(two_proportion_p(5, 1000, 50, 1000) > 0.99);
        assert_eq!(two_proportion_p(0, 100, 0, 100), 1.0);
    }

    #[test]
    fn mann_whitney_against_a_known_value() {
        // Textbook example: all canary values above all baseline ones, n1 = n2 = 10:
        // U = 100, mean 50, sd = sqrt(10·10·21/12) = 13.229; z = (100 − 50 − 0.5)/13.229.
        let c: Vec<f64> = (11..=20).map(f64::from).collect();
        let b: Vec<f64> = (1..=10).map(f64::from).collect();
        let p = mann_whitney_greater_p(&c, &b);
        assert!((p - normal_sf(49.5 / 13.228_756_555)).abs() < 1e-9, "{p}");
        assert!(mann_whitney_greater_p(&b, &c) > 0.99);
        // All tied: no evidence.
        assert_eq!(mann_whitney_greater_p(&[1.0; 60], &[1.0; 60]), 1.0);
    }

    #[test]
    fn hodges_lehmann() {
        let b: Vec<f64> = (0..100).map(|i| 100.0 + f64::from(i % 10)).collect();
        let c: Vec<f64> = b.iter().map(|x| x + 50.0).collect();
        assert_eq!(hodges_lehmann_shift(&c, &b), Some(50.0));
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), Some(2.5));
    }

    fn sample(n: u64, errors: u64, latency: impl Fn(u64) -> f64) -> Sample {
        Sample {
            requests: n,
            errors,
            latencies: (0..n).map(latency).collect(),
        }
    }

    #[test]
    fn verdicts() {
        let t = Thresholds::default();
        let lat = |i: u64| 20.0 + (i % 7) as f64;
        let base = sample(1000, 5, lat);
        assert_eq!(judge(&sample(49, 0, lat), &base, &t), Verdict::NoData);
        assert_eq!(judge(&sample(1000, 6, lat), &base, &t), Verdict::Pass);
        assert!(
            matches!(judge(&sample(1000, 50, lat), &base, &t), Verdict::Fail(m) if m.starts_with("errors"))
        );
        // 50 ms slower on a ~23 ms median.
        let slow = sample(1000, 5, |i| lat(i) + 50.0);
        assert!(matches!(judge(&slow, &base, &t), Verdict::Fail(m) if m.starts_with("latency")));
        // Significantly but trivially slower (0.5 ms on 23 ms): not a failure.
        let tiny = sample(1000, 5, |i| lat(i) + 0.5);
        assert_eq!(judge(&tiny, &base, &t), Verdict::Pass);
        // Slower by about the margin (2.5 ms on a 23 ms median, 10% = 2.3 ms): not shown to
        // exceed it, so no failure; clearly beyond it (4 ms), a failure.
        let near = sample(100, 0, |i| lat(i) + 2.5);
        assert_eq!(judge(&near, &sample(100, 0, lat), &t), Verdict::Pass);
        let beyond = sample(100, 0, |i| lat(i) + 4.0);
        assert!(matches!(
            judge(&beyond, &sample(100, 0, lat), &t),
            Verdict::Fail(_)
        ));
    }

    proptest! {
        #[test]
        fn p_values_are_probabilities(
            c in proptest::collection::vec(0.0f64..1e6, 0..200),
            b in proptest::collection::vec(0.0f64..1e6, 0..200),
            x1 in 0u64..1000, x2 in 0u64..1000, extra1 in 0u64..1000, extra2 in 0u64..1000,
        ) {
            let p = mann_whitney_greater_p(&c, &b);
            prop_assert!((0.0..=1.0).contains(&p));
            let q = two_proportion_p(x1, x1 + extra1, x2, x2 + extra2);
            prop_assert!((0.0..=1.0).contains(&q));
        }

        #[test]
        fn identical_samples_never_fail(values in proptest::collection::vec(1.0f64..1000.0, 50..300), errors in 0u64..50) {
            let s = Sample { requests: values.len() as u64, errors: errors.min(values.len() as u64), latencies: values };
            prop_assert_eq!(judge(&s, &s.clone(), &Thresholds::default()), Verdict::Pass);
        }
    }
}
