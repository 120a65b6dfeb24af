//! The deploy proxy end to end: the real `hemiron proxy` binary in front of real upstream
//! servers on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::{runtime, upstream, Proxy, Upstream};
use common::wait_for;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;

fn endpoints(ups: &[&Upstream]) -> String {
    ups.iter()
        .map(|u| format!("\"{}\"", u.address()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A one-app configuration with versions `(id, upstreams)`.
fn config(versions: &[(&str, &[&Upstream])], extra: &str) -> String {
    let mut text = format!(
        "[proxy]\nworkers = 2\ndrain_timeout = \"3s\"\n\n[[listeners]]\naddress = \"{{listen}}\"\n\n[apps.shop]\nstable = \"v1\"\n{extra}\n"
    );
    for (id, ups) in versions {
        text.push_str(&format!(
            "[apps.shop.versions.{id}]\nendpoints = [{}]\n",
            endpoints(ups)
        ));
    }
    text
}

/// Upstreams `v1` and `v2` and a proxy over them (no analysis: tests drive it by hand).
fn two_versions(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
) -> (Upstream, Upstream, Proxy) {
    let (a, b) = (upstream(rt, "v1"), upstream(rt, "v2"));
    let proxy = Proxy::start(
        dir,
        &config(
            &[("v1", &[&a]), ("v2", &[&b])],
            "[apps.shop.analysis]\nenabled = false\n",
        ),
    );
    (a, b, proxy)
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hp")
        .tempdir_in("/tmp")
        .unwrap()
}

fn version_of(resp: &reqwest::blocking::Response) -> String {
    resp.headers()
        .get("x-hemiron-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The whole `Set-Cookie` header that sets cookie `name`, if the answer has one.
fn set_cookie(resp: &reqwest::blocking::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| {
            c.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('='))
        })
        .map(str::to_string)
}

/// The `name=value` pair of cookie `name` set by the answer (what a client sends back).
fn cookie_pair(resp: &reqwest::blocking::Response, name: &str) -> Option<String> {
    set_cookie(resp, name).map(|c| c.split(';').next().unwrap().to_string())
}

/// The session cookie of app `shop` set by the answer.
fn session_cookie(resp: &reqwest::blocking::Response) -> Option<String> {
    cookie_pair(resp, "hemiron-session-shop")
}

/// A GET sending `cookie`.
fn with_cookie(
    http: &reqwest::blocking::Client,
    url: impl reqwest::IntoUrl,
    cookie: &str,
) -> reqwest::blocking::Response {
    http.get(url).header("cookie", cookie).send().unwrap()
}

/// Sends `n` cookie-less GETs, 20 at a time, and counts the versions that answered.
fn count_versions(rt: &tokio::runtime::Runtime, url: &str, n: usize) -> HashMap<String, usize> {
    rt.block_on(async {
        let client = reqwest::Client::new();
        let counts = futures_util::stream::iter(0..n)
            .map(|_| {
                let client = client.clone();
                let url = url.to_string();
                async move {
                    let r = client.get(&url).send().await.unwrap();
                    assert!(r.status().is_success(), "{}", r.status());
                    r.headers()["x-hemiron-version"]
                        .to_str()
                        .unwrap()
                        .to_string()
                }
            })
            .buffer_unordered(20)
            .collect::<Vec<_>>()
            .await;
        let mut map = HashMap::new();
        for v in counts {
            *map.entry(v).or_insert(0) += 1;
        }
        map
    })
}

#[test]
fn weights_stickiness_and_overrides() {
    let rt = runtime();
    let dir = tempdir();
    let (a, b, proxy) = two_versions(&rt, dir.path());
    let url = proxy.url("/");

    // Before a rollout: everything on stable; v2 only by explicit override.
    let http = reqwest::blocking::Client::new();
    let r = http.get(&url).send().unwrap();
    assert_eq!(version_of(&r), "v1");
    assert!(r.text().unwrap().starts_with("v1 "));
    let r = http
        .get(&url)
        .header("x-hemiron-version", "v2")
        .send()
        .unwrap();
    assert_eq!(version_of(&r), "v2", "header override");

    // Canary at 10%: 10,000 cookie-less requests land within 10 ± 0.9%.
    proxy.admin_ok(
        "POST",
        "/apps/shop/rollout",
        Some(json!({"version": "v2", "canary": "10,50"})),
    );
    let before = (a.requests(), b.requests());
    let counts = count_versions(&rt, &url, 10_000);
    let share = *counts.get("v2").unwrap_or(&0) as f64 / 10_000.0 * 100.0;
    assert!(
        (9.1..=10.9).contains(&share),
        "canary share {share}% ({counts:?})"
    );
    // The upstreams agree with the header.
    assert_eq!(b.requests() - before.1, counts["v2"] as u64);
    assert_eq!(a.requests() - before.0, counts["v1"] as u64);

    // New sessions are pinned by a signed cookie; they stay while the weights move.
    let mut sessions = Vec::new();
    for _ in 0..60 {
        let r = http.get(&url).send().unwrap();
        sessions.push((
            version_of(&r),
            session_cookie(&r).expect("a session cookie"),
        ));
    }
    assert!(sessions.iter().any(|(v, _)| v == "v2"));
    proxy.admin_ok("POST", "/apps/shop/promote", None); // 50%
    for (version, cookie) in &sessions {
        for _ in 0..5 {
            let r = with_cookie(&http, &url, cookie);
            assert_eq!(&version_of(&r), version, "a session stays on its version");
            assert!(
                session_cookie(&r).is_none(),
                "a pinned session is not re-pinned"
            );
        }
    }
    // A forged cookie is ignored (the request is a new session).
    let forged = sessions[0]
        .1
        .replace(".v1.", ".v2.")
        .replace(".v2.", ".v1.");
    let forged = format!("{forged}x");
    let r = with_cookie(&http, &url, &forged);
    assert!(session_cookie(&r).is_some());
    // Override beats the session; the override cookie works too.
    let (v, cookie) = sessions.iter().find(|(v, _)| v == "v1").unwrap();
    assert_eq!(v, "v1");
    let r = http
        .get(&url)
        .header("cookie", cookie)
        .header("x-hemiron-version", "v2")
        .send()
        .unwrap();
    assert_eq!(version_of(&r), "v2");
    let r = http
        .get(&url)
        .header("cookie", format!("{cookie}; hemiron-version=v2"))
        .send()
        .unwrap();
    assert_eq!(version_of(&r), "v2");

    // Rollback: sessions pinned to the canary move to stable.
    proxy.admin_ok("POST", "/apps/shop/rollback", None);
    for (_, cookie) in sessions.iter().filter(|(v, _)| v == "v2") {
        let r = with_cookie(&http, &url, cookie);
        assert_eq!(version_of(&r), "v1");
        assert!(
            session_cookie(&r).unwrap().contains(".v1."),
            "re-pinned to stable"
        );
    }
    // Forwarding headers reach the upstream.
    let body = http.get(&url).send().unwrap().text().unwrap();
    assert!(body.contains("xff=127.0.0.1"), "{body}");

    // Bad admin calls: no token, unknown version, nothing to promote.
    let r = reqwest::blocking::Client::new()
        .post(format!("http://{}/api/v1/apps/shop/promote", proxy.admin))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let (status, body) = proxy.admin("POST", "/apps/shop/rollout", Some(json!({"version": "v9"})));
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("v9"));
    let (status, _) = proxy.admin("POST", "/apps/shop/promote", None);
    assert_eq!(status, 409);
    let (status, _) = proxy.admin("GET", "/apps/nope", None);
    assert_eq!(status, 404);
}

#[test]
fn apps_sharing_a_host_keep_their_own_sessions() {
    let rt = runtime();
    let (s1, s2, a1, a2) = (
        upstream(&rt, "shop-v1"),
        upstream(&rt, "shop-v2"),
        upstream(&rt, "api-v1"),
        upstream(&rt, "api-v2"),
    );
    let dir = tempdir();
    let proxy = Proxy::start(
        dir.path(),
        &format!(
            "[proxy]\nworkers = 2\n[[listeners]]\naddress = \"{{listen}}\"\n\
             [apps.shop]\nstable = \"v1\"\n[apps.shop.analysis]\nenabled = false\n\
             [apps.shop.versions.v1]\nendpoints = [\"{}\"]\n[apps.shop.versions.v2]\nendpoints = [\"{}\"]\n\
             [apps.api]\npaths = [\"/api\"]\nstable = \"v1\"\n[apps.api.analysis]\nenabled = false\n\
             [apps.api.versions.v1]\nendpoints = [\"{}\"]\n[apps.api.versions.v2]\nendpoints = [\"{}\"]\n",
            s1.address(),
            s2.address(),
            a1.address(),
            a2.address()
        ),
    );
    for app in ["shop", "api"] {
        proxy.admin_ok(
            "POST",
            &format!("/apps/{app}/rollout"),
            Some(json!({"version": "v2", "canary": "50"})),
        );
    }
    let http = reqwest::blocking::Client::new();
    // A shop session on v1 and an api session on v2: one browser holding both cookies.
    let (shop_cookie, api_cookie) = {
        let mut shop = None;
        let mut api = None;
        for _ in 0..40 {
            let r = http.get(proxy.url("/")).send().unwrap();
            if version_of(&r) == "v1" {
                shop = cookie_pair(&r, "hemiron-session-shop");
            }
            let r = http.get(proxy.url("/api/x")).send().unwrap();
            if version_of(&r) == "v2" {
                api = cookie_pair(&r, "hemiron-session-api");
            }
        }
        (
            shop.expect("a shop session on v1"),
            api.expect("an api session on v2"),
        )
    };
    let both = format!("{shop_cookie}; {api_cookie}");
    for _ in 0..10 {
        let r = with_cookie(&http, proxy.url("/"), &both);
        assert_eq!(version_of(&r), "v1");
        assert!(
            r.headers().get("set-cookie").is_none(),
            "the shop pin holds"
        );
        let r = with_cookie(&http, proxy.url("/api/x"), &both);
        assert_eq!(version_of(&r), "v2");
        assert!(r.headers().get("set-cookie").is_none(), "the api pin holds");
    }
    // One app's pin cannot be carried over to another: the MAC binds it to its app.
    let carried = shop_cookie.replacen("hemiron-session-shop=", "hemiron-session-api=", 1);
    let r = with_cookie(&http, proxy.url("/api/x"), &carried);
    assert!(
        cookie_pair(&r, "hemiron-session-api").is_some(),
        "the carried cookie is ignored: a new api session"
    );
}

#[test]
fn no_request_sent_after_a_rollback_answer_reaches_the_old_version() {
    let rt = runtime();
    let dir = tempdir();
    let (_a, _b, proxy) = two_versions(&rt, dir.path());
    let url = proxy.url("/");
    let admin = format!("http://{}/api/v1/apps/shop", proxy.admin);
    let token = proxy.token.clone();
    rt.block_on(async {
        let client = reqwest::Client::new();
        // Requests in flight at every switch: they may finish on either version.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let background = {
            let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let r = client.get(&url).send().await.unwrap();
                    assert!(r.status().is_success());
                }
            })
        };
        // `n` requests at once, all sent after the call returns: the versions that answered.
        let burst = |n: usize| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let answers =
                    futures_util::future::join_all((0..n).map(|_| client.get(&url).send())).await;
                answers
                    .into_iter()
                    .map(|r| {
                        let r = r.unwrap();
                        assert!(r.status().is_success());
                        r.headers()["x-hemiron-version"]
                            .to_str()
                            .unwrap()
                            .to_string()
                    })
                    .collect::<Vec<_>>()
            }
        };
        for round in 0..20 {
            let r = client
                .post(format!("{admin}/rollout"))
                .bearer_auth(&token)
                .json(&json!({"version": "v2", "canary": "50"}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            let seen = burst(40).await;
            assert!(seen.iter().any(|v| v == "v2"), "round {round}: {seen:?}");
            let r = client
                .post(format!("{admin}/rollback"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            let seen = burst(40).await;
            assert!(
                seen.iter().all(|v| v == "v1"),
                "round {round}: admitted after the rollback's answer: {seen:?}"
            );
        }
        stop.store(true, Ordering::SeqCst);
        background.await.unwrap();
    });
}

/// How many of `n` requests each upstream answered (by the name it answers with).
fn served_by(proxy: &Proxy, n: usize) -> HashMap<String, usize> {
    let http = reqwest::blocking::Client::new();
    let mut m: HashMap<String, usize> = HashMap::new();
    for _ in 0..n {
        let body = http.get(proxy.url("/")).send().unwrap().text().unwrap();
        *m.entry(body.split(' ').next().unwrap().to_string())
            .or_default() += 1;
    }
    m
}

#[test]
fn unhealthy_endpoints_and_versions_get_no_traffic() {
    let rt = runtime();
    let (a1, a2, b) = (
        upstream(&rt, "v1-a"),
        upstream(&rt, "v1-b"),
        upstream(&rt, "v2"),
    );
    let dir = tempdir();
    let proxy = Proxy::start(
        dir.path(),
        &config(
            &[("v1", &[&a1, &a2]), ("v2", &[&b])],
            "[apps.shop.analysis]\nenabled = false\n[apps.shop.health]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\nunhealthy_after = 2\nhealthy_after = 2\n[apps.shop.outlier]\nconsecutive_5xx = 3\nbase_ejection = \"60s\"\n",
        ),
    );
    let url = proxy.url("/");
    let http = reqwest::blocking::Client::new();
    let both = served_by(&proxy, 20);
    assert_eq!(both.get("v1-a"), Some(&10), "{both:?}");

    // Active checks take v1-b out.
    a2.behaviour.unhealthy.store(true, Ordering::SeqCst);
    wait_for(
        "v1-b to be marked unhealthy",
        Duration::from_secs(10),
        || {
            proxy.metrics()
            .contains(&format!("hemiron_proxy_endpoint_healthy{{app=\"shop\",version=\"v1\",endpoint=\"{}\"}} 0", a2.address()))
            .then_some(())
        },
    );
    let only_a = served_by(&proxy, 20);
    assert_eq!(only_a.get("v1-a"), Some(&20), "{only_a:?}");

    // A canary at 10%, then v1-a starts failing every request: 3 consecutive 5xx eject it,
    // v1 has no healthy endpoint left, and v2 takes every request.
    proxy.admin_ok(
        "POST",
        "/apps/shop/rollout",
        Some(json!({"version": "v2", "canary": "10"})),
    );
    a1.behaviour.fail_every.store(1, Ordering::SeqCst);
    let mut fives = 0;
    for _ in 0..10 {
        let r = http.get(&url).send().unwrap();
        if r.status().as_u16() == 500 {
            fives += 1;
        }
    }
    assert!(
        fives <= 3,
        "only the failures that eject it get through ({fives})"
    );
    wait_for(
        "the version to be taken out",
        Duration::from_secs(5),
        || {
            let status = proxy.admin_ok("GET", "/apps/shop", None);
            (status["versions"][0]["healthy"] == json!(false)).then_some(())
        },
    );
    let all = served_by(&proxy, 50);
    assert_eq!(all.get("v2"), Some(&50), "{all:?}");

    // Recovery: v1-b passes its checks again and takes v1's share back.
    a2.behaviour.unhealthy.store(false, Ordering::SeqCst);
    wait_for("v1-b back", Duration::from_secs(10), || {
        let m = served_by(&proxy, 20);
        m.contains_key("v1-b").then_some(())
    });
}

#[test]
fn an_endpoint_down_at_start_or_reload_gets_no_request() {
    let rt = runtime();
    let (a1, a2, a3) = (
        upstream(&rt, "v1-a"),
        upstream(&rt, "v1-b"),
        upstream(&rt, "v1-c"),
    );
    a2.behaviour.unhealthy.store(true, Ordering::SeqCst);
    let dir = tempdir();
    // Checks every 30 s, and 3 failures to go out: only the first round, before the
    // listeners open, can keep v1-b out of the first requests.
    let health = "[apps.shop.analysis]\nenabled = false\n[apps.shop.health]\npath = \"/healthz\"\ninterval = \"30s\"\ntimeout = \"500ms\"\nunhealthy_after = 3\nhealthy_after = 1\n";
    let mut proxy = Proxy::start(dir.path(), &config(&[("v1", &[&a1, &a2])], health));
    let first = served_by(&proxy, 20);
    assert_eq!(first.get("v1-a"), Some(&20), "{first:?}");
    assert!(proxy.log().contains("first health checks done"));

    // A reload that changes v1's endpoints keeps what is known of v1-b: out, not tried again.
    let text = std::fs::read_to_string(&proxy.config).unwrap();
    let grown = text.replace(
        &format!("\"{}\"]", a2.address()),
        &format!("\"{}\", \"{}\"]", a2.address(), a3.address()),
    );
    assert_ne!(grown, text);
    std::fs::write(&proxy.config, &grown).unwrap();
    proxy.admin_ok("POST", "/reload", None);
    let after = served_by(&proxy, 30);
    assert_eq!(after.get("v1-b"), None, "{after:?}");
    assert!(
        after.contains_key("v1-c"),
        "the new endpoint takes traffic: {after:?}"
    );

    // A restart checks again before it listens.
    proxy.stop();
    proxy.launch();
    let restarted = served_by(&proxy, 20);
    assert_eq!(restarted.get("v1-b"), None, "{restarted:?}");
    assert_eq!(a2.requests(), 0, "v1-b saw only health checks");
}

#[test]
fn websockets_through_a_rollout_and_their_drain() {
    let rt = runtime();
    let dir = tempdir();
    let (_a, _b, proxy) = two_versions(&rt, dir.path());
    let ws_url = format!("ws://{}/ws", proxy.data);
    rt.block_on(async {
        let (mut old, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
        old.send("hello".into()).await.unwrap();
        let reply = old.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), "v1: hello");

        // Switch everything to v2: the open WebSocket stays on v1 and keeps working.
        let admin = format!("http://{}/api/v1/apps/shop/rollout", proxy.admin);
        let r = reqwest::Client::new()
            .post(&admin)
            .bearer_auth(&proxy.token)
            .json(&json!({"version": "v2", "blue_green": true}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        old.send("still there".into()).await.unwrap();
        let reply = old.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), "v1: still there");

        let (mut new, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
        new.send("hi".into()).await.unwrap();
        let reply = new.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), "v2: hi");

        // v1 drains: at the drain timeout (3 s) its WebSocket is closed with 1001.
        let started = Instant::now();
        let msg = tokio::time::timeout(Duration::from_secs(10), old.next())
            .await
            .expect("closed within the drain timeout")
            .unwrap()
            .unwrap();
        match msg {
            tokio_tungstenite::tungstenite::Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1001)
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        // The v2 WebSocket is untouched.
        new.send("after".into()).await.unwrap();
        let reply = new.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), "v2: after");
    });
    assert!(proxy
        .metrics()
        .contains("hemiron_proxy_drain_cancelled_requests_total{app=\"shop\",version=\"v1\"} 1"));
}

