//! The proxy's Prometheus metrics. The data plane holds handles to its own series (resolved
//! once per version, not per request), so recording costs a few atomic operations.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub app: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub app: String,
    pub version: String,
    /// 1xx…5xx, or `error` when no upstream response came.
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub app: String,
    pub version: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    pub app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub app: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub app: String,
    /// `errors` or `latency`.
    pub check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SideLabels {
    pub app: String,
    pub check: String,
    /// `canary` or `baseline`.
    pub side: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub app: String,
    pub verdict: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    // 100 µs … ~26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

fn switch_histogram() -> Histogram {
    // Fine around the 100 µs objective: 5 µs steps up to 100 µs, then coarser to 1 s.
    // (Whole microseconds divided, so the bounds print as 0.000015 rather than
    // 0.000015000000000000002.)
    let fine = (1..=20).map(|k| f64::from(k * 5) / 1_000_000.0);
    let coarse = [
        0.000_15, 0.000_2, 0.000_3, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 1.0,
    ];
    Histogram::new(fine.chain(coarse))
}

/// All series, and the registry that renders them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics(..)")
    }
}

struct Inner {
    registry: Registry,
    requests: Family<ClassLabels, Counter>,
    duration: Family<VersionLabels, Histogram, fn() -> Histogram>,
    inflight: Family<VersionLabels, Gauge>,
    retries: Family<VersionLabels, Counter>,
    connect_failures: Family<EndpointLabels, Counter>,
    drain_cancelled: Family<VersionLabels, Counter>,
    pub weight: Family<VersionLabels, FloatGauge>,
    pub endpoint_healthy: Family<EndpointLabels, Gauge>,
    pub rollbacks: Family<ReasonLabels, Counter>,
    pub switch: Histogram,
    pub analysis_value: Family<SideLabels, FloatGauge>,
    pub analysis_p: Family<CheckLabels, FloatGauge>,
    pub analysis_alpha: Family<CheckLabels, FloatGauge>,
    pub analysis_min_effect: Family<CheckLabels, FloatGauge>,
    pub analysis_verdict: Family<AppLabels, Gauge>,
    pub analysis_intervals: Family<VerdictLabels, Counter>,
}

/// One version's request series.
#[derive(Debug, Clone)]
pub struct VersionMetrics {
    /// Indexed by status class: 0 = no response, 1..=5 = 1xx..5xx.
    pub requests: [Counter; 6],
    pub duration: Histogram,
    pub inflight: Gauge,
    pub retries: Counter,
    pub drain_cancelled: Counter,
    connect_failures: Family<EndpointLabels, Counter>,
    labels: VersionLabels,
}

