//! When a schedule runs (cron, in a time zone) and which of its backups it keeps.

use std::str::FromStr;

use chrono::{Offset, TimeZone};
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use hemiron_pve::prune::{self, Backup, Mark, PruneOptions};

/// A schedule's timing: a five-field cron pattern read in an IANA time zone.
#[derive(Debug, Clone)]
pub struct Timing {
    cron: Cron,
    zone: chrono_tz::Tz,
}

/// An IANA time zone by name (`UTC`, `Europe/Paris`).
pub fn parse_zone(zone: &str) -> Result<chrono_tz::Tz, TimingError> {
    chrono_tz::Tz::from_str(zone).map_err(|_| {
        TimingError::Zone(format!(
            "{zone:?} is not an IANA time zone (e.g. UTC, Europe/Paris)"
        ))
    })
}

/// What is wrong with a schedule's timing, by field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    #[error("cron: {0}")]
    Cron(String),
    #[error("timezone: {0}")]
    Zone(String),
}

impl Timing {
    /// `cron` as Vixie cron reads it (minute hour day-of-month month day-of-week, with `@daily`
    /// and the like; day of month and day of week match either, as in cron), in `zone` (`UTC`
    /// or an IANA name such as `Europe/Paris`).
    pub fn parse(cron: &str, zone: &str) -> Result<Timing, TimingError> {
        let zone = parse_zone(zone)?;
        let parser = CronParser::builder().seconds(Seconds::Disallowed).build();
        let cron = parser
            .parse(cron)
            .map_err(|e| TimingError::Cron(e.to_string()))?;
        let timing = Timing { cron, zone };
        // A pattern that can never match (`0 0 31 2 *`) is refused now, not at its first run.
        if timing.next_after(0).is_none() {
            return Err(TimingError::Cron("the pattern never matches".into()));
        }
        Ok(timing)
    }

    /// The first run strictly after `ms` (Unix milliseconds), if any. A local time that a
    /// summer-time change skips runs at the next time that exists; one it repeats, once.
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        let from = self.zone.timestamp_millis_opt(ms).single()?;
        let next = self.cron.find_next_occurrence(&from, false).ok()?;
        Some(next.timestamp_millis())
    }

    /// The pattern in words ("At 03:00 on every day").
    pub fn describe(&self) -> String {
        self.cron.describe()
    }

    pub fn zone(&self) -> chrono_tz::Tz {
        self.zone
    }

    /// The zone's offset from UTC at a Unix time (seconds).
    pub fn offset_at(&self, secs: i64) -> time::UtcOffset {
        let seconds = self
            .zone
            .timestamp_opt(secs, 0)
            .single()
            .map(|t| t.offset().fix().local_minus_utc())
            .unwrap_or(0);
        time::UtcOffset::from_whole_seconds(seconds).unwrap_or(time::UtcOffset::UTC)
    }
}

/// How many of a schedule's backups to keep, as Proxmox's `prune-backups` counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub last: u64,
    pub daily: u64,
    pub weekly: u64,
    pub monthly: u64,
}

impl Retention {
    /// The most backups it can keep.
    pub fn total(&self) -> u64 {
        self.last + self.daily + self.weekly + self.monthly
    }

    fn options(&self) -> PruneOptions {
        let some = |n: u64| (n > 0).then_some(n);
        PruneOptions {
            keep_last: some(self.last),
            keep_daily: some(self.daily),
            keep_weekly: some(self.weekly),
            keep_monthly: some(self.monthly),
            ..PruneOptions::default()
        }
    }

    /// Which of the backups taken at `taken_ms` (Unix milliseconds, any order) go: true for
    /// each to remove. Days, weeks and months are those of `timing`'s zone.
    pub fn remove(&self, taken_ms: &[i64], timing: &Timing) -> Vec<bool> {
        if self.total() == 0 {
            return vec![false; taken_ms.len()];
        }
        let backups: Vec<Backup> = taken_ms
            .iter()
            .map(|ms| Backup {
                ctime: ms.div_euclid(1000),
                protected: false,
            })
            .collect();
        prune::mark_in(&backups, &self.options(), |secs| timing.offset_at(secs))
            .into_iter()
            .map(|m| m == Mark::Remove)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Timelike};

    fn ms(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    }

    fn local(t: &Timing, ms: i64) -> String {
        t.zone()
            .timestamp_millis_opt(ms)
            .unwrap()
            .format("%Y-%m-%d %H:%M %Z")
            .to_string()
    }

    #[test]
    fn runs_follow_the_zone_and_its_summer_time() {
        let t = Timing::parse("30 2 * * *", "Europe/Paris").unwrap();
        // 2027-03-28: clocks go from 02:00 to 03:00, so 02:30 does not exist that day.
        let mut at = ms("2027-03-26T12:00:00Z");
        let mut seen = Vec::new();
        for _ in 0..4 {
            at = t.next_after(at).unwrap();
            seen.push(local(&t, at));
        }
        assert_eq!(seen[0], "2027-03-27 02:30 CET");
        assert!(seen[1].starts_with("2027-03-28 03:"), "{seen:?}");
        assert_eq!(seen[2], "2027-03-29 02:30 CEST");
        // UTC by name, and the other fields.
        let t = Timing::parse("0 3 * * 1", "UTC").unwrap();
        let next = t.next_after(ms("2027-03-03T12:00:00Z")).unwrap();
        let d = chrono::Utc.timestamp_millis_opt(next).unwrap();
        assert_eq!(
            (d.weekday(), d.hour(), d.minute()),
            (chrono::Weekday::Mon, 3, 0)
        );
        assert_eq!(next, ms("2027-03-08T03:00:00Z"));
        assert!(Timing::parse("@daily", "UTC").is_ok());
    }