#[test]
fn reloads_keep_rollouts_and_state_survives_restarts() {
    let rt = runtime();
    let (a, a2, b) = (
        upstream(&rt, "v1"),
        upstream(&rt, "v1-extra"),
        upstream(&rt, "v2"),
    );
    let dir = tempdir();
    let no_analysis = "[apps.shop.analysis]\nenabled = false\n";
    let mut proxy = Proxy::start(
        dir.path(),
        &config(&[("v1", &[&a]), ("v2", &[&b])], no_analysis),
    );
    proxy.admin_ok(
        "POST",
        "/apps/shop/rollout",
        Some(json!({"version": "v2", "canary": "25,50"})),
    );
    let http = reqwest::blocking::Client::new();
    let pinned = (0..20)
        .map(|_| http.get(proxy.url("/")).send().unwrap())
        .find(|r| version_of(r) == "v2")
        .map(|r| session_cookie(&r).unwrap())
        .expect("a v2 session");
    let weights = |p: &Proxy| {
        let s = p.admin_ok("GET", "/apps/shop", None);
        s["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["version"].as_str().unwrap().to_string(),
                    v["weight_percent"].as_f64().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    let at_25 = vec![("v1".to_string(), 75.0), ("v2".to_string(), 25.0)];
    assert_eq!(weights(&proxy), at_25);

    // A restart serves exactly what was served: same rollout, same step, same pause, same
    // events, same sessions.
    proxy.admin_ok("POST", "/apps/shop/pause", None);
    let before = proxy.admin_ok("GET", "/apps/shop", None);
    assert_eq!(before["rollout"]["paused"], true);
    proxy.stop();
    let text = std::fs::read_to_string(&proxy.config).unwrap();
    let listen = proxy.data.to_string();
    proxy.launch();
    assert_eq!(weights(&proxy), at_25);
    let after = proxy.admin_ok("GET", "/apps/shop", None);
    for key in [
        "rollout",
        "events",
        "stable",
        "previous_stable",
        "last_outcome",
    ] {
        assert_eq!(after[key], before[key], "{key}");
    }
    proxy.admin_ok("POST", "/apps/shop/resume", None);
    let r = with_cookie(&http, proxy.url("/"), &pinned);
    assert_eq!(version_of(&r), "v2", "the session key survives the restart");

    // A changed file (an endpoint added to v1) is picked up; the rollout goes on.
    let grown = text.replace(
        &format!("endpoints = [\"{}\"]", a.address()),
        &format!("endpoints = [\"{}\", \"{}\"]", a.address(), a2.address()),
    );
    assert_ne!(grown, text);
    std::fs::write(&proxy.config, &grown).unwrap();
    wait_for("the reload", Duration::from_secs(10), || {
        let s = proxy.admin_ok("GET", "/apps/shop", None);
        (s["versions"][0]["endpoints"].as_array().unwrap().len() == 2).then_some(())
    });
    assert_eq!(weights(&proxy), at_25);
    assert!(proxy.admin_ok("GET", "/apps/shop", None)["rollout"].is_object());
    wait_for("the new endpoint to serve", Duration::from_secs(5), || {
        let body = http
            .get(proxy.url("/"))
            .header("x-hemiron-version", "v1")
            .send()
            .unwrap()
            .text()
            .unwrap();
        body.starts_with("v1-extra").then_some(())
    });

    // An invalid file changes nothing and reports every problem.
    let broken = grown
        .replace("stable = \"v1\"", "stable = \"v7\"")
        .replace(&format!("\"{}\"", b.address()), "\"nowhere\"");
    std::fs::write(&proxy.config, &broken).unwrap();
    let (status, body) = proxy.admin("POST", "/reload", None);
    assert_eq!(status, 422, "{body}");
    let problems = body["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "{body}");
    assert_eq!(weights(&proxy), at_25);
    assert!(proxy.log().contains("configuration not reloaded"));

    // SIGHUP with a file that removes the canary's version: the rollout aborts to stable.
    let without_v2 = grown
        .split("[apps.shop.versions.v2]")
        .next()
        .unwrap()
        .to_string();
    std::fs::write(&proxy.config, &without_v2).unwrap();
    let pid = common::proxy::Spawned(proxy.take_child().unwrap());
    std::process::Command::new("kill")
        .args(["-HUP", &pid.0.id().to_string()])
        .status()
        .unwrap();
    wait_for("the rollout to abort", Duration::from_secs(10), || {
        let s = proxy.admin_ok("GET", "/apps/shop", None);
        s["rollout"].is_null().then_some(s)
    });
    let s = proxy.admin_ok("GET", "/apps/shop", None);
    assert!(
        s["last_outcome"]
            .as_str()
            .unwrap()
            .contains("removed from the configuration"),
        "{s}"
    );
    let r = with_cookie(&http, proxy.url("/"), &pinned);
    assert_eq!(version_of(&r), "v1");
    let mut child = pid;
    common::proxy::terminate(&mut child.0);
    assert!(listen.starts_with("127.0.0.1:"));
}

#[test]
fn a_second_proxy_takes_over_without_losing_a_request() {
    let rt = runtime();
    let (a, b) = (upstream(&rt, "v1"), upstream(&rt, "v2"));
    // Requests take 300 ms: some are always in flight on the old process when it stops.
    a.behaviour.delay_ms.store(300, Ordering::SeqCst);
    // Half the requests go to an app with an HTTP/2 version, whose keep-alive connections
    // the fast path hands to hyper (during the stop's grace period too).
    let g = h2c_upstream(&rt);
    let dir = tempdir();
    let mut first = Proxy::start(
        dir.path(),
        &(config(
            &[("v1", &[&a]), ("v2", &[&b])],
            "[apps.shop.analysis]\nenabled = false\n",
        ) + &grpc_app(&g.addr)),
    );
    let url = first.url("/");
    let grpc_url = first.url("/grpc");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Clients: a new connection per request, pooled keep-alive connections, and HTTP/2.
    let load = {
        let (url, grpc_url, stop) = (url.clone(), grpc_url.clone(), stop.clone());
        rt.spawn(async move {
            let fresh = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let kept = reqwest::Client::new();
            let h2c = reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .unwrap();
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let mut tasks = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                n += 1;
                // A third of the requests open a connection each, a third reuse pooled
                // HTTP/1.1 keep-alive connections, and a third go over one HTTP/2 connection
                // (GOAWAY at the stop).
                let client = match n % 3 {
                    0 => &fresh,
                    1 => &kept,
                    _ => &h2c,
                };
                let url = if n % 2 == 0 { &url } else { &grpc_url };
                let (client, url) = (client.clone(), url.clone());
                tasks.push(tokio::spawn(async move {
                    let r = client.get(&url).send().await.map_err(|e| e.to_string())?;
                    if r.status().is_success() {
                        Ok(())
                    } else {
                        Err(format!("status {}", r.status()))
                    }
                }));
            }
            let mut results = Vec::new();
            for t in tasks {
                results.push(t.await.unwrap());
            }
            results
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    // The second proxy: same configuration, same state, same ports.
    let mut second = common::proxy::Spawned(first.spawn());
    wait_for(
        "the second proxy to listen",
        Duration::from_secs(20),
        || (first.log().matches("admin API on").count() >= 2).then_some(()),
    );
    // Every new connection now goes to the second process; the first keeps only the
    // keep-alive connections it had.
    std::thread::sleep(Duration::from_millis(1000));
    let mut old = common::proxy::Spawned(first.take_child().unwrap());
    let port = first.data.port();
    let old_pid = format!("pid={},", old.0.id());
    let sockets_of_old = || {
        let ss = std::process::Command::new("ss")
            .args([
                "-Htnp",
                "state",
                "established",
                &format!("( sport = :{port} )"),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&ss.stdout).to_string();
        assert!(text.lines().count() > 10, "the load is on: {text}");
        text.lines()
            .filter(|l| l.contains(&old_pid))
            .map(|l| l.split_whitespace().nth(3).unwrap().to_string())
            .collect::<std::collections::HashSet<String>>()
    };
    let before = sockets_of_old();
    assert!(
        !before.is_empty(),
        "keep-alive connections of the old process are in use as it stops"
    );
    std::thread::sleep(Duration::from_millis(300));
    let new_ones: Vec<String> = sockets_of_old().difference(&before).cloned().collect();
    assert!(
        new_ones.is_empty(),
        "the old process still gets new connections: {new_ones:?}"
    );
    common::proxy::terminate(&mut old.0);
    assert!(
        old.0.try_wait().unwrap().is_some(),
        "the first proxy exited"
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let results = rt.block_on(load).unwrap();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(results.len() > 300, "{} requests", results.len());
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(5)]
    );
    // The second one serves on.
    let r = reqwest::blocking::get(&url).unwrap();
    assert!(r.status().is_success());
    common::proxy::terminate(&mut second.0);
}

/// A self-signed certificate for `host`, written as `NAME.pem` and `NAME.key` in `dir`.
fn certificate(dir: &std::path::Path, name: &str, host: &str) {
    let cert = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    std::fs::write(dir.join(format!("{name}.pem.new")), cert.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{name}.key.new")),
        cert.key_pair.serialize_pem(),
    )
    .unwrap();
    // Both files change at once, as a certificate renewal would do it.
    std::fs::rename(
        dir.join(format!("{name}.key.new")),
        dir.join(format!("{name}.key")),
    )
    .unwrap();
    std::fs::rename(
        dir.join(format!("{name}.pem.new")),
        dir.join(format!("{name}.pem")),
    )
    .unwrap();
}

/// The subject and serial of the certificate served for `sni` (openssl s_client).
fn served_certificate(addr: &str, sni: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -servername {sni} </dev/null 2>/dev/null | openssl x509 -noout -subject -serial"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn tls_with_sni_and_alpn_h2c_and_certificate_reloads() {
    let rt = runtime();
    let (a, b) = (upstream(&rt, "v1"), upstream(&rt, "v2"));
    let dir = tempdir();
    std::fs::create_dir_all(dir.path()).unwrap();
    certificate(dir.path(), "shop", "shop.test");
    certificate(dir.path(), "blog", "blog.test");
    let tls_port = common::proxy::free_port();
    let text = format!(
        "[proxy]\nworkers = 2\n[[listeners]]\naddress = \"{{listen}}\"\n[[listeners]]\naddress = \"127.0.0.1:{tls_port}\"\ntls = true\n[[certificates]]\ncert = \"shop.pem\"\nkey = \"shop.key\"\nhosts = [\"shop.test\"]\n[[certificates]]\ncert = \"blog.pem\"\nkey = \"blog.key\"\nhosts = [\"blog.test\"]\n[apps.shop]\nstable = \"v1\"\n[apps.shop.analysis]\nenabled = false\n[apps.shop.versions.v1]\nendpoints = [\"{}\"]\n[apps.shop.versions.v2]\nendpoints = [\"{}\"]\n",
        a.address(),
        b.address()
    );
    let proxy = Proxy::start(dir.path(), &text);
    let tls_addr = format!("127.0.0.1:{tls_port}");

    // HTTPS: HTTP/2 by ALPN.
    let client = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve("shop.test", tls_addr.parse().unwrap())
        .build()
        .unwrap();
    let r = client
        .get(format!("https://shop.test:{tls_port}/"))
        .send()
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(version_of(&r), "v1");
    let header = set_cookie(&r, "hemiron-session-shop").unwrap_or_default();
    assert!(header.contains("Secure"), "{header}");
    let body = r.text().unwrap();
    assert!(body.starts_with("v1 "), "{body}");

    // h2c (prior knowledge) on the plain listener.
    let h2c = reqwest::blocking::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2c.get(proxy.url("/")).send().unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(version_of(&r), "v1");

    // SNI picks the certificate.
    let shop = served_certificate(&tls_addr, "shop.test");
    let blog = served_certificate(&tls_addr, "blog.test");
    assert!(
        shop.contains("subject=") && blog.contains("subject="),
        "{shop} {blog}"
    );
    assert_ne!(shop, blog);

    // A renewed certificate is served without a restart.
    certificate(dir.path(), "shop", "shop.test");
    wait_for("the renewed certificate", Duration::from_secs(10), || {
        let now = served_certificate(&tls_addr, "shop.test");
        (now.contains("subject=") && now != shop).then_some(())
    });
    assert!(proxy.log().contains("certificate reloaded"));

    // A certificate added to the configuration is served after a reload; until then the
    // name gets the first certificate.
    certificate(dir.path(), "docs", "docs.test");
    let before = served_certificate(&tls_addr, "docs.test");
    let renewed_shop = served_certificate(&tls_addr, "shop.test");
    assert_eq!(before, renewed_shop);
    let with_docs = std::fs::read_to_string(&proxy.config).unwrap().replace(
        "[apps.shop]",
        "[[certificates]]\ncert = \"docs.pem\"\nkey = \"docs.key\"\nhosts = [\"docs.test\"]\n[apps.shop]",
    );
    std::fs::write(&proxy.config, &with_docs).unwrap();
    proxy.admin_ok("POST", "/reload", None);
    let docs = served_certificate(&tls_addr, "docs.test");
    assert!(docs.contains("subject="), "{docs}");
    assert_ne!(docs, renewed_shop);
    // One that cannot be read refuses the whole file, and what is served stays.
    let broken = with_docs.replace("docs.pem", "missing.pem");
    std::fs::write(&proxy.config, broken).unwrap();
    let (status, body) = proxy.admin("POST", "/reload", None);
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("missing.pem"), "{body}");
    assert_eq!(served_certificate(&tls_addr, "docs.test"), docs);
    std::fs::write(&proxy.config, &with_docs).unwrap();
}

#[test]
fn failed_connects_are_retried_and_every_request_is_logged() {
    let rt = runtime();
    let (a, b) = (upstream(&rt, "v1"), upstream(&rt, "v2"));
    // Nothing listens on this port: every connect to it fails.
    let dead = format!("127.0.0.1:{}", common::proxy::free_port());
    let dir = tempdir();
    let log = dir.path().join("access.log");
    let text = format!(
        "[proxy]\nworkers = 2\naccess_log = \"{}\"\n[[listeners]]\naddress = \"{{listen}}\"\n[apps.shop]\nstable = \"v1\"\n[apps.shop.analysis]\nenabled = false\n[apps.shop.outlier]\nconsecutive_connect_failures = 1000\n[apps.shop.versions.v1]\nendpoints = [\"{dead}\", \"{}\"]\n[apps.shop.versions.v2]\nendpoints = [\"{}\"]\n",
        log.display(),
        a.address(),
        b.address()
    );
    let proxy = Proxy::start(dir.path(), &text);
    let http = reqwest::blocking::Client::new();
    for i in 0..20 {
        let r = if i % 2 == 0 {
            http.get(proxy.url("/get")).send().unwrap()
        } else {
            http.post(proxy.url("/post"))
                .body("payload")
                .send()
                .unwrap()
        };
        assert!(r.status().is_success(), "{}", r.status());
    }
    assert_eq!(a.posts(), 10, "each POST reached the live endpoint once");
    let metrics = proxy.metrics();
    assert!(
        metrics.contains(&format!(
            "hemiron_proxy_upstream_connect_failures_total{{app=\"shop\",version=\"v1\",endpoint=\"{dead}\"}} 10"
        )),
        "{metrics}"
    );
    // A request the proxy answers itself is logged too.
    let answer = raw_exchange(
        proxy.data,
        &[b"GET /twice HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"],
        Duration::ZERO,
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // One JSON line per request.
    let lines = wait_for("the access log", Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&log).ok()?;
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (lines.len() >= 21).then_some(lines)
    });
    assert_eq!(lines.len(), 21);
    let refused = &lines[20];
    assert_eq!(refused["status"], 400, "{refused}");
    assert_eq!(refused["route"], "local", "{refused}");
    assert!(
        refused["app"].is_null() && !refused["error"].is_null(),
        "{refused}"
    );
    let post = lines.iter().find(|l| l["method"] == "POST").unwrap();
    for field in [
        "time",
        "remote",
        "host",
        "path",
        "status",
        "app",
        "version",
        "route",
        "endpoint",
        "attempts",
        "duration_ms",
    ] {
        assert!(!post[field].is_null(), "{field} missing: {post}");
    }
    assert_eq!(post["path"], "/post");
    assert_eq!(post["app"], "shop");
    assert!(
        lines.iter().any(|l| l["attempts"] == 2),
        "a retried request says so"
    );
    // Lines still queued when the proxy stops are written before it exits.
    let mut proxy = proxy;
    for _ in 0..5 {
        reqwest::blocking::get(proxy.url("/last")).unwrap();
    }
    proxy.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 26, "{text}");
    assert!(text.lines().last().unwrap().contains("\"/last\""), "{text}");
}

#[test]
fn an_endpoint_refusing_connections_is_ejected() {
    let rt = runtime();
    let (a, b) = (upstream(&rt, "v1"), upstream(&rt, "v2"));
    let dead = format!("127.0.0.1:{}", common::proxy::free_port());
    let dir = tempdir();
    let text = format!(
        "[proxy]\nworkers = 2\n[[listeners]]\naddress = \"{{listen}}\"\n[apps.shop]\nstable = \"v1\"\n[apps.shop.analysis]\nenabled = false\n[apps.shop.outlier]\nconsecutive_connect_failures = 3\nbase_ejection = \"60s\"\n[apps.shop.versions.v1]\nendpoints = [\"{dead}\", \"{}\"]\n[apps.shop.versions.v2]\nendpoints = [\"{}\"]\n",
        a.address(),
        b.address()
    );
    let proxy = Proxy::start(dir.path(), &text);
    let http = reqwest::blocking::Client::new();
    let failures = |metrics: &str| -> u64 {
        let series = format!(
            "hemiron_proxy_upstream_connect_failures_total{{app=\"shop\",version=\"v1\",endpoint=\"{dead}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |n| n.trim().parse().unwrap())
    };
    for _ in 0..20 {
        let r = http.get(proxy.url("/")).send().unwrap();
        assert!(r.status().is_success(), "retried on the live endpoint");
    }
    let metrics = proxy.metrics();
    assert_eq!(
        failures(&metrics),
        3,
        "ejected after 3 failed connects:\n{metrics}"
    );
    // Exported by the engine's next tick.
    wait_for(
        "the ejection in the metrics",
        Duration::from_secs(5),
        || {
            proxy
            .metrics()
            .contains(&format!(
                "hemiron_proxy_endpoint_healthy{{app=\"shop\",version=\"v1\",endpoint=\"{dead}\"}} 0"
            ))
            .then_some(())
        },
    );
    // Ejected: no more connects are tried while the ejection lasts.
    for _ in 0..20 {
        assert!(http
            .get(proxy.url("/"))
            .send()
            .unwrap()
            .status()
            .is_success());
    }
    assert_eq!(failures(&proxy.metrics()), 3);
    assert_eq!(a.requests(), 40);
}

/// An upstream that reads each request's head and closes the connection without answering:
/// it may have acted on the request. Counts (GETs, POSTs) received.
/// Reads a request head (and whatever came with it); `None` if the connection ends first.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    Some(head)
}

fn closing_upstream(rt: &tokio::runtime::Runtime) -> (String, Arc<(AtomicU64, AtomicU64)>) {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let counts = seen.clone();
    rt.spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let counts = counts.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut stream).await else {
                    return;
                };
                if head.starts_with(b"POST") {
                    counts.1.fetch_add(1, Ordering::SeqCst);
                } else {
                    counts.0.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, seen)
}

/// `hemiron_proxy_retries_total` of the shop's v1.
fn shop_v1_retries(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("hemiron_proxy_retries_total{app=\"shop\",version=\"v1\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn only_idempotent_requests_are_retried_and_within_the_budget() {
    let rt = runtime();
    let good = upstream(&rt, "v1");
    let (bad, seen) = closing_upstream(&rt);
    let dir = tempdir();
    // No retries per second for free: the budget is 20% of the requests alone. Outlier
    // ejection off, so that the failing endpoint keeps its turn.
    let text = format!(
        "[proxy]\nworkers = 1\nretry_per_second = 0\nretry_ratio = 0.2\n[[listeners]]\naddress = \"{{listen}}\"\n[apps.shop]\nstable = \"v1\"\n[apps.shop.analysis]\nenabled = false\n[apps.shop.outlier]\nconsecutive_5xx = 1000\nconsecutive_connect_failures = 1000\n[apps.shop.versions.v1]\nendpoints = [\"{bad}\", \"{}\"]\n",
        good.address()
    );
    let proxy = Proxy::start(dir.path(), &text);
    let http = reqwest::blocking::Client::new();
    let (mut gets_ok, mut gets_failed) = (0u64, 0u64);
    for _ in 0..200 {
        let r = http.get(proxy.url("/")).send().unwrap();
        match r.status().as_u16() {
            200 => gets_ok += 1,
            502 => gets_failed += 1,
            s => panic!("status {s}"),
        }
    }
    let (mut posts_ok, mut posts_failed) = (0u64, 0u64);
    for i in 0..20 {
        let r = http
            .post(proxy.url("/"))
            .body(format!("order {i}"))
            .send()
            .unwrap();
        match r.status().as_u16() {
            200 => posts_ok += 1,
            502 => posts_failed += 1,
            s => panic!("status {s}"),
        }
    }
    let metrics = proxy.metrics();
    let retries = shop_v1_retries(&metrics);
    let bad_gets = seen.0.load(Ordering::SeqCst);
    eprintln!(
        "GETs: {gets_ok} ok, {gets_failed} failed, {bad_gets} reached the closing endpoint, {retries} retried; POSTs: {posts_ok} ok, {posts_failed} failed"
    );
    // Every GET the closing endpoint took was retried on the other one or failed; retries
    // stay within 20% of the 220 requests.
    assert_eq!(bad_gets, retries + gets_failed, "{metrics}");
    assert!(retries >= 10, "retries happen ({retries})");
    assert!(retries <= 220 / 5 + 1, "the budget holds ({retries})");
    assert!(gets_failed > 0, "beyond the budget, GETs fail");
    // A POST the closing endpoint read is never sent again: it may have been executed.
    assert_eq!(seen.1.load(Ordering::SeqCst), posts_failed);
    assert_eq!(good.posts(), posts_ok);
    assert_eq!(posts_ok + posts_failed, 20);
    assert!(posts_failed > 0);
    drop(proxy);

    // The other half of the budget: 3 retries per second for free, none earned by requests.
    // Over the budget's 10 s window that is a reserve of 30, whatever the traffic.
    let dir = tempdir();
    let text = format!(
        "[proxy]\nworkers = 1\nretry_per_second = 3\nretry_ratio = 0\n[[listeners]]\naddress = \"{{listen}}\"\n[apps.shop]\nstable = \"v1\"\n[apps.shop.analysis]\nenabled = false\n[apps.shop.outlier]\nconsecutive_5xx = 1000\nconsecutive_connect_failures = 1000\n[apps.shop.versions.v1]\nendpoints = [\"{bad}\", \"{}\"]\n",
        good.address()
    );
    let proxy = Proxy::start(dir.path(), &text);
    let before = seen.0.load(Ordering::SeqCst);
    let started = std::time::Instant::now();
    let mut failed = 0u64;
    for _ in 0..200 {
        match http.get(proxy.url("/")).send().unwrap().status().as_u16() {
            200 => {}
            502 => failed += 1,
            s => panic!("status {s}"),
        }
    }
    let elapsed = started.elapsed().as_secs();
    let metrics = proxy.metrics();
    let retries = shop_v1_retries(&metrics);
    let bad_gets = seen.0.load(Ordering::SeqCst) - before;
    eprintln!("3/s budget: {bad_gets} GETs reached the closing endpoint, {retries} retried, {failed} failed in {elapsed} s");
    assert_eq!(bad_gets, retries + failed, "{metrics}");
    assert!(
        bad_gets > 60,
        "the closing endpoint takes its share ({bad_gets})"
    );
    // The whole reserve is used, and no more than the reserve plus what the seconds past
    // the window added.
    assert!(retries >= 30, "the reserve allows 30 retries ({retries})");
    assert!(
        retries <= 30 + 3 * elapsed.saturating_sub(9),
        "{retries} retries in {elapsed} s"
    );
}

#[test]
fn the_rollout_commands_drive_the_admin_api() {
    let rt = runtime();
    let dir = tempdir();
    let (_a, _b, proxy) = two_versions(&rt, dir.path());
    let admin = format!("http://{}", proxy.admin);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(common::hemiron())
            .args(args)
            .args(["--admin", &admin, "--token", &proxy.token])
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = cli(&["rollout", "start", "shop", "v2", "--canary", "10,50"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("canary of v2 at 10%"), "{out}");
    let (code, out, _) = cli(&["rollout", "status", "shop"]);
    assert_eq!(code, 0);
    assert!(out.contains("VERSION") && out.contains("90%"), "{out}");
    let (code, out, _) = cli(&["rollout", "promote", "shop"]);
    assert_eq!(code, 0);
    assert!(out.contains("at 50%"), "{out}");
    let (code, out, _) = cli(&["rollout", "pause", "shop"]);
    assert_eq!(code, 0);
    assert!(out.contains("[paused]"), "{out}");
    let (code, _, _) = cli(&["rollout", "resume", "shop"]);
    assert_eq!(code, 0);
    let (code, out, _) = cli(&["rollback", "shop"]);
    assert_eq!(code, 0);
    assert!(out.contains("rolled back"), "{out}");
    // Refusals keep the CLI's exit codes: nothing to abort is a conflict (5), an unknown app
    // is not found (4), a wrong token is not allowed (3).
    let (code, _, err) = cli(&["rollout", "abort", "shop"]);
    assert_eq!(code, 5, "{err}");
    let (code, _, _) = cli(&["rollout", "status", "nope"]);
    assert_eq!(code, 4);
    let out = std::process::Command::new(common::hemiron())
        .args(["rollout", "status", "--admin", &admin, "--token", "wrong"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    // --json for scripts.
    let (code, out, _) = cli(&["--json", "rollout", "status", "shop"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["stable"], "v1");
}

/// A scripted HTTP/1.1 upstream on a raw socket: answers by path in ways a hyper server
/// would not (close-delimited bodies, chunked with trailers, 1xx, closing idle connections
/// early), and counts the connections it accepted.
fn scripted_upstream() -> (String, Arc<AtomicU64>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                loop {
                    // One head at a time (the proxy sends no bodies here).
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
                        match s.read(&mut chunk) {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            // Idle for 300 ms, or closed: this side closes.
                            _ => return,
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let answer: &[u8] = if head.starts_with("HEAD ") {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
                    } else if head.starts_with("GET /close ") {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nx-kind: close\r\n\r\nuntil the ");
                        std::thread::sleep(Duration::from_millis(50));
                        let _ = s.write_all(b"upstream closes");
                        return;
                    } else if head.starts_with("POST /toolarge ") {
                        // Refused at once, the body left unread.
                        let _ = s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!");
                        return;
                    } else if head.starts_with("GET /chunked ") {
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"
                    } else if head.starts_with("GET /early ") {
                        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    };
                    if s.write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Sends raw bytes on one connection and reads until the proxy closes it.
fn raw_exchange(addr: std::net::SocketAddr, parts: &[&[u8]], pause: Duration) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(pause);
        }
        s.write_all(p).unwrap();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn http1_framing_pipelining_and_pooling_through_the_fast_path() {
    let rt = runtime();
    let a = upstream(&rt, "v1");
    let (scripted, accepted) = scripted_upstream();
    let dir = tempdir();
    let text = format!(
        "[proxy]\nworkers = 1\n[[listeners]]\naddress = \"{{listen}}\"\n[apps.shop]\nstable = \"v1\"\n[apps.shop.analysis]\nenabled = false\n[apps.shop.versions.v1]\nendpoints = [\"{}\"]\n[apps.raw]\nhosts = [\"raw.test\"]\nstable = \"r1\"\n[apps.raw.analysis]\nenabled = false\n[apps.raw.versions.r1]\nendpoints = [\"{scripted}\"]\n[apps.dead]\nhosts = [\"dead.test\"]\nstable = \"d1\"\n[apps.dead.analysis]\nenabled = false\n[apps.dead.versions.d1]\nendpoints = [\"127.0.0.1:{}\"]\n",
        a.address(),
        common::proxy::free_port()
    );
    let proxy = Proxy::start(dir.path(), &text);
    let http = reqwest::blocking::Client::new();

    // A body that could not be sent anywhere is never read as further requests: the 502
    // ends the connection.
    let out = raw_exchange(
        proxy.data,
        &[b"POST / HTTP/1.1\r\nHost: dead.test\r\nTransfer-Encoding: chunked\r\n\r\n23\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n\r\n0\r\n\r\n"],
        Duration::ZERO,
    );
    assert!(out.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{out}");
    assert_eq!(out.matches("HTTP/1.1").count(), 1, "{out}");
    assert!(out.contains("connection: close"), "{out}");

    // Request bodies: small (buffered), large with a length, and chunked (both streamed).
    for size in [0usize, 10, 70_000, 1_000_000] {
        let body = vec![b'b'; size];
        let r = http.post(proxy.url("/up")).body(body).send().unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().unwrap().starts_with(&format!("v1 {size} bytes")));
    }
    // A reader of unknown length goes out chunked.
    let r = http
        .post(proxy.url("/up"))
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(
            vec![b'c'; 200_000],
        )))
        .send()
        .unwrap();
    assert!(r.text().unwrap().starts_with("v1 200000 bytes"));

    // Pipelined requests on one connection are answered in order.
    let out = raw_exchange(
        proxy.data,
        &[b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /g HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\nGET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"],
        Duration::ZERO,
    );
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
    let bodies: Vec<&str> = out
        .match_indices("v1 ")
        .map(|(i, _)| &out[i..i + 9])
        .collect();
    assert_eq!(bodies, ["v1 3 byte", "v1 2 byte", "v1 0 byte"], "{out}");
    assert!(out.contains("connection: close"), "{out}");

    // What a scripted upstream answers, relayed faithfully.
    let raw = |path: &str, method: &str| {
        raw_exchange(
            proxy.data,
            &[
                format!("{method} {path} HTTP/1.1\r\nHost: raw.test\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            ],
            Duration::ZERO,
        )
    };
    let out = raw("/close", "GET");
    assert!(
        out.contains("transfer-encoding: chunked"),
        "a close-delimited body goes out chunked: {out}"
    );
    let body = out.split_once("\r\n\r\n").unwrap().1;
    let mut c = 0;
    let mut text = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size, 16).unwrap();
        if n == 0 {
            c += 1;
            break;
        }
        text.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    assert_eq!(
        (c, text.as_str()),
        (1, "until the upstream closes"),
        "{out}"
    );
    let out = raw("/chunked", "GET");
    assert!(
        out.ends_with("5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"),
        "{out}"
    );
    let out = raw("/early", "GET");
    assert!(
        out.starts_with("HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{out}"
    );
    assert!(out.ends_with("early"), "{out}");
    // HEAD: no body although the length says 10, and the connection goes on.
    let out = raw_exchange(
        proxy.data,
        &[b"HEAD / HTTP/1.1\r\nHost: raw.test\r\n\r\nGET / HTTP/1.1\r\nHost: raw.test\r\nConnection: close\r\n\r\n"],
        Duration::ZERO,
    );
    assert!(out.contains("Content-Length: 10\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nok"), "{out}");

    // Pooling: sequential requests share one upstream connection; one the upstream closed
    // while idle is noticed and replaced, and the request after it still succeeds.
    // (The upstream closes connections idle for 300 ms: those pooled so far are gone.)
    std::thread::sleep(Duration::from_millis(600));
    let before = accepted.load(Ordering::SeqCst);
    let raw_client = reqwest::blocking::Client::new();
    for _ in 0..20 {
        let r = raw_client
            .get(proxy.url("/"))
            .header("host", "raw.test")
            .send()
            .unwrap();
        assert_eq!(r.text().unwrap(), "ok");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst) - before,
        1,
        "one pooled upstream connection"
    );
    std::thread::sleep(Duration::from_millis(600));
    let r = raw_client
        .get(proxy.url("/"))
        .header("host", "raw.test")
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "ok");
    assert_eq!(accepted.load(Ordering::SeqCst) - before, 2);

    // An upstream that refuses a body before it has it all: its answer reaches the client at
    // once (the client is still sending), and that connection ends.
    let out = raw_exchange(
        proxy.data,
        &[
            b"POST /toolarge HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 100000000\r\n\r\n",
            &vec![b'u'; 256 * 1024],
        ],
        Duration::ZERO,
    );
    assert!(
        out.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{out}"
    );
    assert!(
        out.contains("connection: close") && out.ends_with("big!"),
        "{out}"
    );

    // A head that arrives in pieces is put together.
    let out = raw_exchange(
        proxy.data,
        &[
            b"GET /pie",
            b"ces HTTP/1.1\r\nHo",
            b"st: a\r\nConnection: close\r\n\r",
            b"\n",
        ],
        Duration::from_millis(50),
    );
    assert!(
        out.starts_with("HTTP/1.1 200 OK\r\n") && out.contains("v1 0 bytes"),
        "{out}"
    );

    // Ambiguous framing is refused, and the connection closed.
    let out = raw_exchange(
        proxy.data,
        &[b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"],
        Duration::ZERO,
    );
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(out.contains("connection: close"), "{out}");
    // What the fast path hands to hyper still works: HTTP/1.0 and Expect: 100-continue.
    let out = raw_exchange(
        proxy.data,
        &[b"GET /old HTTP/1.0\r\nHost: a\r\n\r\n"],
        Duration::ZERO,
    );
    assert!(
        out.starts_with("HTTP/1.0 200 OK\r\n") && out.contains("v1 0 bytes"),
        "{out}"
    );
    let out = raw_exchange(
        proxy.data,
        &[
            b"PUT /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\nConnection: close\r\n\r\n",
            b"body",
        ],
        Duration::from_millis(200),
    );
    assert!(
        out.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{out}"
    );
    assert!(out.contains("v1 4 bytes"), "{out}");
    // Nothing went through hyper's error paths meanwhile.
    assert!(!proxy.log().contains("panicked"), "{}", proxy.log());
}

#[test]
fn slow_answers_time_out_and_a_drain_cancels_what_it_waits_for() {
    let rt = runtime();
    let (a, b) = (upstream(&rt, "v1"), upstream(&rt, "v2"));
    let dir = tempdir();
    let text = config(
        &[("v1", &[&a]), ("v2", &[&b])],
        "[apps.shop.analysis]\nenabled = false\n",
    )
    .replace(
        "drain_timeout = \"3s\"",
        "drain_timeout = \"300ms\"\nresponse_timeout = \"800ms\"",
    );
    let proxy = Proxy::start(dir.path(), &text);
    let http = reqwest::blocking::Client::new();

    // Answers slower than the response timeout: 504, in about that time.
    a.behaviour.delay_ms.store(2000, Ordering::SeqCst);
    let t = Instant::now();
    let r = http.get(proxy.url("/slow")).send().unwrap();
    assert_eq!(r.status(), 504);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(750) && waited < Duration::from_millis(1800),
        "{waited:?}"
    );

    // Answers within it, one after another on one connection for longer than the timeout
    // in total: none is cut short (the timer is re-armed, not left at the first deadline).
    a.behaviour.delay_ms.store(300, Ordering::SeqCst);
    for _ in 0..6 {
        assert_eq!(http.get(proxy.url("/ok")).send().unwrap().status(), 200);
    }

    // The timeout runs from the request's sending: an upload slower than it is answered.
    a.behaviour.delay_ms.store(0, Ordering::SeqCst);
    let half = [b'u'; 50_000];
    let out = raw_exchange(
        proxy.data,
        &[
            b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n",
            &half,
            &half,
        ],
        Duration::from_millis(1200),
    );
    assert!(
        out.starts_with("HTTP/1.1 200 OK\r\n") && out.contains("v1 100000 bytes"),
        "{out}"
    );

    // A request in flight on the version a blue/green switch takes out is cancelled when
    // the drain times out, and counted.
    a.behaviour.delay_ms.store(700, Ordering::SeqCst);
    let url = proxy.url("/inflight");
    let inflight = std::thread::spawn(move || {
        let t = Instant::now();
        let status = reqwest::blocking::get(url).unwrap().status();
        (status, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(150));
    proxy.admin_ok(
        "POST",
        "/apps/shop/rollout",
        Some(json!({"version": "v2", "blue_green": true})),
    );
    let (status, took) = inflight.join().unwrap();
    assert_eq!(status, 502);
    assert!(
        took < Duration::from_millis(650),
        "cancelled at the drain timeout: {took:?}"
    );
    assert!(proxy
        .metrics()
        .contains("hemiron_proxy_drain_cancelled_requests_total{app=\"shop\",version=\"v1\"} 1"));
    assert_eq!(http.get(proxy.url("/after")).send().unwrap().status(), 200);
}

/// An upstream that sends a response head and the first bytes of its body, then nothing more
/// while the connection stays open.
fn stalling_upstream(rt: &tokio::runtime::Runtime) -> String {
    use tokio::io::AsyncWriteExt;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    rt.spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut stream).await.is_none() {
                    return;
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nfirst part")
                    .await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    addr
}

/// On the hyper path (here HTTP/2), a response body that stalls on a draining version is
/// cancelled at the drain timeout (the stream reset) and counted, not left open until the
/// upstream sends more.
#[test]
fn a_drain_cancels_a_stalled_body_on_http2() {
    let rt = runtime();
    let stalled = stalling_upstream(&rt);
    let b = upstream(&rt, "v2");
    let dir = tempdir();
    let text = format!(
        "[proxy]\nworkers = 2\ndrain_timeout = \"300ms\"\n[[listeners]]\naddress = \"{{listen}}\"\n[apps.shop]\nstable = \"v1\"\n[apps.shop.analysis]\nenabled = false\n[apps.shop.versions.v1]\nendpoints = [\"{stalled}\"]\n[apps.shop.versions.v2]\nendpoints = [\"{}\"]\n",
        b.address()
    );
    let proxy = Proxy::start(dir.path(), &text);
    let url = proxy.url("/stream");
    let (got_head, head_seen) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let h2c = reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .unwrap();
            let mut r = h2c.get(url).send().await.unwrap();
            assert_eq!(r.version(), reqwest::Version::HTTP_2);
            assert_eq!(r.status(), 200);
            let first = r.chunk().await.unwrap().unwrap();
            assert_eq!(&first[..], b"first part");
            got_head.send(()).unwrap();
            let t = Instant::now();
            let rest = tokio::time::timeout(Duration::from_secs(5), r.chunk()).await;
            (rest.map(|c| c.is_err()), t.elapsed())
        })
    });
    head_seen.recv_timeout(Duration::from_secs(10)).unwrap();
    proxy.admin_ok(
        "POST",
        "/apps/shop/rollout",
        Some(json!({"version": "v2", "blue_green": true})),
    );
    let (ended, took) = client.join().unwrap();
    assert_eq!(
        ended,
        Ok(true),
        "the stalled body ends in an error, not in more data or a wait (after {took:?})"
    );
    assert!(
        took < Duration::from_secs(2),
        "cancelled at the drain timeout: {took:?}"
    );
    let metrics = proxy.metrics();
    assert!(
        metrics.contains(
            "hemiron_proxy_drain_cancelled_requests_total{app=\"shop\",version=\"v1\"} 1"
        ),
        "{metrics}"
    );
    let http = reqwest::blocking::Client::new();
    let r = http.get(proxy.url("/after")).send().unwrap();
    assert_eq!(r.headers()["x-upstream"], "v2");
}

/// An upstream that speaks HTTP/2 only (prior knowledge, like a gRPC server), answering the
/// protocol and hosts each request came with; it keeps the bytes of every connection, to
/// read the frames the proxy sent on it.
struct H2cUpstream {
    addr: String,
    connections: Arc<std::sync::Mutex<Vec<Received>>>,
    closed: Arc<AtomicU64>,
}

/// What one connection received.
type Received = Arc<std::sync::Mutex<Vec<u8>>>;

/// A connection that records what it reads.
struct Recording {
    inner: tokio::net::TcpStream,
    log: Received,
}

impl tokio::io::AsyncRead for Recording {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let new = buf.filled()[before..].to_vec();
        self.log.lock().unwrap().extend_from_slice(&new);
        polled
    }
}

impl tokio::io::AsyncWrite for Recording {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn h2c_upstream(rt: &tokio::runtime::Runtime) -> H2cUpstream {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(std::sync::Mutex::new(Vec::new()));
    let closed = Arc::new(AtomicU64::new(0));
    let (conns, ends) = (connections.clone(), closed.clone());
    rt.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = Arc::new(std::sync::Mutex::new(Vec::new()));
            conns.lock().unwrap().push(log.clone());
            let ends = ends.clone();
            let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| {
                let text = format!(
                    "h2c {:?} host={:?} forwarded-host={:?} te={:?}",
                    req.version(),
                    req.headers().get("host"),
                    req.headers().get("x-forwarded-host"),
                    req.headers().get("te"),
                );
                async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from(text)),
                    ))
                }
            });
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(Recording { inner: stream, log }),
                            svc,
                        )
                        .await;
                ends.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    H2cUpstream {
        addr,
        connections,
        closed,
    }
}

