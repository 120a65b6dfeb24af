//! The control plane's clock for schedules and backup times.
//!
//! Normally the system's. `HEMIRON_TEST_CLOCK=START*RATE` (an RFC 3339 time and a speed-up,
//! e.g. `2027-03-01T00:00:00Z*21600`: a day in four seconds) makes it start at START and run
//! RATE times fast, so that tests cover days of schedules and retention in seconds. Only the
//! scheduler and backup times follow it; leases, sessions and tokens keep real time.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// What `HEMIRON_TEST_CLOCK` holds that is not a clock.
#[derive(Debug, thiserror::Error)]
#[error(
    "HEMIRON_TEST_CLOCK={value:?}: {reason} (expected START*RATE, e.g. 2027-03-01T00:00:00Z*3600)"
)]
pub struct ClockSpecError {
    value: String,
    reason: String,
}

#[derive(Debug, Clone)]
pub struct Clock(Arc<Kind>);

#[derive(Debug)]
enum Kind {
    System,
    Scaled {
        start_ms: i64,
        rate: f64,
        origin: Instant,
    },
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(Kind::System))
    }

    /// Starts at `start_ms` (Unix milliseconds) now and runs `rate` times as fast as real time.
    pub fn scaled(start_ms: i64, rate: f64) -> Clock {
        Clock(Arc::new(Kind::Scaled {
            start_ms,
            rate,
            origin: Instant::now(),
        }))
    }

    /// The clock `HEMIRON_TEST_CLOCK` asks for, or the system's.
    pub fn from_env() -> Result<Clock, ClockSpecError> {
        match std::env::var("HEMIRON_TEST_CLOCK") {
            Ok(v) if !v.is_empty() => Clock::parse(&v),
            _ => Ok(Clock::system()),
        }
    }

    pub fn parse(value: &str) -> Result<Clock, ClockSpecError> {
        let err = |reason: &str| ClockSpecError {
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let (start, rate) = value.split_once('*').ok_or_else(|| err("no '*'"))?;
        let start = chrono::DateTime::parse_from_rfc3339(start.trim())
            .map_err(|e| err(&format!("bad start time: {e}")))?;
        let rate: f64 = rate
            .trim()
            .parse()
            .map_err(|_| err("the rate is not a number"))?;
        if !(rate.is_finite() && rate > 0.0 && rate <= 1e7) {
            return Err(err("the rate must be above 0 and at most 10000000"));
        }
        Ok(Clock::scaled(start.timestamp_millis(), rate))
    }

    pub fn is_system(&self) -> bool {
        matches!(*self.0, Kind::System)
    }

    /// Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        match &*self.0 {
            Kind::System => crate::store::now_ms(),
            Kind::Scaled {
                start_ms,
                rate,
                origin,
            } => {
                let real = origin.elapsed().as_secs_f64() * 1000.0;
                start_ms + (real * rate) as i64
            }
        }
    }

    /// The real time it takes this clock to advance `ms`.
    pub fn real(&self, ms: i64) -> Duration {
        let ms = ms.max(0) as f64;
        match &*self.0 {
            Kind::System => Duration::from_secs_f64(ms / 1000.0),
            Kind::Scaled { rate, .. } => Duration::from_secs_f64(ms / 1000.0 / rate),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scaled_clock_starts_where_told_and_runs_fast() {
        let c = Clock::parse("2027-03-01T00:00:00Z*86400").unwrap();
        let start = 1_803_859_200_000; // 2027-03-01T00:00:00Z
        let t0 = c.now_ms();
        assert!((start..start + 60_000).contains(&t0), "{t0}");
        std::thread::sleep(Duration::from_millis(50));
        // 50 ms real is 72 minutes at this rate.
        assert!(c.now_ms() - t0 >= 4_000_000);
        assert_eq!(c.real(86_400_000), Duration::from_secs(1));
        assert!(!c.is_system());
    }

    proptest::proptest! {
        #[test]
        fn any_spec_parses_or_fails_cleanly(text in "[0-9TZ:*.+-]{0,40}") {
            let _ = Clock::parse(&text);
        }
    }

    #[test]
    fn bad_specs_are_refused() {
        for bad in [
            "",
            "2027-03-01T00:00:00Z",
            "yesterday*2",
            "2027-03-01T00:00:00Z*0",
            "2027-03-01T00:00:00Z*x",
        ] {
            assert!(Clock::parse(bad).is_err(), "{bad}");
        }
    }
}