    /// Proxmox VE's documented retention example (vzdump, "Retention Settings Example":
    /// `keep-last=3,keep-daily=13,keep-weekly=8,keep-monthly=11`; its `keep-yearly` is not a
    /// schedule option here) on a schedule's daily backups: the newest 16 days, then the
    /// Sundays of 8 older weeks, then the last days of 11 older months.
    #[test]
    fn the_documented_example_on_a_daily_schedule() {
        let t = Timing::parse("0 12 * * *", "UTC").unwrap();
        let mut at = ms("2024-01-01T00:00:00Z");
        let mut taken = Vec::new();
        while at < ms("2026-12-06T13:00:00Z") {
            at = t.next_after(at).unwrap();
            taken.push(at);
        }
        taken.pop();
        let r = Retention {
            last: 3,
            daily: 13,
            weekly: 8,
            monthly: 11,
        };
        let mut kept: Vec<i64> = taken
            .iter()
            .zip(r.remove(&taken, &t))
            .filter(|(_, remove)| !remove)
            .map(|(ms, _)| *ms)
            .collect();
        kept.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(kept.len(), 35);
        let day = |ms: i64| chrono::Utc.timestamp_millis_opt(ms).unwrap();
        for (i, k) in kept[..16].iter().enumerate() {
            assert_eq!(*k, ms("2026-12-06T12:00:00Z") - i as i64 * 86_400_000);
        }
        for k in &kept[16..24] {
            assert_eq!(day(*k).weekday(), chrono::Weekday::Sun, "{}", day(*k));
        }
        for k in &kept[24..] {
            let next = day(*k + 86_400_000);
            assert_ne!(day(*k).month(), next.month(), "{} ends no month", day(*k));
        }
    }

    proptest::proptest! {
        /// Any text is a timing or a clear error, never a panic; a timing's next run is
        /// after the time asked and its next run again after that.
        #[test]
        fn any_pattern_parses_or_fails_cleanly(
            cron in "[0-9*/,LW#?@a-z -]{0,30}",
            zone in proptest::sample::select(vec!["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Nowhere/City"]),
            from in 0i64..4_102_444_800_000,
        ) {
            if let Ok(t) = Timing::parse(&cron, zone) {
                if let Some(next) = t.next_after(from) {
                    proptest::prop_assert!(next > from);
                    if let Some(again) = t.next_after(next) {
                        proptest::prop_assert!(again > next);
                    }
                }
            }
        }

        #[test]
        fn standard_patterns_run_on_their_minute(minute in 0u32..60, hour in 0u32..24, from in 0i64..4_102_444_800_000) {
            let t = Timing::parse(&format!("{minute} {hour} * * *"), "UTC").unwrap();
            let next = t.next_after(from).unwrap();
            let d = chrono::Utc.timestamp_millis_opt(next).unwrap();
            proptest::prop_assert_eq!((d.hour(), d.minute(), d.second()), (hour, minute, 0));
            proptest::prop_assert!(next > from && next - from <= 86_400_000);
        }
    }

    #[test]
    fn bad_timings_say_which_field() {
        assert!(matches!(
            Timing::parse("0 3 * *", "UTC"),
            Err(TimingError::Cron(_))
        ));
        assert!(matches!(
            Timing::parse("61 3 * * *", "UTC"),
            Err(TimingError::Cron(_))
        ));
        assert!(matches!(
            Timing::parse("0 0 31 2 *", "UTC"),
            Err(TimingError::Cron(_))
        ));
        assert!(matches!(
            Timing::parse("0 3 * * *", "Mars/Olympus"),
            Err(TimingError::Zone(_))
        ));
    }

    /// Proxmox's rule (each option keeps the newest backup of each of its next N periods
    /// not already covered) with the periods of the schedule's zone.
    #[test]
    fn retention_counts_days_weeks_and_months_in_the_zone() {
        let t = Timing::parse("0 3 * * *", "America/New_York").unwrap();
        // Daily at 03:00 New York time for 70 days from Monday 2027-01-04.
        let mut at = ms("2027-01-04T00:00:00Z");
        let mut taken = Vec::new();
        for _ in 0..70 {
            at = t.next_after(at).unwrap();
            taken.push(at);
        }
        let r = Retention {
            last: 0,
            daily: 3,
            weekly: 2,
            monthly: 1,
        };
        let remove = r.remove(&taken, &t);
        let kept: Vec<String> = taken
            .iter()
            .zip(&remove)
            .filter(|(_, r)| !**r)
            .map(|(ms, _)| local(&t, *ms))
            .collect();
        // The last backup is Sunday 2027-03-14 (New York went to summer time that day):
        // three days; then the newest of the two ISO weeks before (their Sundays); then the
        // newest of the month before those (February and March are covered).
        assert_eq!(
            kept,
            [
                "2027-01-31 03:00 EST",
                "2027-02-28 03:00 EST",
                "2027-03-07 03:00 EST",
                "2027-03-12 03:00 EST",
                "2027-03-13 03:00 EST",
                "2027-03-14 03:00 EDT",
            ]
        );
        assert_eq!(r.total(), 6);
        // 20:00 New York on a Sunday is Monday in UTC: the weeks are the zone's.
        let late = Timing::parse("0 20 * * *", "America/New_York").unwrap();
        let sunday = ms("2027-02-07T01:00:00Z"); // Saturday 20:00 EST
        let times = [sunday, sunday + 86_400_000]; // and Sunday 20:00 (Monday in UTC)
        let weekly = Retention {
            weekly: 1,
            ..Retention::default()
        };
        assert_eq!(weekly.remove(&times, &late), [true, false]);
    }
}
