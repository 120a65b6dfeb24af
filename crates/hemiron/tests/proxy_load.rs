//! The deploy proxy under load: rollbacks and promotions while 500 req/s of GETs and POSTs
//! flow, and the canary analysis at 100 req/s (a failing canary, a slow canary, and A/A runs
//! that must never fail).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::{runtime, upstream, Proxy, Upstream};
use serde_json::{json, Value};

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hpl")
        .tempdir_in("/tmp")
        .unwrap()
}

#[derive(Default)]
struct Tally {
    gets: AtomicU64,
    posts: AtomicU64,
    ok: AtomicU64,
    non_2xx: AtomicU64,
    errors: AtomicU64,
}

/// Sends `rate` requests per second for `duration` (open loop: a request every 1/rate s,
/// whatever the answers), GET and POST alternating; `host` picks the app.
async fn load(
    client: reqwest::Client,
    url: String,
    host: Option<String>,
    rate: u64,
    duration: Duration,
    tally: Arc<Tally>,
) {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + duration;
    let mut tasks = Vec::new();
    let mut n = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        n += 1;
        let (client, url, host, tally) = (client.clone(), url.clone(), host.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let post = n % 2 == 0;
            let mut req = if post {
                tally.posts.fetch_add(1, Ordering::SeqCst);
                client.post(&url).body(format!("request {n}"))
            } else {
                tally.gets.fetch_add(1, Ordering::SeqCst);
                client.get(&url)
            };
            if let Some(h) = &host {
                req = req.header("host", h);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    let _ = r.bytes().await;
                    tally.ok.fetch_add(1, Ordering::SeqCst);
                }
                Ok(r) => {
                    eprintln!("non-2xx: {}", r.status());
                    tally.non_2xx.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    eprintln!("request error: {e}");
                    tally.errors.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn two_versions(a: &Upstream, b: &Upstream, extra: &str) -> String {
    format!(
        "[proxy]\nworkers = 2\n[[listeners]]\naddress = \"{{listen}}\"\n[apps.shop]\nstable = \"v1\"\n{extra}\n[apps.shop.versions.v1]\nendpoints = [\"{}\"]\n[apps.shop.versions.v2]\nendpoints = [\"{}\"]\n",
        a.address(),
        b.address()
    )
}

#[test]
fn rollbacks_and_promotions_under_load_lose_nothing() {
    let rt = runtime();
    let (a, b) = (upstream(&rt, "v1"), upstream(&rt, "v2"));
    let dir = tempdir();
    let proxy = Proxy::start(
        dir.path(),
        &two_versions(&a, &b, "[apps.shop.analysis]\nenabled = false\n"),
    );
    let tally = Arc::new(Tally::default());
    let admin = format!("http://{}/api/v1/apps/shop", proxy.admin);
    let token = proxy.token.clone();
    let switches = rt.block_on(async {
        let client = reqwest::Client::new();
        let load = tokio::spawn(load(
            client.clone(),
            proxy.url("/"),
            None,
            500,
            Duration::from_secs(60),
            tally.clone(),
        ));
        // Ten rollbacks or promotions per second, in a cycle that is always valid.
        let ops: [(&str, Option<Value>); 5] = [
            (
                "rollout",
                Some(json!({"version": "v2", "blue_green": true})),
            ),
            ("rollback", None),
            ("rollout", Some(json!({"version": "v2", "canary": "50"}))),
            ("promote", None),
            ("rollback", None),
        ];
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut done = 0u32;
        let end = Instant::now() + Duration::from_secs(59);
        while Instant::now() < end {
            tick.tick().await;
            let (op, body) = &ops[done as usize % ops.len()];
            let mut req = client
                .post(format!("{admin}/{op}"))
                .bearer_auth(&token)
                .json(body.as_ref().unwrap_or(&json!({})));
            req = req.timeout(Duration::from_secs(5));
            let r = req.send().await.unwrap();
            assert!(r.status().is_success(), "{op}: {}", r.text().await.unwrap());
            done += 1;
        }
        load.await.unwrap();
        done
    });
    let t = &tally;
    let (sent_posts, sent) = (
        t.posts.load(Ordering::SeqCst),
        t.posts.load(Ordering::SeqCst) + t.gets.load(Ordering::SeqCst),
    );
    assert!(sent >= 29_000, "the load ran ({sent} requests)");
    assert!(switches >= 500, "{switches} switches");
    assert_eq!(t.errors.load(Ordering::SeqCst), 0, "request errors");
    assert_eq!(t.non_2xx.load(Ordering::SeqCst), 0, "non-2xx answers");
    assert_eq!(t.ok.load(Ordering::SeqCst), sent);
    assert_eq!(
        a.posts() + b.posts(),
        sent_posts,
        "every POST executed exactly once"
    );
    assert!(
        a.requests() > 1000 && b.requests() > 1000,
        "both versions served"
    );

    // The switch latency (admin call arrival to new table stored) is a figure: bench/proxy
    // measures it on the release build. Here: it was recorded for every switch.
    let metrics = proxy.metrics();
    let count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hemiron_proxy_switch_duration_seconds_count "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        count >= u64::from(switches),
        "{count} recorded, {switches} switches"
    );
    let p99 = hemiron_proxy::metrics::histogram_quantile(
        &metrics,
        "hemiron_proxy_switch_duration_seconds",
        0.99,
    )
    .unwrap();
    eprintln!(
        "switch latency p99 (debug build, histogram bucket bound): {:.1} µs",
        p99 * 1e6
    );
}

/// Runs 100 req/s against a canary of v2 at 10% until the proxy rolls it back; returns how
/// long that took and the app's status.
fn rolled_back_within(
    b_setup: impl FnOnce(&Upstream),
    limit: Duration,
) -> (Duration, Value, String, String) {
    let rt = runtime();
    let (a, b) = (upstream(&rt, "v1"), upstream(&rt, "v2"));
    b_setup(&b);
    let dir = tempdir();
    let proxy = Proxy::start(dir.path(), &two_versions(&a, &b, ""));
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    proxy.admin_ok(
        "POST",
        "/apps/shop/rollout",
        Some(json!({"version": "v2", "canary": "10"})),
    );
    let load = rt.spawn(load(
        reqwest::Client::new(),
        proxy.url("/"),
        None,
        100,
        limit + Duration::from_secs(5),
        tally,
    ));
    let mut elapsed = None;
    while started.elapsed() < limit + Duration::from_secs(5) {
        let s = proxy.admin_ok("GET", "/apps/shop", None);
        if s["rollout"].is_null() {
            elapsed = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    load.abort();
    let status = proxy.admin_ok("GET", "/apps/shop", None);
    let elapsed = elapsed.unwrap_or_else(|| panic!("not rolled back: {status}"));
    // What an operator sees: `hemiron rollout status`.
    let cli = std::process::Command::new(common::hemiron())
        .args(["rollout", "status", "shop", "--token", &proxy.token])
        .args(["--admin", &format!("http://{}", proxy.admin)])
        .output()
        .unwrap();
    assert!(cli.status.success(), "{cli:?}");
    let cli = String::from_utf8_lossy(&cli.stdout).to_string();
    (elapsed, status, proxy.metrics(), cli)
}

#[test]
fn a_canary_with_five_percent_errors_is_rolled_back_within_15_s() {
    let (elapsed, status, metrics, cli) = rolled_back_within(
        |b| b.behaviour.fail_every.store(20, Ordering::SeqCst),
        Duration::from_secs(15),
    );
    eprintln!("rolled back after {elapsed:?}");
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
    let outcome = status["last_outcome"].as_str().unwrap();
    assert!(outcome.contains("analysis failed: errors"), "{outcome}");
    assert_eq!(status["stable"], "v1");
    // The decision is logged with its numbers and thresholds, and exported.
    let events = status["events"].as_array().unwrap();
    let fail = events
        .iter()
        .find(|e| e["what"].as_str().unwrap().contains("interval: FAIL"))
        .unwrap();
    let text = fail["what"].as_str().unwrap();
    assert!(
        text.contains("p(errors)") && text.contains("alpha 0.01"),
        "{text}"
    );
    // Without a declared baseline the canary is compared with stable, and it says so.
    assert!(
        text.contains("stable v1 (no separate baseline declared)"),
        "{text}"
    );
    // The CLI's status shows the verdict with its numbers and thresholds, and the live
    // counts per version: the canary's 500s among them.
    assert!(
        cli.contains("last interval: fail: canary ")
            && cli.contains("p(errors)")
            && cli.contains("(alpha 0.01, +1 points, +10%)"),
        "{cli}"
    );
    let v2 = cli
        .lines()
        .find(|l| l.split_whitespace().next() == Some("v2"))
        .unwrap_or_else(|| panic!("no v2 row: {cli}"));
    let cols: Vec<&str> = v2.split_whitespace().collect();
    assert!(cols.len() >= 9, "{v2}");
    assert!(cols[6].parse::<u64>().unwrap() > 0, "v2's 5XX: {cli}");
    assert!(cols[4].parse::<u64>().unwrap() > 0, "v2's 2XX: {cli}");
    assert!(metrics.contains("hemiron_proxy_rollbacks_total{app=\"shop\",reason=\"analysis\"} 1"));
    assert!(metrics.contains("hemiron_proxy_analysis_verdict{app=\"shop\"} -1"));
    assert!(metrics.contains("hemiron_proxy_analysis_alpha{app=\"shop\",check=\"errors\"} 0.01"));
    promtool_accepts(&metrics);
}

/// `promtool check metrics` (Debian's prometheus package) finds nothing wrong.
fn promtool_accepts(metrics: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (scripts/deps --test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_canary_50_ms_slower_is_rolled_back_within_30_s() {
    let (elapsed, status, _, _) = rolled_back_within(
        |b| b.behaviour.delay_ms.store(50, Ordering::SeqCst),
        Duration::from_secs(30),
    );
    eprintln!("rolled back after {elapsed:?}");
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    let outcome = status["last_outcome"].as_str().unwrap();
    assert!(outcome.contains("analysis failed: latency"), "{outcome}");
}

#[test]
fn a_canary_with_no_healthy_endpoint_is_rolled_back_even_while_paused() {
    let rt = runtime();
    let (a, b) = (upstream(&rt, "v1"), upstream(&rt, "v2"));
    let dir = tempdir();
    let mut proxy = Proxy::start(
        dir.path(),
        &two_versions(
            &a,
            &b,
            "[apps.shop.health]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\nunhealthy_after = 2\nhealthy_after = 2\n",
        ),
    );
    proxy.admin_ok(
        "POST",
        "/apps/shop/rollout",
        Some(json!({"version": "v2", "canary": "10"})),
    );
    proxy.admin_ok("POST", "/apps/shop/pause", None);
    // Its only endpoint fails its checks: it gets no requests at all, so its numbers alone
    // would hold the rollout forever.
    b.behaviour.unhealthy.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let status = common::wait_for("the rollback", Duration::from_secs(25), || {
        let s = proxy.admin_ok("GET", "/apps/shop", None);
        s["rollout"].is_null().then_some(s)
    });
    eprintln!("rolled back after {:?}", started.elapsed());
    let outcome = status["last_outcome"].as_str().unwrap();
    assert!(
        outcome.contains("no endpoint of the canary is healthy"),
        "{outcome}"
    );
    assert_eq!(status["stable"], "v1");
    assert!(proxy
        .metrics()
        .contains("hemiron_proxy_rollbacks_total{app=\"shop\",reason=\"analysis\"} 1"));
    assert_eq!(status["last_interval"]["verdict"], "fail", "{status}");
    // A restart still shows the decision and the interval it rested on.
    proxy.stop();
    proxy.launch();
    let again = proxy.admin_ok("GET", "/apps/shop", None);
    for key in ["last_interval", "last_outcome", "events", "stable"] {
        assert_eq!(again[key], status[key], "{key}");
    }
}

#[test]
fn twenty_a_a_runs_of_two_minutes_never_fail() {
    const RUNS: usize = 20;
    let rt = runtime();
    // The same build three times: the stable instance set, the baseline (a separate
    // instance set of the stable build, given the canary's weight) and the "canary", as an
    // A/A run is defined. Half the runs declare the baseline, half compare with stable (the
    // analysis without a baseline); all twenty share the proxy and the upstreams, and their
    // loads start together and tick together, as apps deployed at once would.
    let (a, base, b) = (
        upstream(&rt, "build-1"),
        upstream(&rt, "build-1-baseline"),
        upstream(&rt, "build-1-canary"),
    );
    let mut text = "[proxy]\nworkers = 2\n[[listeners]]\naddress = \"{listen}\"\n".to_string();
    for i in 0..RUNS {
        let baseline = if i % 2 == 0 {
            format!(
                "baseline = \"base\"\n[apps.app{i}.versions.base]\nendpoints = [\"{}\"]\n",
                base.address()
            )
        } else {
            String::new()
        };
        text.push_str(&format!(
            "[apps.app{i}]\nhosts = [\"app{i}.test\"]\nstable = \"v1\"\n{baseline}[apps.app{i}.versions.v1]\nendpoints = [\"{}\"]\n[apps.app{i}.versions.v2]\nendpoints = [\"{}\"]\n",
            a.address(),
            b.address()
        ));
    }
    let dir = tempdir();
    let proxy = Proxy::start(dir.path(), &text);
    for i in 0..RUNS {
        proxy.admin_ok(
            "POST",
            &format!("/apps/app{i}/rollout"),
            Some(json!({"version": "v2", "canary": "10"})),
        );
    }
    let tally = Arc::new(Tally::default());
    rt.block_on(async {
        let client = reqwest::Client::new();
        let runs: Vec<_> = (0..RUNS)
            .map(|i| {
                tokio::spawn(load(
                    client.clone(),
                    proxy.url("/"),
                    Some(format!("app{i}.test")),
                    100,
                    Duration::from_secs(120),
                    tally.clone(),
                ))
            })
            .collect();
        for r in runs {
            r.await.unwrap();
        }
    });
    assert_eq!(tally.errors.load(Ordering::SeqCst), 0);
    assert_eq!(tally.non_2xx.load(Ordering::SeqCst), 0);
    let metrics = proxy.metrics();
    for i in 0..RUNS {
        let s = proxy.admin_ok("GET", &format!("/apps/app{i}"), None);
        assert!(s["rollout"].is_object(), "A/A run {i} was rolled back: {s}");
        let against = if i % 2 == 0 { "base" } else { "v1" };
        assert_eq!(s["rollout"]["baseline"]["version"], against, "{s}");
        let fails =
            format!("hemiron_proxy_analysis_intervals_total{{app=\"app{i}\",verdict=\"fail\"}}");
        assert!(!metrics.contains(&fails), "A/A run {i} failed an interval");
        let passes =
            format!("hemiron_proxy_analysis_intervals_total{{app=\"app{i}\",verdict=\"pass\"}} ");
        let n: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&passes))
            .unwrap_or("0")
            .trim()
            .parse()
            .unwrap();
        assert!(n >= 10, "A/A run {i}: only {n} intervals judged with data");
    }
}
