//! The rollout state of each app, what it means for the weights, and how it moves: start,
//! promote, pause, resume, abort, rollback, step timers and analysis verdicts. Pure logic on
//! serializable data; the engine persists it and turns it into routing tables.

use serde::{Deserialize, Serialize};

use crate::config::App;
use crate::routing::TOTAL;

/// One canary step: a weight (basis points) held for a duration, or until `promote`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub weight: u32,
    pub duration_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Strategy {
    Canary { steps: Vec<Step> },
    BlueGreen,
}

/// A rollout in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub version: String,
    pub strategy: Strategy,
    pub step: usize,
    /// Time spent in the current step before the last pause (ms).
    pub step_elapsed_ms: u64,
    /// When the current step (re)started running (unix ms); `None` while paused.
    pub running_since_ms: Option<u64>,
    pub paused: bool,
    /// Passing analysis intervals in this step.
    pub passes: u32,
    /// The separately deployed baseline compared with the canary, if one is declared.
    pub baseline: Option<String>,
    pub started_ms: u64,
}

/// A recorded decision: a verdict, a step, a rollback; kept for status and logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppState {
    pub stable: String,
    pub previous_stable: Option<String>,
    pub rollout: Option<Rollout>,
    /// How the last rollout ended (`promoted`, `aborted: …`, `rolled back: …`).
    pub last_outcome: Option<String>,
    pub events: Vec<Event>,
}

const KEEP_EVENTS: usize = 100;

/// A refused operation (the admin API answers 409 or 400 with the message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    #[error("app {0:?} is not configured")]
    NoApp(String),
    #[error("version {version:?} is not declared for app {app:?}")]
    NoVersion { app: String, version: String },
    #[error("a rollout of {0:?} is already in progress; promote, abort or roll it back first")]
    InProgress(String),
    #[error("no rollout is in progress")]
    NoRollout,
    #[error("{0:?} is already the stable version")]
    AlreadyStable(String),
    #[error("{0:?} is the app's baseline instance set, not a release")]
    IsBaseline(String),
    #[error("there is no previous stable version to roll back to")]
    NoPrevious,
    #[error("bad canary steps: {0}")]
    Steps(String),
}

/// Parses `10:2m,25:2m,50:5m,100`: percentages rising to 100, durations optional.
pub fn parse_steps(text: &str) -> Result<Vec<Step>, RolloutError> {
    let mut steps = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (pct, dur) = match part.split_once(':') {
            Some((p, d)) => (p.trim(), Some(d.trim())),
            None => (part, None),
        };
        let pct: f64 = pct
            .trim_end_matches('%')
            .parse()
            .map_err(|_| RolloutError::Steps(format!("{part:?}: the weight is not a number")))?;
        if !(pct > 0.0 && pct <= 100.0) {
            return Err(RolloutError::Steps(format!(
                "{part:?}: the weight must be above 0 and at most 100"
            )));
        }
        let weight = (pct * 100.0).round() as u32;
        if steps.last().is_some_and(|s: &Step| s.weight >= weight) {
            return Err(RolloutError::Steps(format!(
                "{part:?}: weights must rise from step to step"
            )));
        }
        let duration_ms = match dur {
            None | Some("") => None,
            Some(d) => {
                let d = humantime::parse_duration(d).map_err(|e| {
                    RolloutError::Steps(format!("{part:?}: {d:?} is not a duration ({e})"))
                })?;
                Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            }
        };
        steps.push(Step {
            weight,
            duration_ms,
        });
    }
    match steps.last() {
        None => Err(RolloutError::Steps("no steps".into())),
        Some(last) if last.weight != TOTAL => {
            steps.push(Step {
                weight: TOTAL,
                duration_ms: None,
            });
            Ok(steps)
        }
        Some(_) => Ok(steps),
    }
}

impl AppState {
    pub fn new(app: &App) -> AppState {
        AppState {
            stable: app.stable.clone(),
            previous_stable: None,
            rollout: None,
            last_outcome: None,
            events: Vec::new(),
        }
    }

