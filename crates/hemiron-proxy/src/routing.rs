//! Which version serves a request.
//!
//! Precedence, as the research recommends: an explicit override (header or cookie, for QA) >
//! the session's sticky version > the weights. Sessions and weights only ever reach versions
//! that are *serving* (in the app's rollout) and have a healthy endpoint; if the weights'
//! choices have none healthy, any other healthy serving version takes the request. An
//! override may also name an *idle* version (declared, not in the rollout — e.g. to try a
//! release before its rollout starts), as long as it is healthy.
//!
//! Weights are basis points (10,000 = 100%). A new session draws a *ticket* (a counter) and
//! the ticket a *bucket* of 0..10,000 by a permuted-block design: each run of 100 tickets
//! takes each whole-percent band once, in an order shuffled per run by a keyed permutation,
//! and the position inside the band steps through all 100 over 100 runs. So the shares are
//! exact over every 10,000 new sessions, within one session per version over any aligned
//! 100, and *which* requests go to a version is well mixed in time. The mixing matters to the
//! canary analysis: its Mann–Whitney test assumes requests reach versions independently of
//! when they come, and a fixed stride (an earlier design) sent a 10% canary its requests in
//! clumps every fifth ticket, so moments of host noise fell on one version in bursts and an
//! A/A run could fail. Each app's tickets start at a point of its own (from its name), so
//! apps started together with the same traffic do not send their canary requests at the
//! same moments: in lockstep, every app's canary request of a moment went to one upstream in
//! one burst, and where a request fell in that burst's queue, not the version, set its
//! latency (measured: per-interval medians of the same build 15% apart across 20 apps).

/// Basis points in 100%.
pub const TOTAL: u32 = 10_000;
/// Tickets per block; each block visits every band of `TOTAL / BLOCK` basis points once.
const BLOCK: u64 = 100;
/// Steps the position inside a band from block to block (coprime with `BLOCK`).
const FINE_STRIDE: u64 = 37;

/// The bucket (0..`TOTAL`) of a ticket; see the module note.
fn bucket(ticket: u64) -> u64 {
    let block = ticket / BLOCK;
    let band = shuffle(ticket % BLOCK, block);
    let fine = (block % BLOCK) * FINE_STRIDE % BLOCK;
    band * (u64::from(TOTAL) / BLOCK) + fine
}

/// A permutation of 0..`BLOCK`, a different one per `key`: a 4-round Feistel network on
/// 8 bits, cycle-walked back into range (a bijection of 0..256 walked from inside 0..100
/// lands inside it again, and distinct starts land on distinct ends).
fn shuffle(x: u64, key: u64) -> u64 {
    let mut x = x;
    loop {
        let (mut l, mut r) = (x >> 4, x & 0xf);
        for round in 0..4u64 {
            let f = mix(key ^ (round << 56) ^ r) & 0xf;
            (l, r) = (r, l ^ f);
        }
        x = (l << 4) | r;
        if x < BLOCK {
            return x;
        }
    }
}

/// Where an app's ticket counter starts: a point of its own in the block sequence (a hash of
/// its name), below 2^40 so the counter never wraps.
pub fn first_ticket(app: &str) -> u64 {
    // FNV-1a, then mixed: stable across builds and processes (unlike std's hasher).
    let fnv = app.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    mix(fnv) >> 24
}

/// SplitMix64's finalizer: every input bit reaches every output bit (also the analysis
/// window's sampling without an RNG).
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether a version takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Serving,
    /// Not in the rollout (never started, promoted past, or rolled back): no weight, and
    /// sessions pinned to it move; only an explicit override reaches it.
    Idle,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub id: String,
    /// Share of new sessions, in basis points.
    pub weight: u32,
    pub state: State,
    /// At least one endpoint passes its health checks.
    pub healthy: bool,
}

/// Why a version was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Override,
    Sticky,
    Weighted,
    /// The weights' choice had no healthy endpoint.
    Fallback,
}

/// A routing decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    pub version: &'a Version,
    pub reason: Reason,
}

impl Decision<'_> {
    /// Whether the response should (re)set the session's sticky cookie: the session was not
    /// on this version yet.
    pub fn pin(&self) -> bool {
        matches!(self.reason, Reason::Weighted | Reason::Fallback)
    }
}

/// A table that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("no versions")]
    Empty,
    #[error("version {0:?} appears twice")]
    Duplicate(String),
    #[error("the weights of serving versions add up to {0}, not 10000 basis points")]
    Weights(u64),
    #[error("idle version {0:?} has a weight")]
    IdleWeight(String),
}

/// An immutable routing table (swapped whole when anything changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    versions: Vec<Version>,
    /// Incremented by every change, for logs and metrics.
    pub generation: u64,
}

/// What the request says about its version.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ask<'a> {
    /// `x-hemiron-version` header or override cookie.
    pub override_version: Option<&'a str>,
    /// The version a verified sticky cookie names.
    pub sticky: Option<&'a str>,
}

