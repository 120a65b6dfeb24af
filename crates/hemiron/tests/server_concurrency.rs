#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Quotas hold under concurrency: N parallel creates against a quota of M < N VPSes give
//! exactly M successes, on SQLite and on PostgreSQL, and the tenant's usage is exactly M.

mod common;

use common::control::{seed_placeable, store_url, Backend, Server, BACKENDS};
use serde_json::json;

const N: usize = 24;
const M: i64 = 7;

#[test]
fn parallel_creates_never_overrun_the_quota() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let url = store_url(backend, dir.path());
        let tenant = seed_placeable(&url, M);
        let database = (backend == Backend::Postgres).then_some(url);
        let server = Server::start_in(dir, database, backend, &["--workers", "0"]);
        let admin = server.admin();
        admin
            .post("/users", &json!({"username": "m", "password": "member-password-1", "role": "member", "tenant_id": tenant}))
            .expect(201);
        let member = server.login("m", "member-password-1");
        let statuses: Vec<(u16, String)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..N)
                .map(|i| {
                    let c = member.clone();
                    s.spawn(move || {
                        let r = c.post(
                            "/vps",
                            &json!({"name": format!("v{i}"), "plan": "small", "template": "guest",
                                    "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA x"]}),
                        );
                        (
                            r.status,
                            r.body["type"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok = statuses.iter().filter(|(s, _)| *s == 201).count();
        let refused = statuses
            .iter()
            .filter(|(s, t)| *s == 409 && t == "/problems/quota-exceeded")
            .count();
        assert_eq!(
            (ok, refused),
            (M as usize, N - M as usize),
            "{backend:?}: {statuses:?}"
        );
        let t = member.get(&format!("/tenants/{tenant}")).expect(200);
        assert_eq!(t["used"]["vms"], M, "{backend:?}");
        assert_eq!(t["used"]["vcpus"], M, "{backend:?}");
        let listed = member.get("/vps?limit=100").expect(200);
        assert_eq!(listed["items"].as_array().unwrap().len(), M as usize);
        let nodes = admin.get("/nodes").expect(200);
        assert_eq!(nodes[0]["reserved_vcpus"], M, "{backend:?}");
    }
}