    pub fn log(&mut self, now_ms: u64, what: impl Into<String>) {
        let what = what.into();
        tracing::info!(event = %what, "rollout");
        self.events.push(Event {
            at_ms: now_ms,
            what,
        });
        if self.events.len() > KEEP_EVENTS {
            let extra = self.events.len() - KEEP_EVENTS;
            self.events.drain(..extra);
        }
    }

    /// Weights in basis points of every version with traffic, stable first.
    pub fn weights(&self) -> Vec<(String, u32)> {
        let Some(r) = &self.rollout else {
            return vec![(self.stable.clone(), TOTAL)];
        };
        let canary = match &r.strategy {
            Strategy::BlueGreen => TOTAL,
            Strategy::Canary { steps } => steps.get(r.step).map_or(TOTAL, |s| s.weight),
        };
        let baseline = match &r.baseline {
            Some(_) => canary.min(TOTAL - canary),
            None => 0,
        };
        let stable = TOTAL - canary - baseline;
        let mut out = vec![(self.stable.clone(), stable), (r.version.clone(), canary)];
        if let Some(b) = &r.baseline {
            out.push((b.clone(), baseline));
        }
        out
    }

    /// Versions that serve sessions (stable, and a rollout's canary and baseline).
    pub fn serving(&self) -> Vec<String> {
        self.weights().into_iter().map(|(v, _)| v).collect()
    }

