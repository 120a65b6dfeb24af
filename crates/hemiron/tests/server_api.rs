#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The control plane's identity, tenancy and HTTP conventions, through the real binary, on
//! SQLite and on PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::control::{Backend, Client, Reply, Server, ADMIN_PASSWORD, BACKENDS};
use serde_json::{json, Value};

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn totp_code(secret: &str, at: u64) -> String {
    hemiron_server::identity::crypto::totp::code(secret, at).unwrap()
}

fn make_tenant(admin: &Client, name: &str) -> Value {
    admin
        .post(
            "/tenants",
            &json!({"name": name, "quota": {"vcpus": 8, "memory_mib": 8192, "disk_gib": 100, "vms": 4}}),
        )
        .expect(201)
}

fn make_user(admin: &Client, name: &str, role: &str, tenant: Option<&str>) -> Value {
    let mut body =
        json!({"username": name, "password": format!("{name}-password-1"), "role": role});
    if let Some(t) = tenant {
        body["tenant_id"] = json!(t);
    }
    admin.post("/users", &body).expect(201)
}

#[test]
fn login_sessions_and_csrf() {
    for backend in BACKENDS {
        let server = Server::start(backend);
        let anon = server.anon();

        // Everything but login, health and the documents needs credentials.
        anon.get("/auth/me").problem(401, "unauthenticated");
        anon.get("/users").problem(401, "unauthenticated");
        anon.get("/no/such/thing").problem(401, "unauthenticated");
        assert_eq!(anon.get("/healthz").status, 200);
        assert_eq!(anon.get("/openapi.json").status, 200);
        assert_eq!(anon.get("/docs").status, 200);

        // Wrong password and unknown user: the same 401.
        let wrong = anon.post(
            "/auth/login",
            &json!({"username": "admin", "password": "nope"}),
        );
        wrong.problem(401, "invalid-credentials");
        let unknown = anon.post(
            "/auth/login",
            &json!({"username": "ghost", "password": "nope"}),
        );
        unknown.problem(401, "invalid-credentials");
        assert_eq!(wrong.body["detail"], unknown.body["detail"]);
        anon.post("/auth/login", &json!({"username": "admin"}))
            .problem(400, "bad-request");

        let ok = anon.post(
            "/auth/login",
            &json!({"username": "admin", "password": ADMIN_PASSWORD}),
        );
        assert_eq!(ok.status, 200, "{}", ok.body);
        let token = ok.body["token"].as_str().unwrap().to_string();
        assert!(ok.body["expires_at"].as_str().unwrap().ends_with('Z'));
        let cookies: Vec<String> = ok
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        let session = cookies
            .iter()
            .find(|c| c.starts_with("hemiron_session="))
            .expect("session cookie");
        assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict"));
        assert!(!session.contains("Secure"), "plain HTTP: no Secure flag");
        let csrf = ok.body["csrf_token"].as_str().unwrap();

        // Cookie authentication: reads work; mutations need the CSRF header.
        let cookie = format!("hemiron_session={token}");
        let me = anon.send("GET", "/auth/me", None, &[("cookie", &cookie)]);
        assert_eq!(me.status, 200, "{}", me.body);
        assert_eq!(me.body["user"]["username"], "admin");
        let body = json!({"name": "t1", "quota": {"vcpus": 1, "memory_mib": 512, "disk_gib": 5, "vms": 1}});
        anon.send("POST", "/tenants", Some(&body), &[("cookie", &cookie)])
            .problem(403, "csrf");
        anon.send(
            "POST",
            "/tenants",
            Some(&body),
            &[("cookie", &cookie), ("x-csrf-token", "wrong")],
        )
        .problem(403, "csrf");
        let r = anon.send(
            "POST",
            "/tenants",
            Some(&body),
            &[("cookie", &cookie), ("x-csrf-token", csrf)],
        );
        assert_eq!(r.status, 201, "{}", r.body);

        // The session token works as a bearer token; logout ends it.
        let bearer = anon.with_token(&token);
        bearer.get("/auth/me").expect(200);
        assert_eq!(bearer.post("/auth/logout", &json!({})).status, 204);
        bearer.get("/auth/me").problem(401, "unauthenticated");
        anon.send("GET", "/auth/me", None, &[("cookie", &cookie)])
            .problem(401, "unauthenticated");
    }
}

