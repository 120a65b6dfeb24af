//! Backup retention as Proxmox VE prunes (`prune-backups`, `pvesm prune-backups`).
//!
//! The options are processed in the order `keep-last`, `keep-hourly`, `keep-daily`,
//! `keep-weekly`, `keep-monthly`, `keep-yearly`. Each keeps, newest first, the latest backup
//! of each of the next N periods that have a backup (periods without one do not count) and
//! that no earlier option already covers: an option only reaches backups older than what
//! the options before it kept. Weeks are ISO weeks (Monday to Sunday, the ISO week-year at
//! year ends). Protected backups are never removed and count for no option. No option, or
//! `keep-all=1`, keeps everything. Periods are taken in the given UTC offset (Proxmox uses
//! the node's local time).

use std::fmt;
use std::str::FromStr;

use time::{OffsetDateTime, UtcOffset};

/// How many backups to keep of each kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneOptions {
    pub keep_all: bool,
    pub keep_last: Option<u64>,
    pub keep_hourly: Option<u64>,
    pub keep_daily: Option<u64>,
    pub keep_weekly: Option<u64>,
    pub keep_monthly: Option<u64>,
    pub keep_yearly: Option<u64>,
}

/// A `prune-backups` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid prune-backups '{value}': {reason}")]
pub struct PruneParseError {
    pub value: String,
    pub reason: String,
}

const KEYS: [&str; 6] = [
    "keep-last",
    "keep-hourly",
    "keep-daily",
    "keep-weekly",
    "keep-monthly",
    "keep-yearly",
];

impl PruneOptions {
    fn counts(&self) -> [Option<u64>; 6] {
        [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ]
    }

    fn count_mut(&mut self, key: &str) -> Option<&mut Option<u64>> {
        Some(match key {
            "keep-last" => &mut self.keep_last,
            "keep-hourly" => &mut self.keep_hourly,
            "keep-daily" => &mut self.keep_daily,
            "keep-weekly" => &mut self.keep_weekly,
            "keep-monthly" => &mut self.keep_monthly,
            "keep-yearly" => &mut self.keep_yearly,
            _ => return None,
        })
    }

    /// Whether everything is kept (`keep-all`, or no positive count).
    pub fn keeps_all(&self) -> bool {
        self.keep_all || self.counts().iter().all(|c| c.unwrap_or(0) == 0)
    }
}

impl FromStr for PruneOptions {
    type Err = PruneParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| PruneParseError {
            value: value.to_string(),
            reason,
        };
        let mut out = PruneOptions::default();
        let mut seen = std::collections::BTreeSet::new();
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, val) = item
                .split_once('=')
                .ok_or_else(|| fail(format!("'{item}' is not KEY=VALUE")))?;
            if !seen.insert(key.to_string()) {
                return Err(fail(format!("'{key}' is given twice")));
            }
            if key == "keep-all" {
                out.keep_all = match val {
                    "1" => true,
                    "0" => false,
                    _ => return Err(fail(format!("keep-all must be 0 or 1, not '{val}'"))),
                };
                continue;
            }
            let n: u64 = val
                .parse()
                .map_err(|_| fail(format!("{key} must be a whole number, not '{val}'")))?;
            match out.count_mut(key) {
                Some(slot) => *slot = Some(n),
                None => return Err(fail(format!("unknown option '{key}'"))),
            }
        }
        if out.keep_all && out.counts().iter().any(Option::is_some) {
            return Err(fail("keep-all conflicts with the other options".into()));
        }
        Ok(out)
    }
}

impl fmt::Display for PruneOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.keep_all {
            parts.push("keep-all=1".to_string());
        }
        for (key, count) in KEYS.iter().zip(self.counts()) {
            if let Some(n) = count {
                parts.push(format!("{key}={n}"));
            }
        }
        f.write_str(&parts.join(","))
    }
}

/// What happens to a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Keep,
    Remove,
    /// Protected: never removed by pruning.
    Protected,
}

impl Mark {
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Keep => "keep",
            Mark::Remove => "remove",
            Mark::Protected => "protected",
        }
    }
}

/// One backup of a group (one VM's backups on one storage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backup {
    /// Creation time, Unix seconds.
    pub ctime: i64,
    pub protected: bool,
}

/// The period a backup falls in for option `index` of [`KEYS`], its time taken at `offset`.
fn period(index: usize, ctime: i64, offset: UtcOffset) -> (i64, i64, i64, i64) {
    let Ok(t) = OffsetDateTime::from_unix_timestamp(ctime) else {
        // Outside time's range: each such backup is a period of its own.
        return (i64::MIN, ctime, 0, 0);
    };
    let t = t.to_offset(offset);
    let (y, m, d, h) = (
        i64::from(t.year()),
        i64::from(u8::from(t.month())),
        i64::from(t.day()),
        i64::from(t.hour()),
    );
    match index {
        0 => (0, ctime, 0, 0),
        1 => (y, m, d, h),
        2 => (y, m, d, -1),
        3 => {
            let (iso_year, week, _) = t.to_iso_week_date();
            (i64::from(iso_year), i64::from(week), -1, -1)
        }
        4 => (y, m, -1, -1),
        _ => (y, -1, -1, -1),
    }
}