    /// Starts a rollout of `version`.
    pub fn start(
        &mut self,
        app: &App,
        version: &str,
        strategy: Strategy,
        now_ms: u64,
    ) -> Result<(), RolloutError> {
        if app.version(version).is_none() {
            return Err(RolloutError::NoVersion {
                app: app.name.clone(),
                version: version.to_owned(),
            });
        }
        if let Some(r) = &self.rollout {
            return Err(RolloutError::InProgress(r.version.clone()));
        }
        if version == self.stable {
            return Err(RolloutError::AlreadyStable(version.to_owned()));
        }
        if app.baseline.as_deref() == Some(version) {
            return Err(RolloutError::IsBaseline(version.to_owned()));
        }
        let what = match &strategy {
            Strategy::BlueGreen => format!("blue/green switch to {version} started"),
            Strategy::Canary { steps } => format!(
                "canary of {version} started: steps {}",
                steps
                    .iter()
                    .map(|s| match s.duration_ms {
                        Some(d) => format!("{}%:{}s", f64::from(s.weight) / 100.0, d / 1000),
                        None => format!("{}%", f64::from(s.weight) / 100.0),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        };
        self.rollout = Some(Rollout {
            version: version.to_owned(),
            strategy,
            step: 0,
            step_elapsed_ms: 0,
            running_since_ms: Some(now_ms),
            paused: false,
            passes: 0,
            baseline: app
                .baseline
                .clone()
                .filter(|b| *b != self.stable && b != version),
            started_ms: now_ms,
        });
        self.log(now_ms, what);
        self.settle(now_ms);
        Ok(())
    }

    /// Completes the rollout if its current step is the full weight.
    fn settle(&mut self, now_ms: u64) {
        let complete = match &self.rollout {
            None => false,
            Some(r) => match &r.strategy {
                Strategy::BlueGreen => true,
                Strategy::Canary { steps } => steps.get(r.step).is_none_or(|s| s.weight >= TOTAL),
            },
        };
        if complete {
            if let Some(r) = self.rollout.take() {
                self.previous_stable = Some(std::mem::replace(&mut self.stable, r.version));
                self.last_outcome = Some("promoted".into());
                let stable = self.stable.clone();
                self.log(now_ms, format!("{stable} promoted to stable"));
            }
        }
    }

    fn next_step(&mut self, now_ms: u64, why: &str) {
        if let Some(r) = &mut self.rollout {
            r.step += 1;
            r.step_elapsed_ms = 0;
            r.passes = 0;
            if !r.paused {
                r.running_since_ms = Some(now_ms);
            }
            let weight = match &r.strategy {
                Strategy::Canary { steps } => steps.get(r.step).map_or(TOTAL, |s| s.weight),
                Strategy::BlueGreen => TOTAL,
            };
            let version = r.version.clone();
            self.log(
                now_ms,
                format!("{version} at {}% ({why})", f64::from(weight) / 100.0),
            );
        }
        self.settle(now_ms);
    }

    /// Moves to the next step now.
    pub fn promote(&mut self, now_ms: u64) -> Result<(), RolloutError> {
        if self.rollout.is_none() {
            return Err(RolloutError::NoRollout);
        }
        self.next_step(now_ms, "promoted by hand");
        Ok(())
    }

    pub fn pause(&mut self, now_ms: u64) -> Result<(), RolloutError> {
        let r = self.rollout.as_mut().ok_or(RolloutError::NoRollout)?;
        if !r.paused {
            r.paused = true;
            if let Some(since) = r.running_since_ms.take() {
                r.step_elapsed_ms += now_ms.saturating_sub(since);
            }
            self.log(now_ms, "paused");
        }
        Ok(())
    }

    pub fn resume(&mut self, now_ms: u64) -> Result<(), RolloutError> {
        let r = self.rollout.as_mut().ok_or(RolloutError::NoRollout)?;
        if r.paused {
            r.paused = false;
            r.running_since_ms = Some(now_ms);
            self.log(now_ms, "resumed");
        }
        Ok(())
    }

    /// Ends the rollout with all traffic on stable; returns the version taken out.
    pub fn abort(&mut self, now_ms: u64, why: &str) -> Result<String, RolloutError> {
        let r = self.rollout.take().ok_or(RolloutError::NoRollout)?;
        self.last_outcome = Some(format!("aborted: {why}"));
        self.log(
            now_ms,
            format!(
                "{} aborted, all traffic on {} ({why})",
                r.version, self.stable
            ),
        );
        Ok(r.version)
    }

    /// Aborts a rollout in progress, or else goes back to the previous stable version.
    /// Returns the version taken out of service.
    pub fn rollback(&mut self, app: &App, now_ms: u64, why: &str) -> Result<String, RolloutError> {
        if self.rollout.is_some() {
            let out = self.abort(now_ms, why)?;
            self.last_outcome = Some(format!("rolled back: {why}"));
            return Ok(out);
        }
        let previous = self
            .previous_stable
            .clone()
            .filter(|p| app.version(p).is_some())
            .ok_or(RolloutError::NoPrevious)?;
        let out = std::mem::replace(&mut self.stable, previous);
        self.previous_stable = Some(out.clone());
        self.last_outcome = Some(format!("rolled back: {why}"));
        let stable = self.stable.clone();
        self.log(
            now_ms,
            format!("rolled back from {out} to {stable} ({why})"),
        );
        Ok(out)
    }

    /// Advances a step whose time is up and whose analysis passed enough intervals.
    /// Returns whether anything changed.
    pub fn tick(&mut self, app: &App, now_ms: u64) -> bool {
        let Some(r) = &self.rollout else {
            return false;
        };
        let Strategy::Canary { steps } = &r.strategy else {
            return false;
        };
        if r.paused {
            return false;
        }
        let Some(step) = steps.get(r.step) else {
            return false;
        };
        let Some(duration) = step.duration_ms else {
            return false;
        };
        let elapsed = r.step_elapsed_ms
            + r.running_since_ms
                .map_or(0, |since| now_ms.saturating_sub(since));
        let analysed = !app.analysis.enabled || r.passes >= app.analysis.passes_per_step;
        if elapsed >= duration && analysed {
            self.next_step(now_ms, "step time passed");
            return true;
        }
        false
    }

    /// Counts a passing analysis interval.
    pub fn passed(&mut self) {
        if let Some(r) = &mut self.rollout {
            r.passes += 1;
        }
    }

    /// Applies a new configuration: a rollout survives unless one of its versions (the
    /// stable one among them) is gone. Returns what was taken out of service, if anything.
    pub fn reconcile(&mut self, app: &App, now_ms: u64) -> Option<String> {
        let mut out = None;
        if app.version(&self.stable).is_none() {
            let gone = std::mem::replace(&mut self.stable, app.stable.clone());
            let stable = self.stable.clone();
            self.log(
                now_ms,
                format!("stable version {gone} removed from the configuration; {stable} is stable"),
            );
            out = Some(gone);
        }
        if let Some(r) = &self.rollout {
            let missing = [Some(&r.version), r.baseline.as_ref()]
                .into_iter()
                .flatten()
                .find(|v| app.version(v).is_none())
                .cloned();
            let stable_is_canary = r.version == self.stable;
            // A rollout compares its canary with the stable version it started from (and
            // hands back to it on abort): with that version gone (`out`), it ends on the new
            // stable.
            let missing = missing.or_else(|| out.clone());
            if let Some(v) = missing {
                let why = format!("version {v} removed from the configuration");
                if let Ok(taken) = self.abort(now_ms, &why) {
                    out.get_or_insert(taken);
                }
            } else if stable_is_canary {
                let _ = self.abort(now_ms, "the canary became the configured stable version");
            }
        }
        if self
            .previous_stable
            .as_ref()
            .is_some_and(|p| app.version(p).is_none())
        {
            self.previous_stable = None;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn app(baseline: bool) -> App {
        let text = format!(
            "[[listeners]]\naddress=\"127.0.0.1:1\"\n[apps.a]\nstable=\"v1\"\n{}\n[apps.a.versions.v1]\nendpoints=[\"127.0.0.1:2\"]\n[apps.a.versions.v2]\nendpoints=[\"127.0.0.1:3\"]\n[apps.a.versions.base]\nendpoints=[\"127.0.0.1:4\"]\n",
            if baseline { "baseline=\"base\"" } else { "" }
        );
        crate::config::parse(&text, Path::new("."))
            .unwrap()
            .apps
            .remove(0)
    }

    #[test]
    fn steps() {
        let s = parse_steps("10:2m,25:2m,50:5m,100").unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(
            s[0],
            Step {
                weight: 1000,
                duration_ms: Some(120_000)
            }
        );
        assert_eq!(
            s[3],
            Step {
                weight: 10000,
                duration_ms: None
            }
        );
        assert_eq!(parse_steps("5,50").unwrap().last().unwrap().weight, 10000);
        assert!(parse_steps("50,10").is_err());
        assert!(parse_steps("0").is_err());
        assert!(parse_steps("10:soon").is_err());
        assert!(parse_steps("").is_err());
    }

    #[test]
    fn canary_with_baseline_walks_its_steps() {
        let a = app(true);
        let mut s = AppState::new(&a);
        let steps = parse_steps("10:1s,50").unwrap();
        s.start(&a, "v2", Strategy::Canary { steps }, 0).unwrap();
        assert_eq!(
            s.weights(),
            vec![
                ("v1".into(), 8000),
                ("v2".into(), 1000),
                ("base".into(), 1000)
            ]
        );
        // Time alone is not enough: three passing intervals are needed.
        assert!(!s.tick(&a, 5000));
        for _ in 0..3 {
            s.passed();
        }
        assert!(s.tick(&a, 5000));
        assert_eq!(
            s.weights(),
            vec![("v1".into(), 0), ("v2".into(), 5000), ("base".into(), 5000)]
        );
        // 50% has no duration: it waits for promote.
        assert!(!s.tick(&a, 999_999));
        s.promote(1_000_000).unwrap();
        assert_eq!(s.stable, "v2");
        assert_eq!(s.previous_stable.as_deref(), Some("v1"));
        assert!(s.rollout.is_none());
        assert_eq!(s.weights(), vec![("v2".into(), 10000)]);
        // And back.
        assert_eq!(s.rollback(&a, 1_000_001, "manual").unwrap(), "v2");
        assert_eq!(s.stable, "v1");
    }

    #[test]
    fn pause_stops_the_clock() {
        let mut a = app(false);
        a.analysis.enabled = false;
        let mut s = AppState::new(&a);
        let steps = parse_steps("10:10s,100").unwrap();
        s.start(&a, "v2", Strategy::Canary { steps }, 0).unwrap();
        s.pause(4000).unwrap();
        assert!(!s.tick(&a, 60_000));
        s.resume(60_000).unwrap();
        assert!(!s.tick(&a, 65_000));
        assert!(s.tick(&a, 66_000));
        assert_eq!(s.stable, "v2");
    }

    #[test]
    fn refusals() {
        let a = app(true);
        let mut s = AppState::new(&a);
        assert_eq!(s.promote(0), Err(RolloutError::NoRollout));
        assert!(matches!(
            s.start(&a, "v9", Strategy::BlueGreen, 0),
            Err(RolloutError::NoVersion { .. })
        ));
        assert_eq!(
            s.start(&a, "v1", Strategy::BlueGreen, 0),
            Err(RolloutError::AlreadyStable("v1".into()))
        );
        assert_eq!(
            s.start(&a, "base", Strategy::BlueGreen, 0),
            Err(RolloutError::IsBaseline("base".into()))
        );
        assert_eq!(s.rollback(&a, 0, "x"), Err(RolloutError::NoPrevious));
        s.start(
            &a,
            "v2",
            Strategy::Canary {
                steps: parse_steps("10").unwrap(),
            },
            0,
        )
        .unwrap();
        assert_eq!(
            s.start(&a, "v2", Strategy::BlueGreen, 0),
            Err(RolloutError::InProgress("v2".into()))
        );
    }

    #[test]
    fn blue_green_switches_at_once() {
        let a = app(false);
        let mut s = AppState::new(&a);
        s.start(&a, "v2", Strategy::BlueGreen, 0).unwrap();
        assert_eq!(s.weights(), vec![("v2".into(), 10000)]);
        assert_eq!(s.last_outcome.as_deref(), Some("promoted"));
    }

    /// A state with a canary of v2 on `steps` started at time 0.
    fn canary_of_v2(a: &App, steps: &str) -> AppState {
        let mut s = AppState::new(a);
        let steps = parse_steps(steps).unwrap();
        s.start(a, "v2", Strategy::Canary { steps }, 0).unwrap();
        s
    }

    #[test]
    fn a_reload_keeps_a_rollout_unless_it_removes_a_version() {
        let a = app(false);
        let mut s = canary_of_v2(&a, "10");
        let before = s.clone();
        assert_eq!(s.reconcile(&a, 1), None);
        assert_eq!(s, before);
        let mut smaller = a.clone();
        smaller.versions.retain(|v| v.id != "v2");
        assert_eq!(s.reconcile(&smaller, 2), Some("v2".into()));
        assert!(s.rollout.is_none());
        assert_eq!(s.weights(), vec![("v1".into(), 10000)]);
    }

    #[test]
    fn a_reload_that_removes_the_stable_version_ends_the_rollout_on_the_new_one() {
        let a = app(false);
        let mut s = canary_of_v2(&a, "10,50");
        let mut moved = a.clone();
        moved.versions.retain(|v| v.id != "v1");
        moved.stable = "base".into();
        assert_eq!(s.reconcile(&moved, 1), Some("v1".into()));
        assert!(
            s.rollout.is_none(),
            "the canary must not go on against a new stable"
        );
        assert_eq!(s.stable, "base");
        assert_eq!(s.weights(), vec![("base".into(), 10000)]);
        assert!(
            s.last_outcome
                .as_deref()
                .is_some_and(|o| o.contains("aborted") && o.contains("v1 removed")),
            "{:?}",
            s.last_outcome
        );
    }
}
