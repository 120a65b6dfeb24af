//! The rollout engine: owns the configuration, every app's rollout state and the version
//! runtimes; turns them into [`Routes`] and publishes them with one atomic swap; persists the
//! state; runs step timers, the canary analysis, health checks and drains.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tower::retry::budget::TpsBudget;

use crate::config::{App, Config};
use crate::metrics::{AnalysisFigures, Metrics, VerdictKind};
use crate::rollout::{AppState, RolloutError, Strategy};
use crate::routing::{State, Table, Version};
use crate::runtime::{now_ms, AppRoute, AppShared, Routes, VersionRt};
use crate::stats;
use crate::sticky::Signer;

/// What the data plane and the engine share.
pub struct Shared {
    pub routes: ArcSwap<Routes>,
    pub metrics: Metrics,
    /// The proxy's monotonic clock origin (see [`now_ms`]).
    pub epoch: Instant,
    /// Unix time at `epoch`, in seconds: the data plane derives wall-clock seconds from the
    /// instant it already took instead of reading the clock again.
    pub epoch_unix: u64,
    pub retry_budget: TpsBudget,
    pub access_log: Option<mpsc::UnboundedSender<String>>,
    /// Woken when passive checks eject an endpoint, to republish at once.
    pub health_changed: Notify,
}

impl Shared {
    /// Unix seconds at `at` (an instant after the epoch).
    pub fn unix_secs(&self, at: Instant) -> u64 {
        self.epoch_unix + at.saturating_duration_since(self.epoch).as_secs()
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared(..)")
    }
}

/// One app's interval, taken from the data plane, waiting to be judged.
#[derive(Debug)]
pub struct Pending {
    app: String,
    /// Whether any endpoint of each side passes its health checks at the interval's end.
    canary_healthy: bool,
    baseline_healthy: bool,
    canary: String,
    baseline: String,
    separate_baseline: bool,
    canary_sample: stats::Sample,
    baseline_sample: stats::Sample,
    thresholds: stats::Thresholds,
}

/// A judged interval.
#[derive(Debug)]
pub struct Judged {
    app: String,
    canary: String,
    verdict: stats::Verdict,
    figures: AnalysisFigures,
    numbers: String,
    min_requests: u64,
}

/// Judges an interval (CPU work: sorting and pairwise differences of up to 20,000 samples a
/// side; run it on a blocking thread).
pub fn judge(p: Pending) -> Judged {
    let (cs, bs, t) = (&p.canary_sample, &p.baseline_sample, &p.thresholds);
    let assessed = stats::assess(cs, bs, t);
    // A canary whose every endpoint failed its health checks or was ejected gets no requests,
    // so its numbers alone would hold the rollout forever: it fails, unless the baseline is
    // down too (then the trouble is not the canary's, and the interval holds).
    let verdict = match (p.canary_healthy, p.baseline_healthy) {
        (false, true) => stats::Verdict::Fail(
            "no endpoint of the canary is healthy (failed health checks or ejected)".into(),
        ),
        (false, false) => stats::Verdict::NoData,
        _ => assessed.verdict,
    };
    let ratio = |s: &stats::Sample| {
        if s.requests == 0 {
            0.0
        } else {
            s.errors as f64 / s.requests as f64
        }
    };
    let enough = cs.requests >= 2 && bs.requests >= 2;
    let figures = AnalysisFigures {
        verdict: match verdict {
            stats::Verdict::Pass => VerdictKind::Pass,
            stats::Verdict::NoData => VerdictKind::NoData,
            stats::Verdict::Fail(_) => VerdictKind::Fail,
        },
        canary_error_ratio: ratio(cs),
        baseline_error_ratio: ratio(bs),
        canary_median_ms: stats::median(&cs.latencies).unwrap_or(0.0),
        baseline_median_ms: stats::median(&bs.latencies).unwrap_or(0.0),
        errors_p: if enough { assessed.errors_p } else { 1.0 },
        latency_p: if enough { assessed.latency_p } else { 1.0 },
        alpha: t.alpha,
        error_points: t.error_points,
        latency_shift: t.latency_shift,
    };
    let against = if p.separate_baseline {
        format!("baseline {}", p.baseline)
    } else {
        format!("stable {} (no separate baseline declared)", p.baseline)
    };
    let numbers = format!(
        "canary {} req, {:.2}% errors, median {:.2} ms; {against}: {} req, {:.2}% errors, median {:.2} ms; p(errors) = {:.3e}, p(latency) = {:.3e}; thresholds: alpha {}, errors +{} points, latency +{}%",
        cs.requests,
        figures.canary_error_ratio * 100.0,
        figures.canary_median_ms,
        bs.requests,
        figures.baseline_error_ratio * 100.0,
        figures.baseline_median_ms,
        figures.errors_p,
        figures.latency_p,
        t.alpha,
        t.error_points * 100.0,
        t.latency_shift * 100.0,
    );
    Judged {
        app: p.app,
        canary: p.canary,
        verdict,
        figures,
        numbers,
        min_requests: t.min_requests,
    }
}