/// Marks each of `backups` (in any order; the marks come back in the same order).
pub fn mark(backups: &[Backup], opts: &PruneOptions, offset: UtcOffset) -> Vec<Mark> {
    mark_in(backups, opts, |_| offset)
}

/// [`mark`] with the periods taken in a zone whose offset changes (summer time): `offset_at`
/// gives the zone's offset at a Unix time.
pub fn mark_in(
    backups: &[Backup],
    opts: &PruneOptions,
    offset_at: impl Fn(i64) -> UtcOffset,
) -> Vec<Mark> {
    let mut marks: Vec<Option<Mark>> = backups
        .iter()
        .map(|b| b.protected.then_some(Mark::Protected))
        .collect();
    if opts.keeps_all() {
        return marks.into_iter().map(|m| m.unwrap_or(Mark::Keep)).collect();
    }
    let mut order: Vec<usize> = (0..backups.len()).collect();
    order.sort_by(|&a, &b| backups[b].ctime.cmp(&backups[a].ctime));
    for (index, count) in opts.counts().into_iter().enumerate() {
        let keep = match count {
            Some(n) if n > 0 => n,
            _ => continue,
        };
        let id = |i: usize| period(index, backups[i].ctime, offset_at(backups[i].ctime));
        // Periods an earlier option already covers are left to it.
        let covered: std::collections::HashSet<_> = order
            .iter()
            .filter(|&&i| marks[i] == Some(Mark::Keep))
            .map(|&i| id(i))
            .collect();
        let mut taken = std::collections::HashSet::new();
        for &i in &order {
            if marks[i].is_some() || covered.contains(&id(i)) {
                continue;
            }
            if taken.contains(&id(i)) {
                marks[i] = Some(Mark::Remove);
            } else {
                if taken.len() as u64 >= keep {
                    break;
                }
                taken.insert(id(i));
                marks[i] = Some(Mark::Keep);
            }
        }
    }
    marks
        .into_iter()
        .map(|m| m.unwrap_or(Mark::Remove))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    const DAY: i64 = 86_400;

    fn kept(backups: &[Backup], opts: &str) -> Vec<i64> {
        let opts: PruneOptions = opts.parse().unwrap();
        let mut out: Vec<i64> = mark(backups, &opts, UtcOffset::UTC)
            .into_iter()
            .zip(backups)
            .filter(|(m, _)| *m != Mark::Remove)
            .map(|(_, b)| b.ctime)
            .collect();
        out.sort_unstable_by(|a, b| b.cmp(a));
        out
    }

    fn at(ctime: i64) -> Backup {
        Backup {
            ctime,
            protected: false,
        }
    }

    #[test]
    fn options_parse_and_print() {
        let o: PruneOptions = "keep-last=3,keep-daily=13,keep-yearly=9".parse().unwrap();
        assert_eq!(o.keep_last, Some(3));
        assert_eq!(o.keep_daily, Some(13));
        assert_eq!(o.to_string(), "keep-last=3,keep-daily=13,keep-yearly=9");
        assert!("keep-all=1".parse::<PruneOptions>().unwrap().keeps_all());
        assert!("".parse::<PruneOptions>().unwrap().keeps_all());
        for bad in [
            "keep-last",
            "keep-last=x",
            "keep-last=-1",
            "keep-lasts=1",
            "keep-last=1,keep-last=2",
            "keep-all=1,keep-last=2",
            "keep-all=yes",
        ] {
            assert!(bad.parse::<PruneOptions>().is_err(), "{bad}");
        }
    }

    /// The rule as the documentation states it, on backups at 1:00, 2:00 and 12:00 every
    /// day: `keep-hourly=4` keeps today's three and yesterday's 12:00; with `keep-daily=3`
    /// added, the three days before those too (days already covered are not counted again),
    /// one backup each, the day's latest.
    #[test]
    fn the_documented_hourly_and_daily_example() {
        let day0 = datetime!(2026-11-20 0:00 UTC).unix_timestamp();
        let backups: Vec<Backup> = (0..10)
            .flat_map(|d| [1, 2, 12].map(move |h| at(day0 + d * DAY + h * 3600)))
            .collect();
        let today = day0 + 9 * DAY;
        let hourly = vec![
            today + 12 * 3600,
            today + 2 * 3600,
            today + 3600,
            today - DAY + 12 * 3600,
        ];
        assert_eq!(kept(&backups, "keep-hourly=4"), hourly);
        let mut both = hourly.clone();
        both.extend((2..=4).map(|d| today - d * DAY + 12 * 3600));
        assert_eq!(kept(&backups, "keep-hourly=4,keep-daily=3"), both);
    }

    /// Proxmox VE's documentation (vzdump, "Retention Settings Example"): daily backups kept
    /// for ten years with `keep-last=3,keep-daily=13,keep-weekly=8,keep-monthly=11,
    /// keep-yearly=9` — "at least two weeks" of daily backups, "at least two full months" of
    /// weekly ones, "at least a year" of monthly ones and, the current year being covered by
    /// the other options, "at least 10 years" in all.
    #[test]
    fn the_documented_ten_year_example() {
        let first = datetime!(2015-01-01 12:00 UTC).unix_timestamp();
        let last = datetime!(2026-12-06 12:00 UTC).unix_timestamp();
        let backups: Vec<Backup> = (0..=(last - first) / DAY)
            .map(|d| at(first + d * DAY))
            .collect();
        let opts = "keep-last=3,keep-daily=13,keep-weekly=8,keep-monthly=11,keep-yearly=9";
        let k = kept(&backups, opts);
        assert_eq!(k.len(), 3 + 13 + 8 + 11 + 9);
        // The newest 16 days, every one.
        assert_eq!(
            k[..16],
            (0..16).map(|d| last - d * DAY).collect::<Vec<_>>()[..]
        );
        // Then one a week for 8 weeks: each the Sunday (the week's latest) of an older week.
        for w in &k[16..24] {
            let t = OffsetDateTime::from_unix_timestamp(*w).unwrap();
            assert_eq!(t.weekday(), time::Weekday::Sunday, "{t}");
        }
        assert!(last - k[23] >= 8 * 7 * DAY);
        // Then the last day of 11 older months, then 9 year ends.
        for m in &k[24..35] {
            let t = OffsetDateTime::from_unix_timestamp(*m).unwrap();
            let next = OffsetDateTime::from_unix_timestamp(*m + DAY).unwrap();
            assert_ne!(t.month(), next.month(), "{t} is not a month's last day");
        }
        assert!(last - k[34] >= 365 * DAY);
        for y in &k[35..] {
            let t = OffsetDateTime::from_unix_timestamp(*y).unwrap();
            assert_eq!((u8::from(t.month()), t.day()), (12, 31), "{t}");
        }
        let years: std::collections::BTreeSet<i32> = k
            .iter()
            .map(|t| OffsetDateTime::from_unix_timestamp(*t).unwrap().year())
            .collect();
        assert!(years.len() >= 10, "{years:?}");
    }

    #[test]
    fn iso_weeks_cross_year_ends() {
        // Thu 2026-12-31 and Fri 2027-01-01 are in ISO week 53 of 2026; Mon 2027-01-04
        // starts week 1 of 2027.
        let b = [
            at(datetime!(2026-12-31 10:00 UTC).unix_timestamp()),
            at(datetime!(2027-01-01 10:00 UTC).unix_timestamp()),
            at(datetime!(2027-01-04 10:00 UTC).unix_timestamp()),
        ];
        assert_eq!(kept(&b, "keep-weekly=2"), vec![b[2].ctime, b[1].ctime]);
    }

    #[test]
    fn protected_backups_stay_and_count_for_nothing() {
        let b = [
            at(3 * DAY),
            Backup {
                ctime: 2 * DAY,
                protected: true,
            },
            at(DAY),
        ];
        let marks = mark(&b, &"keep-last=1".parse().unwrap(), UtcOffset::UTC);
        assert_eq!(marks, vec![Mark::Keep, Mark::Protected, Mark::Remove]);
    }

    proptest! {
        #[test]
        fn pruning_what_was_kept_keeps_it_all(
            times in proptest::collection::vec(0i64..(3 * 365 * DAY), 0..120),
            counts in proptest::collection::vec(proptest::option::of(0u64..6), 6),
        ) {
            let opts = PruneOptions {
                keep_all: false,
                keep_last: counts[0],
                keep_hourly: counts[1],
                keep_daily: counts[2],
                keep_weekly: counts[3],
                keep_monthly: counts[4],
                keep_yearly: counts[5],
            };
            let backups: Vec<Backup> = times.iter().map(|&t| at(t)).collect();
            let marks = mark(&backups, &opts, UtcOffset::UTC);
            let last = opts.keep_last.unwrap_or(0) as usize;
            let mut newest = times.clone();
            newest.sort_unstable_by(|a, b| b.cmp(a));
            // keep-last keeps the newest N (whatever else is set).
            for t in newest.iter().take(last) {
                prop_assert!(backups.iter().zip(&marks).any(|(b, m)| b.ctime == *t && *m == Mark::Keep));
            }
            let kept: Vec<Backup> = backups.iter().zip(&marks).filter(|(_, m)| **m == Mark::Keep).map(|(b, _)| *b).collect();
            let again = mark(&kept, &opts, UtcOffset::UTC);
            prop_assert!(again.iter().all(|m| *m == Mark::Keep));
        }

        #[test]
        fn any_option_text_parses_or_fails_cleanly(text in "[a-z=,0-9-]{0,60}") {
            if let Ok(o) = text.parse::<PruneOptions>() {
                prop_assert_eq!(o.to_string().parse::<PruneOptions>().unwrap(), o);
            }
        }
    }
}