/// An app `grpc` (paths `/grpc`) whose one version `g1` speaks HTTP/2 to `endpoint`.
fn grpc_app(endpoint: &str) -> String {
    format!(
        "[apps.grpc]\npaths = [\"/grpc\"]\nstable = \"g1\"\n[apps.grpc.analysis]\nenabled = false\n[apps.grpc.versions.g1]\nendpoints = [\"{endpoint}\"]\nprotocol = \"h2c\"\n"
    )
}

/// The types of the HTTP/2 frames a client sent on a connection (after its preface).
fn frame_types(bytes: &[u8]) -> Vec<u8> {
    let mut rest = bytes
        .strip_prefix(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    let mut types = Vec::new();
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        types.push(rest[3]);
        rest = &rest[(9 + len).min(rest.len())..];
    }
    types
}

/// A version with `protocol = "h2c"`: health checks and the requests of HTTP/1.1 and HTTP/2
/// clients reach it over HTTP/2, multiplexed on a pooled connection; when it drains, that
/// connection ends with GOAWAY.
#[test]
fn an_h2c_version_gets_http2_and_its_drain_sends_goaway() {
    const GOAWAY: u8 = 0x7;
    let rt = runtime();
    let a = upstream(&rt, "v1");
    let b = h2c_upstream(&rt);
    let dir = tempdir();
    // Active checks too, in the version's protocol (once: the first round before listening).
    let checks = "[apps.shop.analysis]\nenabled = false\n[apps.shop.health]\npath = \"/healthz\"\ninterval = \"60s\"\n";
    let blog = upstream(&rt, "blog");
    let text = config(&[("v1", &[&a])], checks)
        + &format!(
            "[apps.shop.versions.v2]\nendpoints = [\"{}\"]\nprotocol = \"h2c\"\n[apps.blog]\npaths = [\"/blog\"]\nstable = \"b1\"\n[apps.blog.analysis]\nenabled = false\n[apps.blog.versions.b1]\nendpoints = [\"{}\"]\n",
            b.addr,
            blog.address()
        );
    let proxy = Proxy::start(dir.path(), &text);
    let http = reqwest::blocking::Client::new();
    let h2c = reqwest::blocking::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // The HTTP/1.1 version of the app is served as before.
    let r = http.get(proxy.url("/")).send().unwrap();
    assert_eq!(r.headers()["x-upstream"], "v1");
    proxy.admin_ok(
        "POST",
        "/apps/shop/rollout",
        Some(json!({"version": "v2", "blue_green": true})),
    );
    for client in [&http, &h2c, &http] {
        for _ in 0..5 {
            let r = client.get(proxy.url("/x")).send().unwrap();
            assert_eq!(r.status(), 200);
            let body = r.text().unwrap();
            assert!(
                body.starts_with("h2c HTTP/2.0 host=None forwarded-host=Some("),
                "{body}"
            );
        }
    }
    // gRPC's `te: trailers` goes through (every other TE is hop-by-hop).
    let body = http
        .get(proxy.url("/grpc"))
        .header("te", "trailers")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(body.ends_with("te=Some(\"trailers\")"), "{body}");
    // HTTP/2 has no Upgrade: a WebSocket handshake to this version is refused, clearly.
    let r = http
        .get(proxy.url("/ws"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .unwrap();
    assert_eq!(r.status(), 501);
    // One connection, pipelined: a request the fast path serves (an HTTP/1.1-only app), then
    // one for this app, which hands the connection to hyper with the bytes already read.
    let out = raw_exchange(
        proxy.data,
        &[b"GET /blog/a HTTP/1.1\r\nHost: t\r\n\r\nGET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"],
        Duration::ZERO,
    );
    let (first, second) = out
        .split_once("\r\n\r\nblog ")
        .unwrap_or_else(|| panic!("{out}"));
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(
        second.contains("HTTP/1.1 200 OK\r\n") && second.ends_with("te=None"),
        "{out}"
    );
    assert!(second.contains("h2c HTTP/2.0 host=None"), "{out}");
    let healthy = format!(
        "hemiron_proxy_endpoint_healthy{{app=\"shop\",version=\"v2\",endpoint=\"{}\"}} 1",
        b.addr
    );
    wait_for(
        "v2's endpoint exported healthy",
        Duration::from_secs(5),
        || proxy.metrics().contains(&healthy).then_some(()),
    );
    // The check's connection and the pooled one the 15 requests shared.
    let opened = b.connections.lock().unwrap().len();
    assert!(opened <= 3, "pooled and multiplexed: {opened} connections");
    // Back to v1: v2 drains, and its idle HTTP/2 connection is closed with GOAWAY.
    proxy.admin_ok("POST", "/apps/shop/rollback", None);
    wait_for(
        "the drained connections to end",
        Duration::from_secs(10),
        || (b.closed.load(Ordering::SeqCst) == opened as u64).then_some(()),
    );
    for log in b.connections.lock().unwrap().iter() {
        let types = frame_types(&log.lock().unwrap());
        eprintln!("frames from the proxy: {types:?}");
        assert!(types.contains(&GOAWAY), "no GOAWAY among {types:?}");
    }
    // A reload that changes the protocol checks the endpoint afresh (in HTTP/1.1 this
    // HTTP/2-only server fails), instead of keeping its health until the next check is due
    // a minute later.
    let text = std::fs::read_to_string(&proxy.config).unwrap();
    let http1 = text.replace("protocol = \"h2c\"\n", "");
    assert_ne!(http1, text);
    std::fs::write(&proxy.config, &http1).unwrap();
    proxy.admin_ok("POST", "/reload", None);
    let unhealthy = healthy.replace("} 1", "} 0");
    wait_for(
        "v2's endpoint checked afresh in HTTP/1.1",
        Duration::from_secs(5),
        || proxy.metrics().contains(&unhealthy).then_some(()),
    );
    let r = http.get(proxy.url("/")).send().unwrap();
    assert_eq!(r.headers()["x-upstream"], "v1");
}

/// A request on a keep-alive connection in the stop's grace period, for an app the fast path
/// hands to hyper (one with an HTTP/2 version), is answered, not dropped with the connection.
#[test]
fn a_request_handed_to_hyper_while_stopping_is_answered() {
    use std::io::{Read, Write};
    let rt = runtime();
    let a = upstream(&rt, "v1");
    let g = h2c_upstream(&rt);
    let dir = tempdir();
    let text =
        config(&[("v1", &[&a])], "[apps.shop.analysis]\nenabled = false\n") + &grpc_app(&g.addr);
    let mut proxy = Proxy::start(dir.path(), &text);
    let mut s = std::net::TcpStream::connect(proxy.data).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A first request the fast path serves; the connection stays open.
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("xff=") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let mut child = proxy.take_child().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(b"GET /grpc/x HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 200 OK\r\n") && out.contains("h2c HTTP/2.0"),
        "{out}"
    );
    common::proxy::terminate(&mut child);
}