#[test]
fn unknown_users_take_as_long_to_refuse() {
    let server = Server::start(Backend::Sqlite);
    let anon = server.anon();
    let time = |user: &str| {
        let times: Vec<Duration> = (0..5)
            .map(|i| {
                let t = Instant::now();
                let r = anon.post(
                    "/auth/login",
                    &json!({"username": format!("{user}"), "password": format!("wrong-{i}")}),
                );
                assert_eq!(r.status, 401);
                t.elapsed()
            })
            .collect();
        // The fastest of five: other tests running at once only ever add time.
        times.into_iter().min().unwrap()
    };
    let known = time("admin");
    let unknown = time("nobody-here");
    // Both pay one argon2id verification (tens of milliseconds); a short cut for unknown
    // users would answer in about one.
    assert!(
        unknown * 3 > known && known * 3 > unknown,
        "known user {known:?}, unknown user {unknown:?}"
    );
}

#[test]
fn failed_logins_are_limited_per_account_and_per_client() {
    let server = Server::start(Backend::Postgres);
    let anon = server.anon();
    let token = server
        .admin()
        .post("/tokens", &json!({"name": "audit"}))
        .expect(201);
    let admin = anon.with_token(token["secret"].as_str().unwrap());
    for _ in 0..5 {
        anon.post(
            "/auth/login",
            &json!({"username": "admin", "password": "bad"}),
        )
        .problem(401, "invalid-credentials");
    }
    // Now even the right password is refused for a while.
    let r = anon.post(
        "/auth/login",
        &json!({"username": "admin", "password": ADMIN_PASSWORD}),
    );
    r.problem(429, "too-many-attempts");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry), "Retry-After {retry}");

    // 20 failures from one client within a minute, whatever the accounts.
    for i in 0..15 {
        anon.post(
            "/auth/login",
            &json!({"username": format!("user{i}"), "password": "bad"}),
        )
        .problem(401, "invalid-credentials");
    }
    let r = anon.post(
        "/auth/login",
        &json!({"username": "other", "password": "bad"}),
    );
    r.problem(429, "too-many-attempts");
    assert!(r.header("retry-after").is_some());

    // The audit log has the 20 failures, with the client address (read with a token: the
    // limits apply to logins only).
    let log = admin.get("/audit?limit=500").expect(200);
    let denied = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "auth.login" && r["result"] == "denied")
        .inspect(|r| assert_eq!(r["client"], "127.0.0.1"))
        .count();
    assert_eq!(denied, 20);
}