impl Table {
    pub fn new(versions: Vec<Version>, generation: u64) -> Result<Table, TableError> {
        if versions.is_empty() {
            return Err(TableError::Empty);
        }
        for (i, v) in versions.iter().enumerate() {
            if versions[..i].iter().any(|o| o.id == v.id) {
                return Err(TableError::Duplicate(v.id.clone()));
            }
            if v.state == State::Idle && v.weight > 0 {
                return Err(TableError::IdleWeight(v.id.clone()));
            }
        }
        let sum: u64 = versions.iter().map(|v| u64::from(v.weight)).sum();
        if sum != u64::from(TOTAL) {
            return Err(TableError::Weights(sum));
        }
        Ok(Table {
            versions,
            generation,
        })
    }

    pub fn versions(&self) -> &[Version] {
        &self.versions
    }

    fn usable(&self, id: &str) -> Option<&Version> {
        self.versions
            .iter()
            .find(|v| v.id == id && v.state == State::Serving && v.healthy)
    }

    fn overridable(&self, id: &str) -> Option<&Version> {
        self.versions.iter().find(|v| v.id == id && v.healthy)
    }

    /// The version for a request; `ticket` numbers new sessions (a shared counter).
    pub fn choose(&self, ask: Ask<'_>, ticket: u64) -> Option<Decision<'_>> {
        if let Some(v) = ask.override_version.and_then(|id| self.overridable(id)) {
            return Some(Decision {
                version: v,
                reason: Reason::Override,
            });
        }
        if let Some(v) = ask.sticky.and_then(|id| self.usable(id)) {
            return Some(Decision {
                version: v,
                reason: Reason::Sticky,
            });
        }
        // Weighted among the healthy serving versions with a weight, shares renormalized.
        let eligible = || {
            self.versions
                .iter()
                .filter(|v| v.state == State::Serving && v.healthy && v.weight > 0)
        };
        let total: u64 = eligible().map(|v| u64::from(v.weight)).sum();
        if total > 0 {
            let point = bucket(ticket) * total / u64::from(TOTAL);
            let mut acc = 0u64;
            for v in eligible() {
                acc += u64::from(v.weight);
                if point < acc {
                    return Some(Decision {
                        version: v,
                        reason: Reason::Weighted,
                    });
                }
            }
        }
        // Nothing weighted is healthy: any healthy serving version, the heaviest first.
        self.versions
            .iter()
            .filter(|v| v.state == State::Serving && v.healthy)
            .max_by_key(|v| v.weight)
            .map(|v| Decision {
                version: v,
                reason: Reason::Fallback,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(id: &str, weight: u32) -> Version {
        Version {
            id: id.into(),
            weight,
            state: State::Serving,
            healthy: true,
        }
    }

    fn shares(t: &Table, n: u64) -> Vec<u64> {
        let mut counts = vec![0u64; t.versions().len()];
        for ticket in 0..n {
            let d = t.choose(Ask::default(), ticket).unwrap();
            let i = t
                .versions()
                .iter()
                .position(|x| x.id == d.version.id)
                .unwrap();
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn ten_thousand_new_sessions_at_ten_percent() {
        let t = Table::new(vec![v("stable", 9000), v("canary", 1000)], 1).unwrap();
        assert_eq!(shares(&t, 10_000), [9000, 1000]);
        // Any stretch of a few hundred is close too.
        for start in [5_000u64, 5_050, 123] {
            let c = (start..start + 300)
                .filter(|k| t.choose(Ask::default(), *k).unwrap().version.id == "canary")
                .count();
            assert!((28..=32).contains(&c), "{c} of 300 from {start}");
        }
    }

    #[test]
    fn buckets_are_a_permutation_per_ten_thousand() {
        for base in [0u64, 10_000, 7 * 10_000] {
            let mut seen = vec![false; TOTAL as usize];
            for t in base..base + u64::from(TOTAL) {
                let b = bucket(t) as usize;
                assert!(!seen[b], "bucket {b} twice");
                seen[b] = true;
            }
        }
    }

    /// Whether ticket k goes to a 10% canary says nothing about ticket k + lag: the pairs
    /// both on the canary come at the independent rate (1%), at every short lag.
    #[test]
    fn a_canary_gets_its_requests_unclumped() {
        let t = Table::new(vec![v("stable", 9000), v("canary", 1000)], 1).unwrap();
        let on: Vec<bool> = (0..20_000u64)
            .map(|k| t.choose(Ask::default(), k).unwrap().version.id == "canary")
            .collect();
        for lag in 1..=20 {
            let both = (0..on.len() - lag)
                .filter(|&k| on[k] && on[k + lag])
                .count();
            // 200 expected; a stride-like pattern gives 0 or over 1000 at some lag.
            assert!((120..=290).contains(&both), "lag {lag}: {both}");
        }
    }

    /// Apps taking their k-th request at the same moment (started together, same traffic)
    /// send it to their canaries independently: both at once 1% of the time, not 10%.
    #[test]
    fn apps_in_lockstep_reach_their_canaries_independently() {
        let t = Table::new(vec![v("stable", 9000), v("canary", 1000)], 1).unwrap();
        let on = |app: &str| -> Vec<bool> {
            let first = first_ticket(app);
            (first..first + 10_000)
                .map(|k| t.choose(Ask::default(), k).unwrap().version.id == "canary")
                .collect()
        };
        let apps: Vec<Vec<bool>> = (0..8).map(|i| on(&format!("app{i}"))).collect();
        for (i, a) in apps.iter().enumerate() {
            // From a start inside a block, only the two part blocks at the ends can stray
            // from the exact share (by less than a block's 10 between them).
            let share = a.iter().filter(|x| **x).count();
            assert!((990..=1010).contains(&share), "app{i}: {share}");
            for b in &apps[i + 1..] {
                let both = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
                // 100 expected when independent; 1,000 in lockstep.
                assert!((60..=150).contains(&both), "app{i}: {both}");
            }
        }
        assert_ne!(first_ticket("web"), first_ticket("web2"));
        assert!(first_ticket("a") < 1 << 40);
    }

    #[test]
    fn precedence_override_then_sticky_then_weights() {
        let t = Table::new(vec![v("a", 10_000), v("b", 0)], 1).unwrap();
        let d = t
            .choose(
                Ask {
                    override_version: Some("b"),
                    sticky: Some("a"),
                },
                0,
            )
            .unwrap();
        assert_eq!((d.version.id.as_str(), d.reason), ("b", Reason::Override));
        let d = t
            .choose(
                Ask {
                    override_version: Some("zzz"),
                    sticky: Some("b"),
                },
                0,
            )
            .unwrap();
        assert_eq!((d.version.id.as_str(), d.reason), ("b", Reason::Sticky));
        assert!(!d.pin());
        let d = t.choose(Ask::default(), 0).unwrap();
        assert_eq!((d.version.id.as_str(), d.reason), ("a", Reason::Weighted));
        assert!(d.pin());
    }

    #[test]
    fn idle_and_unhealthy_versions_are_never_chosen_while_another_can_serve() {
        let mut bad = v("bad", 0);
        bad.state = State::Idle;
        let t = Table::new(vec![v("good", 10_000), bad.clone()], 2).unwrap();
        let d = t
            .choose(
                Ask {
                    override_version: None,
                    sticky: Some("bad"),
                },
                7,
            )
            .unwrap();
        assert_eq!(
            d.version.id, "good",
            "sessions pinned to a version out of the rollout move"
        );
        assert!(d.pin(), "and get a new cookie");
        let ask = Ask {
            override_version: Some("bad"),
            sticky: None,
        };
        assert_eq!(
            t.choose(ask, 7).unwrap().version.id,
            "bad",
            "an override reaches it"
        );
        bad.healthy = false;
        let t = Table::new(vec![v("good", 10_000), bad], 2).unwrap();
        assert_eq!(
            t.choose(ask, 7).unwrap().version.id,
            "good",
            "unless it is unhealthy"
        );

        let mut sick = v("canary", 1000);
        sick.healthy = false;
        let t = Table::new(vec![v("stable", 9000), sick], 3).unwrap();
        assert_eq!(shares(&t, 10_000), [10_000, 0]);
        let mut all_sick = v("stable", 10_000);
        all_sick.healthy = false;
        let mut spare = v("spare", 0);
        spare.healthy = true;
        let t = Table::new(vec![all_sick, spare], 4).unwrap();
        let d = t.choose(Ask::default(), 1).unwrap();
        assert_eq!(
            (d.version.id.as_str(), d.reason),
            ("spare", Reason::Fallback)
        );
    }

    #[test]
    fn bad_tables_are_refused() {
        assert_eq!(Table::new(vec![], 0), Err(TableError::Empty));
        assert_eq!(
            Table::new(vec![v("a", 5000)], 0),
            Err(TableError::Weights(5000))
        );
        assert_eq!(
            Table::new(vec![v("a", 5000), v("a", 5000)], 0),
            Err(TableError::Duplicate("a".into()))
        );
    }

    proptest! {
        #[test]
        fn shares_are_exact_over_ten_thousand(cut in 0u32..=10_000, cut2 in 0u32..=10_000) {
            let (lo, hi) = (cut.min(cut2), cut.max(cut2));
            let t = Table::new(vec![v("a", lo), v("b", hi - lo), v("c", TOTAL - hi)], 1).unwrap();
            let s = shares(&t, 10_000);
            prop_assert_eq!(s, vec![u64::from(lo), u64::from(hi - lo), u64::from(TOTAL - hi)]);
        }
    }
}