/// The persisted part: every app's rollout state.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    apps: BTreeMap<String, AppState>,
    /// Each app's last judged interval, for status.
    #[serde(default)]
    last_intervals: BTreeMap<String, AnalysisFigures>,
}

/// Failure to read or write the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged ({source}); move it away to start from the configuration")]
    Damaged {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot encode the state for {path}: {source}")]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An operation on an app's rollout.
#[derive(Debug, Clone)]
pub enum Op {
    Start { version: String, strategy: Strategy },
    Promote,
    Pause,
    Resume,
    Abort,
    Rollback,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The engine (behind one async mutex: operations are serialized).
pub struct Engine {
    config: Arc<Config>,
    states: BTreeMap<String, AppState>,
    /// App → version → runtime.
    runtimes: HashMap<String, HashMap<String, Arc<VersionRt>>>,
    /// Per app, what the data plane matches requests by (shared by every table).
    route_keys: HashMap<String, Arc<crate::runtime::RouteKeys>>,
    settings: Arc<crate::config::ProxySettings>,
    apps_shared: HashMap<String, Arc<AppShared>>,
    pub shared: Arc<Shared>,
    signer: Signer,
    generation: u64,
    state_path: PathBuf,
    /// When each app's current analysis interval began.
    interval_start: HashMap<String, Instant>,
    serving: HashSet<(String, String)>,
    /// Last verdict per app, for status.
    pub last_verdicts: HashMap<String, AnalysisFigures>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine(..)")
    }
}

impl Engine {
    /// Builds the engine from a configuration and the state directory's saved rollouts, and
    /// publishes the first routes.
    pub fn new(
        config: Config,
        state_dir: &Path,
        signer: Signer,
        metrics: Metrics,
        access_log: Option<mpsc::UnboundedSender<String>>,
    ) -> Result<Engine, StateError> {
        let state_path = state_dir.join("rollouts.json");
        let saved = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice::<StateFile>(&bytes).map_err(|source| {
                StateError::Damaged {
                    path: state_path.clone(),
                    source,
                }
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::default(),
            Err(source) => {
                return Err(StateError::Read {
                    path: state_path,
                    source,
                })
            }
        };
        let settings = Arc::new(config.proxy.clone());
        let routes_settings = settings.clone();
        let shared = Arc::new(Shared {
            routes: ArcSwap::from_pointee(Routes {
                apps: Vec::new(),
                settings: routes_settings,
                signer: signer.clone(),
                generation: 0,
            }),
            metrics,
            epoch: Instant::now(),
            epoch_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            retry_budget: TpsBudget::new(
                Duration::from_secs(10),
                settings.retry_per_second,
                settings.retry_ratio as f32,
            ),
            access_log,
            health_changed: Notify::new(),
        });
        let mut engine = Engine {
            config: Arc::new(config),
            states: saved.apps,
            runtimes: HashMap::new(),
            route_keys: HashMap::new(),
            settings,
            apps_shared: HashMap::new(),
            shared,
            signer,
            generation: 0,
            state_path,
            interval_start: HashMap::new(),
            serving: HashSet::new(),
            last_verdicts: saved.last_intervals.into_iter().collect(),
        };
        engine.reconcile_states();
        engine.publish(None);
        Ok(engine)
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn state(&self, app: &str) -> Option<&AppState> {
        self.states.get(app)
    }

    pub fn runtime(&self, app: &str, version: &str) -> Option<&Arc<VersionRt>> {
        self.runtimes.get(app).and_then(|m| m.get(version))
    }

    /// Brings saved states in line with the configuration; returns the apps whose rollout
    /// was aborted by it.
    fn reconcile_states(&mut self) -> Vec<String> {
        let now = unix_ms();
        let names: HashSet<&str> = self.config.apps.iter().map(|a| a.name.as_str()).collect();
        self.states.retain(|name, _| names.contains(name.as_str()));
        let mut aborted = Vec::new();
        for app in &self.config.apps {
            let state = self
                .states
                .entry(app.name.clone())
                .or_insert_with(|| AppState::new(app));
            if state.reconcile(app, now).is_some() {
                aborted.push(app.name.clone());
            }
        }
        aborted
    }

    fn version_runtime(
        &mut self,
        app: &App,
        version: &crate::config::AppVersion,
    ) -> Arc<VersionRt> {
        if let Some(rt) = self.runtime(&app.name, &version.id) {
            if rt.spec.matches(app, version) {
                return rt.clone();
            }
        }
        let rt = Arc::new(VersionRt::new(
            app,
            version,
            &self.config.proxy,
            self.shared.metrics.version(&app.name, &version.id),
        ));
        let old = self
            .runtimes
            .entry(app.name.clone())
            .or_default()
            .insert(version.id.clone(), rt.clone());
        if let Some(old) = old {
            // Health seen in another protocol says nothing of this one: checked afresh.
            if old.spec.protocol == rt.spec.protocol {
                for ep in &rt.endpoints {
                    if let Some(was) = old.endpoints.iter().find(|o| o.address == ep.address) {
                        ep.inherit_health(was);
                    }
                }
            }
            // Its endpoints changed: the old set finishes what it has, then goes away.
            self.start_drain(old);
        }
        rt
    }

    /// Builds the routes from the configuration and states and stores them in one swap.
    /// `arrived`: when the admin call that caused it arrived, for the switch histogram.
    pub fn publish(&mut self, arrived: Option<Instant>) {
        self.generation += 1;
        let now = now_ms(self.shared.epoch);
        let config = self.config.clone();
        let mut apps = Vec::with_capacity(config.apps.len());
        // Only what the data plane needs is built before the swap; bookkeeping comes after.
        for app in &config.apps {
            let Some(state) = self.states.get(&app.name) else {
                continue;
            };
            let weights = state.weights();
            let analysed = state
                .rollout
                .as_ref()
                .filter(|_| app.analysis.enabled)
                .map(|r| {
                    (
                        r.version.as_str(),
                        r.baseline.as_deref().unwrap_or(&state.stable),
                    )
                });
            let mut versions = Vec::with_capacity(app.versions.len());
            let mut rts = Vec::with_capacity(app.versions.len());
            let mut collect = Vec::with_capacity(app.versions.len());
            for v in &app.versions {
                let weight = weights.iter().find(|(id, _)| *id == v.id).map(|(_, w)| *w);
                versions.push((v, weight));
                collect.push(analysed.is_some_and(|(c, b)| c == v.id || b == v.id));
            }
            for (v, _) in &versions {
                rts.push(self.version_runtime(app, v));
            }
            let table_versions: Vec<Version> = versions
                .iter()
                .zip(&rts)
                .map(|((v, weight), rt)| Version {
                    id: v.id.clone(),
                    weight: weight.unwrap_or(0),
                    state: if weight.is_some() {
                        State::Serving
                    } else {
                        State::Idle
                    },
                    healthy: rt.healthy(now),
                })
                .collect();
            for (rt, c) in rts.iter().zip(collect) {
                rt.collect.store(c, Ordering::Relaxed);
            }
            let table = match Table::new(table_versions, self.generation) {
                Ok(t) => t,
                Err(e) => {
                    // The rollout logic keeps weights whole; this is a bug, not an input error.
                    tracing::error!(app = %app.name, error = %e, "routing table refused; app left out");
                    continue;
                }
            };
            let shared = match self.apps_shared.get(&app.name) {
                Some(s) => s.clone(),
                None => self
                    .apps_shared
                    .entry(app.name.clone())
                    .or_insert_with(|| Arc::new(AppShared::new(&app.name)))
                    .clone(),
            };
            let keys = match self.route_keys.get(&app.name) {
                Some(k) if k.hosts == app.hosts && k.paths == app.paths => k.clone(),
                _ => {
                    let k = Arc::new(crate::runtime::RouteKeys {
                        hosts: app.hosts.clone(),
                        paths: app.paths.clone(),
                    });
                    self.route_keys.insert(app.name.clone(), k.clone());
                    k
                }
            };
            apps.push(Arc::new(AppRoute {
                name: app.name.as_str().into(),
                keys,
                session_cookie: format!("{}-{}", self.settings.session_cookie, app.name).into(),
                table,
                hyper_only: rts
                    .iter()
                    .any(|rt| rt.spec.protocol == crate::config::UpstreamProtocol::H2c),
                versions: rts,
                shared,
            }));
        }
        let routes = Routes {
            apps,
            settings: self.settings.clone(),
            signer: self.signer.clone(),
            generation: self.generation,
        };
        self.shared.routes.store(Arc::new(routes));
        if let Some(t) = arrived {
            self.shared
                .metrics
                .switch_seconds(t.elapsed().as_secs_f64());
        }
        // After the swap: bookkeeping that no request waits for.
        let mut serving = HashSet::new();
        for app in &config.apps {
            if let Some(state) = self.states.get(&app.name) {
                let weights = state.weights();
                for v in &app.versions {
                    let w = weights.iter().find(|(id, _)| *id == v.id).map(|(_, w)| *w);
                    if w.is_some() {
                        serving.insert((app.name.clone(), v.id.clone()));
                    }
                    self.shared
                        .metrics
                        .set_weight(&app.name, &v.id, w.unwrap_or(0));
                }
            }
        }
        let stopped: Vec<(String, String)> = self.serving.difference(&serving).cloned().collect();
        let started: Vec<(String, String)> = serving.difference(&self.serving).cloned().collect();
        for (app, version) in started {
            if let Some(rt) = self.runtime(&app, &version) {
                rt.drain_generation.fetch_add(1, Ordering::Relaxed);
                rt.pool();
            }
        }
        for (app, version) in stopped {
            if let Some(rt) = self.runtime(&app, &version).cloned() {
                self.start_drain(rt);
            }
        }
        self.serving = serving;
        // Runtimes of versions no longer configured.
        let mut gone = Vec::new();
        for (app, versions) in &mut self.runtimes {
            let declared = config.apps.iter().find(|a| &a.name == app);
            versions.retain(|id, rt| {
                let keep = declared.is_some_and(|a| a.version(id).is_some());
                if !keep {
                    gone.push(rt.clone());
                }
                keep
            });
        }
        self.runtimes.retain(|_, m| !m.is_empty());
        for rt in gone {
            self.start_drain(rt);
        }
    }

    /// A version stopped taking new sessions: close its idle upstream connections, let its
    /// requests finish, and cancel what is left at the drain timeout (unless it serves again
    /// meanwhile).
    fn start_drain(&self, rt: Arc<VersionRt>) {
        let generation = rt.drain_generation.fetch_add(1, Ordering::Relaxed) + 1;
        rt.close_idle(&self.config.proxy);
        let timeout = self.config.proxy.drain_timeout;
        let span = tracing::info_span!("drain", app = %rt.app, version = %rt.id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let deadline = tokio::time::Instant::now() + timeout;
                loop {
                    if rt.drain_generation.load(Ordering::Relaxed) != generation {
                        return;
                    }
                    let left = rt.metrics.inflight.get();
                    if left <= 0 {
                        tracing::debug!("drained");
                        return;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        tracing::warn!(requests = left, "drain timed out; cancelling what is left");
                        let token = rt.drain.swap(Arc::new(CancellationToken::new()));
                        token.cancel();
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            span,
        ));
    }

    /// Starts a new analysis interval for an app (a rollout started or changed step): what
    /// its versions measured before belongs to another weight or rollout and is dropped.
    fn new_interval(&mut self, app: &str) {
        self.interval_start.insert(app.to_owned(), Instant::now());
        if let Some(versions) = self.runtimes.get(app) {
            for rt in versions.values() {
                rt.take_window();
            }
        }
    }

    /// Applies an operation to an app; the new table is stored before this returns.
    pub fn apply(&mut self, app_name: &str, op: Op, arrived: Instant) -> Result<(), RolloutError> {
        let config = self.config.clone();
        let app = config
            .apps
            .iter()
            .find(|a| a.name == app_name)
            .ok_or_else(|| RolloutError::NoApp(app_name.to_owned()))?;
        let state = self
            .states
            .entry(app.name.clone())
            .or_insert_with(|| AppState::new(app));
        let now = unix_ms();
        let mut fresh_interval = false;
        match op {
            Op::Start { version, strategy } => {
                state.start(app, &version, strategy, now)?;
                fresh_interval = true;
            }
            Op::Promote => {
                state.promote(now)?;
                fresh_interval = true;
            }
            Op::Pause => state.pause(now)?,
            Op::Resume => state.resume(now)?,
            Op::Abort => {
                state.abort(now, "aborted by hand")?;
                self.shared.metrics.rollback(&app.name, "manual");
            }
            Op::Rollback => {
                state.rollback(app, now, "rolled back by hand")?;
                self.shared.metrics.rollback(&app.name, "manual");
            }
        }
        self.publish(Some(arrived));
        if fresh_interval {
            // After the swap: the new interval holds only requests routed by the new table,
            // and freeing the old windows (up to 20,000 samples each) is not on the switch's
            // clock.
            self.new_interval(&app.name);
        }
        Ok(())
    }

    /// Installs a new configuration (already validated). Rollouts survive unless a version
    /// they use is gone.
    pub fn reload(&mut self, config: Config) {
        if config.listeners != self.config.listeners {
            tracing::warn!("listener changes take effect at the next start");
        }
        let (old, new) = (&*self.settings, &config.proxy);
        for (setting, changed) in [
            ("proxy.workers", old.workers != new.workers),
            ("proxy.access_log", old.access_log != new.access_log),
            (
                "proxy.retry_ratio and proxy.retry_per_second",
                old.retry_ratio != new.retry_ratio || old.retry_per_second != new.retry_per_second,
            ),
        ] {
            if changed {
                tracing::warn!(setting, "this change takes effect at the next start");
            }
        }
        let pools_changed = old.pool_idle_timeout != new.pool_idle_timeout
            || old.pool_max_idle != new.pool_max_idle
            || old.connect_timeout != new.connect_timeout;
        // Everything else is read per request from the published routes.
        self.settings = Arc::new(config.proxy.clone());
        if pools_changed {
            // In place: replacing the runtimes would drain them, and close their long-lived
            // requests (WebSockets) at the drain timeout for a change of pool limits.
            for rt in self.runtimes.values().flat_map(HashMap::values) {
                rt.apply_settings(&config.proxy);
            }
        }
        self.config = Arc::new(config);
        for app in self.reconcile_states() {
            self.shared.metrics.rollback(&app, "config");
        }
        self.publish(None);
    }

    /// Timers, health and analysis; called a few times a second. Returns whether the state
    /// changed (and should be persisted).
    pub fn tick(&mut self) -> bool {
        let now = unix_ms();
        let mono = now_ms(self.shared.epoch);
        let config = self.config.clone();
        let mut changed = false;
        for app in &config.apps {
            if let Some(state) = self.states.get_mut(&app.name) {
                if state.tick(app, now) {
                    changed = true;
                    self.new_interval(&app.name);
                }
            }
        }
        // Health: republish when a version's health differs from the published table.
        let routes = self.shared.routes.load_full();
        let stale = routes.apps.iter().any(|a| {
            a.table
                .versions()
                .iter()
                .zip(&a.versions)
                .any(|(v, rt)| v.healthy != rt.healthy(mono))
        });
        for rt in self.runtimes.values().flat_map(HashMap::values) {
            for e in &rt.endpoints {
                let ok = e.usable(mono);
                // Exported when it changes (a series lookup allocates; the tick is frequent).
                if e.reported.swap(u8::from(ok), Ordering::Relaxed) != u8::from(ok) {
                    self.shared
                        .metrics
                        .set_endpoint_healthy(&rt.app, &rt.id, &e.address, ok);
                }
            }
        }
        if changed || stale {
            self.publish(None);
        }
        changed
    }

    /// Takes the samples of every app whose analysis interval just ended; they are judged
    /// off the engine's lock and off the data plane's threads ([`judge`]), and the verdicts
    /// come back through [`Engine::apply_verdict`].
    pub fn due_analyses(&mut self) -> Vec<Pending> {
        let config = self.config.clone();
        let mut due = Vec::new();
        for app in &config.apps {
            let Some(state) = self.states.get(&app.name) else {
                continue;
            };
            let Some(r) = &state.rollout else {
                self.interval_start.remove(&app.name);
                continue;
            };
            // A paused rollout is still analysed: pausing holds the weights, and a canary
            // that fails meanwhile is rolled back all the same.
            if !app.analysis.enabled {
                continue;
            }
            let start = *self
                .interval_start
                .entry(app.name.clone())
                .or_insert_with(Instant::now);
            if start.elapsed() < app.analysis.interval {
                continue;
            }
            self.interval_start.insert(app.name.clone(), Instant::now());
            let baseline = r.baseline.clone().unwrap_or_else(|| state.stable.clone());
            let (Some(canary_rt), Some(baseline_rt)) = (
                self.runtime(&app.name, &r.version),
                self.runtime(&app.name, &baseline),
            ) else {
                continue;
            };
            let sample = |w: crate::runtime::Window| stats::Sample {
                requests: w.requests,
                errors: w.errors,
                latencies: w.latencies,
            };
            let mono = now_ms(self.shared.epoch);
            due.push(Pending {
                app: app.name.clone(),
                canary_healthy: canary_rt.healthy(mono),
                baseline_healthy: baseline_rt.healthy(mono),
                canary: r.version.clone(),
                separate_baseline: r.baseline.is_some(),
                baseline,
                canary_sample: sample(canary_rt.take_window()),
                baseline_sample: sample(baseline_rt.take_window()),
                thresholds: stats::Thresholds {
                    min_requests: app.analysis.min_requests,
                    alpha: app.analysis.alpha,
                    error_points: app.analysis.error_points,
                    latency_shift: app.analysis.latency_shift,
                },
            });
        }
        due
    }

    /// Records a judged interval: exports it, logs it with its numbers, counts a pass, or
    /// rolls the canary back. Returns whether the state changed.
    pub fn apply_verdict(&mut self, j: Judged) -> bool {
        let Some(app) = self.config.apps.iter().find(|a| a.name == j.app).cloned() else {
            return false;
        };
        let Some(state) = self.states.get_mut(&j.app) else {
            return false;
        };
        // The rollout may have ended or changed while the numbers were crunched.
        if state.rollout.as_ref().map(|r| &r.version) != Some(&j.canary) {
            return false;
        }
        self.shared.metrics.analysis(&j.app, &j.figures);
        let now = unix_ms();
        let numbers = j.numbers;
        match j.verdict {
            stats::Verdict::NoData => {
                state.log(
                    now,
                    format!(
                        "interval: no data, holding (fewer than {} requests on a side): {numbers}",
                        j.min_requests
                    ),
                );
            }
            stats::Verdict::Pass => {
                state.passed();
                state.log(now, format!("interval: pass: {numbers}"));
            }
            stats::Verdict::Fail(why) => {
                tracing::warn!(app = %j.app, canary = %j.canary, reason = %why, "canary failed its analysis; rolling back");
                state.log(now, format!("interval: FAIL ({why}): {numbers}"));
                if state
                    .rollback(&app, now, &format!("analysis failed: {why}"))
                    .is_ok()
                {
                    self.shared.metrics.rollback(&j.app, "analysis");
                    self.last_verdicts.insert(j.app.clone(), j.figures);
                    self.publish(None);
                    return true;
                }
            }
        }
        self.last_verdicts.insert(j.app.clone(), j.figures);
        true
    }

    /// The state file's contents now (written by [`persist`] outside the engine's lock).
    pub fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        let file = StateFile {
            apps: self.states.clone(),
            last_intervals: self
                .last_verdicts
                .iter()
                .filter(|(app, _)| self.states.contains_key(*app))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        serde_json::to_vec_pretty(&file).map_err(|source| StateError::Encode {
            path: self.state_path.clone(),
            source,
        })
    }

    pub fn state_path(&self) -> &Path {
        &self.state_path
    }
}

/// Writes the state file atomically (temporary file, fsync, rename, fsync of the directory).
pub fn persist(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    use std::io::Write;
    let write = || -> std::io::Result<()> {
        let mut f = atomic_write_file::AtomicWriteFile::options().open(path)?;
        f.write_all(bytes)?;
        f.commit()
    };
    write().map_err(|source| StateError::Write {
        path: path.to_owned(),
        source,
    })
}

/// The session-cookie key: made once (32 random bytes) and kept in the state directory, so
/// sessions stay pinned across restarts and across proxies sharing the directory.
pub fn session_key(state_dir: &Path) -> Result<Vec<u8>, StateError> {
    let path = state_dir.join("session.key");
    match std::fs::read(&path) {
        Ok(k) if k.len() >= 32 => return Ok(k),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(StateError::Read { path, source }),
    }
    let mut key = vec![0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
    persist(&path, &key)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        crate::config::parse(
            "[[listeners]]\naddress=\"127.0.0.1:1\"\n[apps.a]\nstable=\"v1\"\n[apps.a.versions.v1]\nendpoints=[\"127.0.0.1:2\"]\n[apps.a.versions.v2]\nendpoints=[\"127.0.0.1:3\"]\n",
            Path::new("."),
        )
        .unwrap()
    }

    fn engine(dir: &Path) -> Result<Engine, StateError> {
        Engine::new(config(), dir, Signer::new(&[7; 32]), Metrics::new(), None)
    }

    #[tokio::test]
    async fn a_reload_applies_proxy_settings_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = engine(dir.path()).unwrap();
        let before = e.runtime("a", "v1").unwrap().clone();
        let text = "[proxy]\noverride_header = \"x-qa\"\npool_max_idle = 3\npool_idle_timeout = \"5s\"\n[[listeners]]\naddress=\"127.0.0.1:1\"\n[apps.a]\nstable=\"v1\"\n[apps.a.versions.v1]\nendpoints=[\"127.0.0.1:2\"]\n[apps.a.versions.v2]\nendpoints=[\"127.0.0.1:3\"]\n";
        e.reload(crate::config::parse(text, Path::new(".")).unwrap());
        // Read per request from the published routes.
        assert_eq!(e.shared.routes.load().settings.override_header, "x-qa");
        // The same runtime (nothing drained), with the new pool limits.
        let after = e.runtime("a", "v1").unwrap();
        assert!(Arc::ptr_eq(&before, after));
        assert_eq!(after.pool_max_idle.load(Ordering::Relaxed), 3);
        assert_eq!(after.pool_idle_ms.load(Ordering::Relaxed), 5000);
    }

    #[test]
    fn state_round_trips_and_a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = engine(dir.path()).unwrap();
        e.apply(
            "a",
            Op::Start {
                version: "v2".into(),
                strategy: Strategy::Canary {
                    steps: crate::rollout::parse_steps("25").unwrap(),
                },
            },
            Instant::now(),
        )
        .unwrap();
        persist(e.state_path(), &e.snapshot().unwrap()).unwrap();
        let again = engine(dir.path()).unwrap();
        assert_eq!(
            again.state("a").unwrap().weights(),
            vec![("v1".to_string(), 7500), ("v2".to_string(), 2500)]
        );
        // The published table says the same.
        let routes = again.shared.routes.load();
        assert_eq!(routes.apps[0].table.versions()[1].weight, 2500);

        std::fs::write(dir.path().join("rollouts.json"), b"{\"apps\": {\"a\": {").unwrap();
        assert!(matches!(
            engine(dir.path()),
            Err(StateError::Damaged { .. })
        ));
    }
}