#[test]
fn totp_enrollment_replay_and_recovery_codes() {
    for backend in BACKENDS {
        let server = Server::start(backend);
        let admin = server.admin();
        make_user(&admin, "alice", "admin", None);
        let alice = server.login("alice", "alice-password-1");

        alice
            .post("/auth/mfa/totp", &json!({"password": "wrong"}))
            .problem(422, "invalid-request");
        let enroll = alice
            .post("/auth/mfa/totp", &json!({"password": "alice-password-1"}))
            .expect(200);
        let secret = enroll["secret"].as_str().unwrap().to_string();
        assert!(enroll["otpauth_url"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/"));
        // Not enabled until confirmed.
        server.login("alice", "alice-password-1");
        alice
            .post("/auth/mfa/totp/confirm", &json!({"code": "000000"}))
            .problem(422, "invalid-request");
        let step = now_secs() / 30;
        let confirm = alice
            .post(
                "/auth/mfa/totp/confirm",
                &json!({"code": totp_code(&secret, step * 30)}),
            )
            .expect(200);
        let codes: Vec<String> = confirm["recovery_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        assert_eq!(codes.len(), 10);

        let anon = server.anon();
        let r = anon.post(
            "/auth/login",
            &json!({"username": "alice", "password": "alice-password-1"}),
        );
        r.problem(401, "mfa-required");
        // The code used for confirmation is spent; the next step's code works, once.
        let next = totp_code(&secret, (step + 1) * 30);
        let login = |code: &str| {
            anon.post(
                "/auth/login",
                &json!({"username": "alice", "password": "alice-password-1", "totp": code}),
            )
        };
        login(&totp_code(&secret, step * 30)).problem(401, "invalid-credentials");
        assert_eq!(login(&next).status, 200);
        login(&next).problem(401, "invalid-credentials");
        // A recovery code works once, typed in any case.
        assert_eq!(login(&codes[0].to_uppercase()).status, 200);
        login(&codes[0]).problem(401, "invalid-credentials");
        let me = server
            .anon()
            .with_token(login(&codes[1]).expect(200)["token"].as_str().unwrap())
            .get("/auth/me")
            .expect(200);
        assert_eq!(me["user"]["mfa_enabled"], true);
        assert_eq!(me["recovery_codes_left"], 8);

        // The audit log has the MFA changes and the refusals.
        let log = admin.get("/audit?limit=500").expect(200);
        let actions: Vec<(String, String)> = log["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["action"].as_str().unwrap().to_string(),
                    r["result"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        for want in [
            ("auth.mfa.enroll", "ok"),
            ("auth.mfa.enable", "ok"),
            ("auth.login", "mfa-required"),
            ("auth.login", "denied"),
            ("auth.login", "ok"),
            ("user.create", "ok"),
        ] {
            assert!(
                actions.contains(&(want.0.to_string(), want.1.to_string())),
                "{want:?} missing from {actions:?}"
            );
        }

        // Disabling needs the password and a code.
        alice
            .send(
                "DELETE",
                "/auth/mfa/totp",
                Some(&json!({"password": "alice-password-1", "code": codes[2]})),
                &[],
            )
            .expect(204);
        assert_eq!(
            anon.post(
                "/auth/login",
                &json!({"username": "alice", "password": "alice-password-1"})
            )
            .status,
            200
        );
    }
}

#[test]
fn api_tokens_are_scoped_expiring_and_revocable() {
    for backend in BACKENDS {
        let server = Server::start(backend);
        let admin = server.admin();
        let created = admin
            .post(
                "/tokens",
                &json!({"name": "ci", "scopes": "read:tenants read:users", "expires_in_days": 7}),
            )
            .expect(201);
        let secret = created["secret"].as_str().unwrap();
        // 256 random bits, URL-safe base64, after the prefix.
        assert!(
            secret.starts_with("hmt_") && secret.len() == 4 + 43,
            "{secret}"
        );
        assert_eq!(created["scopes"], "read:tenants read:users");
        assert!(created["expires_at"].is_string());
        let id = created["id"].as_str().unwrap();

        let ci = admin.with_token(secret);
        ci.get("/tenants").expect(200);
        ci.get("/users").expect(200);
        ci.get("/plans").problem(403, "forbidden");
        ci.post(
            "/tenants",
            &json!({"name": "x", "quota": {"vcpus": 1, "memory_mib": 1, "disk_gib": 1, "vms": 1}}),
        )
        .problem(403, "forbidden");
        // A token cannot mint a broader one.
        ci.post("/tokens", &json!({"name": "more", "scopes": "*"}))
            .problem(403, "forbidden");
        assert_eq!(ci.get("/auth/me").expect(200)["via"], "token");

        admin
            .post(
                "/tokens",
                &json!({"name": "bad", "scopes": "read:everything"}),
            )
            .problem(422, "invalid-request");
        admin
            .post("/tokens", &json!({"name": "bad", "expires_in_days": 0}))
            .problem(422, "invalid-request");

        // The stored form is a SHA-256, never the secret.
        let listed = admin.get("/tokens").expect(200);
        assert!(!listed.to_string().contains(secret));

        let t = admin.get(&format!("/tokens/{id}"));
        let etag = t.etag();
        admin
            .send("DELETE", &format!("/tokens/{id}"), None, &[])
            .problem(428, "if-match-required");
        admin.delete(&format!("/tokens/{id}"), &etag).expect(204);
        ci.get("/tenants").problem(401, "unauthenticated");
        admin
            .delete(&format!("/tokens/{id}"), "\"2\"")
            .problem(409, "conflict");
    }
}

#[test]
fn etags_if_match_and_idempotency_keys() {
    for backend in BACKENDS {
        let server = Server::start(backend);
        let admin = server.admin();
        let t = make_tenant(&admin, "acme");
        let path = format!("/tenants/{}", t["id"].as_str().unwrap());
        let got = admin.get(&path);
        assert_eq!(got.etag(), "\"1\"");

        let change = json!({"quota": {"vcpus": 16, "memory_mib": 8192, "disk_gib": 100, "vms": 4}});
        admin
            .send("PATCH", &path, Some(&change), &[])
            .problem(428, "if-match-required");
        admin
            .patch(&path, "W/\"1\"", &change)
            .problem(412, "stale-version");
        let r = admin.patch(&path, "\"1\"", &change);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.etag(), "\"2\"");
        assert_eq!(r.body["quota"]["vcpus"], 16);
        let stale = admin.patch(&path, "\"1\"", &change);
        stale.problem(412, "stale-version");
        assert_eq!(stale.body["current_version"], 2);
        admin.delete(&path, "\"1\"").problem(412, "stale-version");

        // Idempotency-Key: a replay returns the first answer and makes nothing new.
        let body = json!({"name": "small", "vcpus": 1, "memory_mib": 512, "disk_gib": 10});
        let first = admin.send("POST", "/plans", Some(&body), &[("idempotency-key", "k-1")]);
        assert_eq!(first.status, 201, "{}", first.body);
        let again = admin.send("POST", "/plans", Some(&body), &[("idempotency-key", "k-1")]);
        assert_eq!(again.status, 201);
        assert_eq!(again.body, first.body);
        assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"));
        let other = json!({"name": "large", "vcpus": 4, "memory_mib": 4096, "disk_gib": 80});
        admin
            .send(
                "POST",
                "/plans",
                Some(&other),
                &[("idempotency-key", "k-1")],
            )
            .problem(422, "idempotency-key-reused");
        assert_eq!(
            admin.get("/plans").expect(200)["items"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        // Keys belong to their principal: another user's same key is a new request.
        make_user(&admin, "root2", "admin", None);
        let root2 = server.login("root2", "root2-password-1");
        let r = root2.send(
            "POST",
            "/plans",
            Some(&other),
            &[("idempotency-key", "k-1")],
        );
        assert_eq!(r.status, 201, "{}", r.body);
        // Errors that are the client's are kept too; a duplicate name stays a 409.
        let dup = admin.send(
            "POST",
            "/plans",
            Some(&other),
            &[("idempotency-key", "k-2")],
        );
        dup.problem(409, "conflict");
        let dup2 = admin.send(
            "POST",
            "/plans",
            Some(&other),
            &[("idempotency-key", "k-2")],
        );
        assert_eq!(dup2.status, 409);
    }
}

#[test]
fn pagination_walks_every_item_once() {
    let server = Server::start(Backend::Sqlite);
    let admin = server.admin();
    for i in 0..7 {
        make_tenant(&admin, &format!("t{i}"));
    }
    let mut seen = Vec::new();
    let mut path = "/tenants?limit=3".to_string();
    loop {
        let page = admin.get(&path).expect(200);
        for t in page["items"].as_array().unwrap() {
            seen.push(t["name"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/tenants?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|i| format!("t{i}")).collect::<Vec<_>>());
    admin.get("/tenants?limit=0").problem(400, "bad-request");
    admin
        .get("/tenants?cursor=garbage!")
        .problem(400, "bad-request");
}

#[test]
fn a_second_server_on_one_sqlite_file_refuses_to_start() {
    let server = Server::start(Backend::Sqlite);
    let out = std::process::Command::new(common::hemiron())
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(server.dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another server is using"), "{err}");
    // The first one still serves.
    server.admin().get("/auth/me").expect(200);
}

#[test]
fn the_served_openapi_document_is_the_committed_one() {
    let server = Server::start(Backend::Sqlite);
    let served = server.anon().get("/openapi.json").expect(200);
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../hemiron-server/openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(served, committed);
    assert_eq!(served["openapi"], "3.1.0");
    let metrics = server.anon().get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .body
        .as_str()
        .unwrap()
        .contains("hemiron_server_http_requests_total"));
}

/// Reply helper for tables: the status only.
fn status(r: Reply) -> u16 {
    r.status
}

#[test]
fn users_are_kept_within_their_tenant_and_role() {
    for backend in BACKENDS {
        let server = Server::start(backend);
        let admin = server.admin();
        let a = make_tenant(&admin, "a");
        let b = make_tenant(&admin, "b");
        let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
        make_user(&admin, "owner-a", "owner", Some(a_id));
        let member_b = make_user(&admin, "member-b", "member", Some(b_id));
        let owner = server.login("owner-a", "owner-a-password-1");

        // An owner makes users in their own tenant, tenant roles only.
        let made = owner.post(
            "/users",
            &json!({"username": "viewer-a", "password": "viewer-a-password-1", "role": "viewer", "tenant_id": a_id}),
        );
        assert_eq!(made.status, 201, "{}", made.body);
        owner
            .post(
                "/users",
                &json!({"username": "x1", "password": "x1-password-12", "role": "admin"}),
            )
            .problem(403, "forbidden");
        owner
            .post("/users", &json!({"username": "x2", "password": "x2-password-12", "role": "member", "tenant_id": b_id}))
            .problem(404, "not-found");
        // Another tenant's user is invisible.
        let other = format!("/users/{}", member_b["id"].as_str().unwrap());
        owner.get(&other).problem(404, "not-found");
        owner.delete(&other, "\"1\"").problem(404, "not-found");
        owner
            .get(&format!("/tenants/{b_id}"))
            .problem(404, "not-found");
        let listed = owner.get("/users").expect(200);
        let names: Vec<&str> = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["username"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["owner-a", "viewer-a"]);
        // The listing of someone asking for another tenant still shows only their own.
        let listed = owner.get(&format!("/users?tenant_id={b_id}")).expect(200);
        assert_eq!(listed["items"].as_array().unwrap().len(), 2);

        // Disabling a user ends their sessions; the last admin stays.
        let viewer = server.login("viewer-a", "viewer-a-password-1");
        let vid = made.body["id"].as_str().unwrap();
        let etag = owner.get(&format!("/users/{vid}")).etag();
        owner
            .patch(&format!("/users/{vid}"), &etag, &json!({"disabled": true}))
            .expect(200);
        viewer.get("/auth/me").problem(401, "unauthenticated");
        let admin_id = admin.get("/auth/me").expect(200)["user"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let etag = admin.get(&format!("/users/{admin_id}")).etag();
        admin
            .patch(
                &format!("/users/{admin_id}"),
                &etag,
                &json!({"role": "operator"}),
            )
            .problem(409, "conflict");
        assert_eq!(
            status(admin.delete(&format!("/users/{admin_id}"), &etag)),
            409
        );

        // Bad input names every bad field.
        let r = admin.post(
            "/users",
            &json!({"username": "Bad Name", "password": "short", "role": "member"}),
        );
        r.problem(422, "invalid-request");
        let fields = r.body["errors"].as_object().unwrap();
        for f in ["username", "password", "tenant_id"] {
            assert!(fields.contains_key(f), "{f} missing in {fields:?}");
        }
    }
}

#[test]
fn tls_serves_https_and_marks_cookies_secure() {
    let server = Server::start_with_args(Backend::Sqlite, &["--tls"]);
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let ok = server.anon().post(
        "/auth/login",
        &json!({"username": "admin", "password": ADMIN_PASSWORD}),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let cookies: Vec<String> = ok
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        cookies.iter().all(|c| c.contains("; Secure")),
        "{cookies:?}"
    );
    // Plain HTTP on that port is no API.
    let plain = reqwest::blocking::get(server.url.replace("https://", "http://") + "/healthz");
    assert!(plain.map(|r| r.status().as_u16() != 200).unwrap_or(true));
}

#[test]
fn expired_tokens_are_refused() {
    use hemiron_server::identity::crypto::sha256_hex;
    use hemiron_server::store::identity::{self as store, TokenRow};
    let server = Server::start(Backend::Postgres);
    let me = server.admin().get("/auth/me").expect(200);
    let user_id = me["user"]["id"].as_str().unwrap().to_string();
    // A token that expired a second ago, written straight into the store.
    let secret = "hmt_expired-token-for-the-test-0123456789abcdef";
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = hemiron_server::store::Db::open(server.database.as_deref().unwrap())
            .await
            .unwrap();
        let now = hemiron_server::store::now_ms();
        let mut tx = db.begin().await.unwrap();
        let t = TokenRow {
            id: "expired".into(),
            user_id,
            name: "old".into(),
            token_hash: sha256_hex(secret),
            scopes: "*".into(),
            expires_at: Some(now - 1000),
            revoked_at: None,
            last_used_at: None,
            version: 1,
            created_at: now - 10_000,
        };
        store::insert_token(&mut tx, &t).await.unwrap();
        tx.commit().await.unwrap();
        db.close().await;
    });
    server
        .anon()
        .with_token(secret)
        .get("/auth/me")
        .problem(401, "unauthenticated");
}