impl VersionMetrics {
    pub fn connect_failure(&self, endpoint: &str) {
        self.connect_failures
            .get_or_create(&EndpointLabels {
                app: self.labels.app.clone(),
                version: self.labels.version.clone(),
                endpoint: endpoint.to_owned(),
            })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hemiron_proxy");
        let requests = Family::<ClassLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by app, version and status class (error: no upstream response)",
            requests.clone(),
        );
        let duration: Family<VersionLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its upstream response headers",
            duration.clone(),
        );
        let inflight = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "inflight_requests",
            "Requests in flight per version (on a draining version: the draining requests)",
            inflight.clone(),
        );
        let retries = Family::<VersionLabels, Counter>::default();
        registry.register(
            "retries",
            "Requests sent again to another endpoint",
            retries.clone(),
        );
        let connect_failures = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "upstream_connect_failures",
            "Failed connections to an endpoint",
            connect_failures.clone(),
        );
        let drain_cancelled = Family::<VersionLabels, Counter>::default();
        registry.register(
            "drain_cancelled_requests",
            "Requests cancelled when a draining version's drain timeout ran out",
            drain_cancelled.clone(),
        );
        let weight = Family::<VersionLabels, FloatGauge>::default();
        registry.register(
            "version_weight_ratio",
            "Share of new sessions routed to a version (0..1)",
            weight.clone(),
        );
        let endpoint_healthy = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "endpoint_healthy",
            "1 if an endpoint takes traffic (active checks pass, not ejected)",
            endpoint_healthy.clone(),
        );
        let rollbacks = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rollbacks",
            "Rollbacks and aborts, by reason (manual, analysis, config)",
            rollbacks.clone(),
        );
        let switch = switch_histogram();
        registry.register(
            "switch_duration_seconds",
            "From an admin call's arrival to the new routing table being stored",
            switch.clone(),
        );
        let analysis_value = Family::<SideLabels, FloatGauge>::default();
        registry.register(
            "analysis_value",
            "Last interval's measure per side: error ratio, or median latency in seconds",
            analysis_value.clone(),
        );
        let analysis_p = Family::<CheckLabels, FloatGauge>::default();
        registry.register(
            "analysis_p_value",
            "Last interval's one-sided p-value (canary worse than baseline)",
            analysis_p.clone(),
        );
        let analysis_alpha = Family::<CheckLabels, FloatGauge>::default();
        registry.register(
            "analysis_alpha",
            "Significance level a check fails at",
            analysis_alpha.clone(),
        );
        let analysis_min_effect = Family::<CheckLabels, FloatGauge>::default();
        registry.register(
            "analysis_min_effect",
            "Smallest effect that fails a check: error ratio difference, or latency shift as a fraction of the baseline median",
            analysis_min_effect.clone(),
        );
        let analysis_verdict = Family::<AppLabels, Gauge>::default();
        registry.register(
            "analysis_verdict",
            "Last interval's verdict: 1 pass, 0 no data, -1 fail",
            analysis_verdict.clone(),
        );
        let analysis_intervals = Family::<VerdictLabels, Counter>::default();
        registry.register(
            "analysis_intervals",
            "Analysis intervals judged, by verdict",
            analysis_intervals.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                requests,
                duration,
                inflight,
                retries,
                connect_failures,
                drain_cancelled,
                weight,
                endpoint_healthy,
                rollbacks,
                switch,
                analysis_value,
                analysis_p,
                analysis_alpha,
                analysis_min_effect,
                analysis_verdict,
                analysis_intervals,
            }),
        }
    }

    /// The series of one version (shared by every runtime of that app and version).
    pub fn version(&self, app: &str, version: &str) -> VersionMetrics {
        let labels = VersionLabels {
            app: app.to_owned(),
            version: version.to_owned(),
        };
        let class = |c: &str| {
            self.inner
                .requests
                .get_or_create(&ClassLabels {
                    app: app.to_owned(),
                    version: version.to_owned(),
                    class: c.to_owned(),
                })
                .clone()
        };
        VersionMetrics {
            requests: [
                class("error"),
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: self.inner.duration.get_or_create(&labels).clone(),
            inflight: self.inner.inflight.get_or_create(&labels).clone(),
            retries: self.inner.retries.get_or_create(&labels).clone(),
            drain_cancelled: self.inner.drain_cancelled.get_or_create(&labels).clone(),
            connect_failures: self.inner.connect_failures.clone(),
            labels,
        }
    }

    pub fn set_weight(&self, app: &str, version: &str, basis_points: u32) {
        self.inner
            .weight
            .get_or_create(&VersionLabels {
                app: app.to_owned(),
                version: version.to_owned(),
            })
            .set(f64::from(basis_points) / 10_000.0);
    }

    pub fn set_endpoint_healthy(&self, app: &str, version: &str, endpoint: &str, ok: bool) {
        self.inner
            .endpoint_healthy
            .get_or_create(&EndpointLabels {
                app: app.to_owned(),
                version: version.to_owned(),
                endpoint: endpoint.to_owned(),
            })
            .set(i64::from(ok));
    }

    pub fn rollback(&self, app: &str, reason: &str) {
        self.inner
            .rollbacks
            .get_or_create(&ReasonLabels {
                app: app.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn switch_seconds(&self, seconds: f64) {
        self.inner.switch.observe(seconds);
    }

    /// The switch-latency histogram's quantile estimate (upper bound of the bucket that holds
    /// it), for status output and tests.
    pub fn switch_quantile(&self, q: f64) -> Option<f64> {
        let text = self.render();
        histogram_quantile(&text, "hemiron_proxy_switch_duration_seconds", q)
    }

    /// Records one analysis interval.
    pub fn analysis(&self, app: &str, a: &AnalysisFigures) {
        let side = |check: &str, side: &str| SideLabels {
            app: app.to_owned(),
            check: check.to_owned(),
            side: side.to_owned(),
        };
        let check = |c: &str| CheckLabels {
            app: app.to_owned(),
            check: c.to_owned(),
        };
        let i = &self.inner;
        i.analysis_value
            .get_or_create(&side("errors", "canary"))
            .set(a.canary_error_ratio);
        i.analysis_value
            .get_or_create(&side("errors", "baseline"))
            .set(a.baseline_error_ratio);
        i.analysis_value
            .get_or_create(&side("latency", "canary"))
            .set(a.canary_median_ms / 1000.0);
        i.analysis_value
            .get_or_create(&side("latency", "baseline"))
            .set(a.baseline_median_ms / 1000.0);
        i.analysis_p.get_or_create(&check("errors")).set(a.errors_p);
        i.analysis_p
            .get_or_create(&check("latency"))
            .set(a.latency_p);
        i.analysis_alpha
            .get_or_create(&check("errors"))
            .set(a.alpha);
        i.analysis_alpha
            .get_or_create(&check("latency"))
            .set(a.alpha);
        i.analysis_min_effect
            .get_or_create(&check("errors"))
            .set(a.error_points);
        i.analysis_min_effect
            .get_or_create(&check("latency"))
            .set(a.latency_shift);
        let (value, name) = match a.verdict {
            VerdictKind::Pass => (1, "pass"),
            VerdictKind::NoData => (0, "no_data"),
            VerdictKind::Fail => (-1, "fail"),
        };
        i.analysis_verdict
            .get_or_create(&AppLabels {
                app: app.to_owned(),
            })
            .set(value);
        i.analysis_intervals
            .get_or_create(&VerdictLabels {
                app: app.to_owned(),
                verdict: name.to_owned(),
            })
            .inc();
    }

    /// The exposition text, in the Prometheus text format (0.0.4) that every scraper and
    /// `promtool check metrics` read.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        openmetrics_to_prometheus(&out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    Pass,
    NoData,
    Fail,
}

/// The numbers of one analysis interval, as exported (and kept in the state file, so that a
/// restarted proxy still shows the last interval).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AnalysisFigures {
    pub verdict: VerdictKind,
    pub canary_error_ratio: f64,
    pub baseline_error_ratio: f64,
    pub canary_median_ms: f64,
    pub baseline_median_ms: f64,
    pub errors_p: f64,
    pub latency_p: f64,
    pub alpha: f64,
    pub error_points: f64,
    pub latency_shift: f64,
}

/// OpenMetrics names a counter family without `_total` and ends with `# EOF`; the classic
/// text format names the family as its samples are named.
fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Reads a quantile from an exposition text's cumulative buckets of an unlabelled histogram.
pub fn histogram_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let (le, count) = rest.split_once("\"} ")?;
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().ok()?
        };
        buckets.push((le, count.trim().parse().ok()?));
    }
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| *le)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_reads_quantiles() {
        let m = Metrics::new();
        let v = m.version("shop", "v1");
        v.requests[2].inc();
        v.duration.observe(0.002);
        for _ in 0..99 {
            m.switch_seconds(0.000_010);
        }
        m.switch_seconds(0.010);
        let text = m.render();
        assert!(text
            .contains("hemiron_proxy_requests_total{app=\"shop\",version=\"v1\",class=\"2xx\"} 1"));
        let p99 = m.switch_quantile(0.99).unwrap();
        assert!(p99 <= 0.000_010 + 1e-12, "{p99}");
        assert!(m.switch_quantile(1.0).unwrap() >= 0.010);
    }
}
