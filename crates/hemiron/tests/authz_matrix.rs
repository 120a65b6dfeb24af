#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The authorization matrix: every operation of the served OpenAPI document, by every role,
//! on an object of the caller's own tenant and of another tenant, gives exactly the status
//! the table below expects; and every operation but login refuses anonymous calls with 401.
//! An operation missing from the table fails the test, so new endpoints must be added here.
//!
//! Objects a case changes (users, tokens, VPSes…) are made fresh for that case. VPSes and
//! their jobs are written into the store before the server starts (no cluster is needed:
//! the server runs without job workers, so queued jobs stay queued).

mod common;

use std::collections::BTreeMap;

use common::control::{Backend, Client, Server, BACKENDS};
use common::rows;
use hemiron_server::store::backups as backupstore;
use hemiron_server::store::fleet::{self, TemplateRow};
use hemiron_server::store::jobs as jobstore;
use hemiron_server::store::tenancy;
use hemiron_server::store::{now_ms, Db};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Admin,
    Operator,
    Owner,
    Member,
    Viewer,
}

const ROLES: [Role; 5] = [
    Role::Admin,
    Role::Operator,
    Role::Owner,
    Role::Member,
    Role::Viewer,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    Own,
    Other,
}

/// The expected status of `op` for `role` on an object of `scope`.
fn expected(op: &str, role: Role, scope: Scope) -> Option<u16> {
    use Role::*;
    use Scope::*;
    let platform = matches!(role, Admin | Operator);
    // Tenant objects: invisible to tenant roles of another tenant.
    let tenant_obj = |allowed: bool, ok: u16| -> u16 {
        if !platform && scope == Other {
            404
        } else if allowed {
            ok
        } else {
            403
        }
    };
    Some(match op {
        "POST /auth/login" => 200,
        "POST /auth/logout" => 204,
        "GET /auth/me" => 200,
        "POST /auth/mfa/totp" => 200,
        // Enrollment (the operation before it) is in progress; the code is wrong.
        "POST /auth/mfa/totp/confirm" => 422,
        "DELETE /auth/mfa/totp" => 409,
        "POST /auth/mfa/recovery-codes" => 409,

        "GET /users" => {
            if role == Operator {
                403
            } else {
                200
            }
        }
        "POST /users" => tenant_obj(matches!(role, Admin | Owner), 201),
        "GET /users/{id}" => tenant_obj(role != Operator, 200),
        "PATCH /users/{id}" => tenant_obj(matches!(role, Admin | Owner), 200),
        "DELETE /users/{id}" => tenant_obj(matches!(role, Admin | Owner), 204),

        "GET /tokens" => 200,
        "POST /tokens" => 201,
        "GET /tokens/{id}" => tenant_obj(matches!(role, Admin | Owner), 200),
        "DELETE /tokens/{id}" => tenant_obj(matches!(role, Admin | Owner), 204),

        "GET /tenants" => 200,
        "POST /tenants" => {
            if role == Admin {
                201
            } else {
                403
            }
        }
        "GET /tenants/{id}" => tenant_obj(true, 200),
        // The tenant has users: an admin's delete is refused as a conflict.
        "PATCH /tenants/{id}" => tenant_obj(role == Admin, 200),
        "DELETE /tenants/{id}" => tenant_obj(role == Admin, 409),

        "GET /plans" | "GET /plans/{id}" => 200,
        "POST /plans" => {
            if role == Admin {
                201
            } else {
                403
            }
        }
        "PATCH /plans/{id}" => {
            if role == Admin {
                200
            } else {
                403
            }
        }
        "DELETE /plans/{id}" => {
            if role == Admin {
                204
            } else {
                403
            }
        }

        "GET /audit" => {
            if matches!(role, Admin | Owner) {
                200
            } else {
                403
            }
        }

        "GET /clusters" | "GET /clusters/{id}" | "GET /nodes" => {
            if platform {
                200
            } else {
                403
            }
        }
        // The endpoint does not answer: refused as invalid, after the role check.
        "POST /clusters" => {
            if platform {
                422
            } else {
                403
            }
        }
        "DELETE /clusters/{id}" => {
            if platform {
                204
            } else {
                403
            }
        }
        "POST /clusters/{id}/refresh" => {
            if platform {
                200
            } else {
                403
            }
        }
        "POST /nodes/{id}/maintenance" => {
            if platform {
                200
            } else {
                403
            }
        }

        // A node that does not exist (a real drain would empty the fixture's node): found
        // missing only after the role check.
        "POST /nodes/{id}/drain" => {
            if platform {
                404
            } else {
                403
            }
        }
        "POST /rebalance" => {
            if platform {
                200
            } else {
                403
            }
        }

        "GET /templates" => 200,
        "GET /vps" => 200,
        "POST /vps" => tenant_obj(role != Viewer, 201),
        "GET /vps/{id}" | "GET /vps/{id}/events" => tenant_obj(true, 200),
        "PATCH /vps/{id}" | "DELETE /vps/{id}" | "POST /vps/{id}/{action}" => {
            tenant_obj(role != Viewer, 202)
        }
        // Operators move VPSes; the fixture's VPS still has its create job running.
        "POST /vps/{id}/migrate" => {
            if platform {
                409
            } else {
                403
            }
        }
        "GET /jobs/{id}" => tenant_obj(true, 200),

        "GET /vps/{id}/backups"
        | "GET /vps/{id}/backups/{backup}"
        | "GET /vps/{id}/backup-schedules"
        | "GET /vps/{id}/backup-schedules/{schedule}" => tenant_obj(true, 200),
        "POST /vps/{id}/backups"
        | "DELETE /vps/{id}/backups/{backup}"
        | "POST /vps/{id}/backups/{backup}/restore" => tenant_obj(role != Viewer, 202),
        "POST /vps/{id}/backup-schedules" => tenant_obj(role != Viewer, 201),
        "PATCH /vps/{id}/backup-schedules/{schedule}" => tenant_obj(role != Viewer, 200),
        "DELETE /vps/{id}/backup-schedules/{schedule}" => tenant_obj(role != Viewer, 204),
        _ => return None,
    })
}

/// What a case needs made beforehand, per role and scope.
struct Fixture {
    admin: Client,
    tokens: BTreeMap<Role, Client>,
    /// Tenant ids: (own, other).
    tenants: (String, String),
    passwords: BTreeMap<Role, (String, String)>,
    /// Pre-made VPS ids and job ids, per case key, consumed in order.
    vps: Vec<(String, String)>,
    jobs: Vec<(String, String)>,
    clusters: Vec<String>,
    node_id: String,
}

impl Fixture {
    fn tenant(&self, scope: Scope) -> &str {
        match scope {
            Scope::Own => &self.tenants.0,
            Scope::Other => &self.tenants.1,
        }
    }

    fn take_vps(&mut self, scope: Scope) -> String {
        let t = self.tenant(scope).to_string();
        let i = self
            .vps
            .iter()
            .position(|(tenant, _)| *tenant == t)
            .expect("enough VPSes");
        self.vps.remove(i).1
    }

    fn take_job(&mut self, scope: Scope) -> String {
        let t = self.tenant(scope).to_string();
        let i = self
            .jobs
            .iter()
            .position(|(tenant, _)| *tenant == t)
            .expect("enough jobs");
        self.jobs.remove(i).1
    }

    /// A fresh member user of the scope's tenant; its id.
    fn user(&self, scope: Scope, n: &mut u32) -> String {
        *n += 1;
        let name = format!("target{n}");
        self.admin
            .post(
                "/users",
                &json!({"username": name, "password": "target-password-1", "role": "member", "tenant_id": self.tenant(scope)}),
            )
            .expect(201)["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A fresh token of a fresh member of the scope's tenant; its id.
    fn token(&self, server: &Server, scope: Scope, n: &mut u32) -> String {
        self.user(scope, n);
        let c = server.login(&format!("target{n}"), "target-password-1");
        c.post("/tokens", &json!({"name": "t"})).expect(201)["id"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

const CASES_PER_OP: usize = 10;
const SEEDED_VPS: i64 = (CASES_PER_OP * 20) as i64;

/// Writes tenants, a cluster with a node and a template, and VPSes with jobs into the store.
async fn seed(
    url: &str,
) -> (
    String,
    String,
    Vec<(String, String)>,
    Vec<(String, String)>,
    Vec<String>,
    String,
) {
    let db = Db::open(url).await.unwrap();
    let now = now_ms();
    let mut tx = db.begin().await.unwrap();
    let mut tenants = Vec::new();
    for name in ["own", "other"] {
        // Using what the seeded VPSes use.
        let t = rows::tenant(&format!("tenant-{name}"), name, 1000, SEEDED_VPS);
        tenancy::insert_tenant(&mut tx, &t).await.unwrap();
        tenants.push(t.id);
    }
    let mut clusters = Vec::new();
    for i in 0..CASES_PER_OP + 1 {
        let mut c = rows::cluster(
            &format!("cluster-{i}"),
            &format!("c{i}"),
            "http://127.0.0.1:9",
            "root@pam!x",
            "x",
        );
        c.created_at = now + i64::try_from(i).unwrap();
        fleet::insert_cluster(&mut tx, &c).await.unwrap();
        clusters.push(c.id);
    }
    tx.commit().await.unwrap();
    let node = rows::node("node-0", "cluster-0", "n1", 1000, 1 << 30);
    fleet::upsert_node(&db, &node).await.unwrap();
    let template = TemplateRow {
        id: "cluster-0:9000".into(),
        cluster_id: "cluster-0".into(),
        node: "n1".into(),
        vmid: 9000,
        name: "guest".into(),
        updated_at: now,
    };
    fleet::replace_templates(&db, "cluster-0", &[template])
        .await
        .unwrap();
    let mut vps = Vec::new();
    let mut jobs = Vec::new();
    let mut tx = db.begin().await.unwrap();
    for (t, tenant) in tenants.iter().enumerate() {
        for i in 0..CASES_PER_OP * 20 {
            let vmid = 100 + i64::try_from(i).unwrap();
            let v = rows::vps(
                &format!("vps-{t}-{i}"),
                tenant,
                &format!("seeded{i}"),
                "running",
                vmid,
                now,
            );
            fleet::insert_vps(&mut tx, &v).await.unwrap();
            // Each with a backup made, for the cases on one.
            backupstore::insert_backup(&mut tx, &rows::backup(&v))
                .await
                .unwrap();
            vps.push((tenant.clone(), v.id.clone()));
        }
        for i in 0..CASES_PER_OP {
            let j = rows::job(
                &format!("job-{t}-{i}"),
                "vps.start",
                tenant,
                &format!("vps-{t}-0"),
                "succeeded",
                "\"start\"",
                now,
            );
            jobstore::insert(&mut tx, &j).await.unwrap();
            jobs.push((tenant.clone(), j.id));
        }
    }
    tx.commit().await.unwrap();
    db.close().await;
    drop(db);
    (
        tenants[0].clone(),
        tenants[1].clone(),
        vps,
        jobs,
        clusters,
        node.id,
    )
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Admin => "admin",
        Role::Operator => "operator",
        Role::Owner => "owner",
        Role::Member => "member",
        Role::Viewer => "viewer",
    }
}

fn run_matrix(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = match backend {
        Backend::Sqlite => {
            std::fs::create_dir_all(dir.path().join("data")).unwrap();
            Db::sqlite_url(&dir.path().join("data/hemiron.db"))
        }
        Backend::Postgres => common::control::fresh_postgres(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (own, other, vps, jobs, clusters, node_id) = rt.block_on(seed(&url));
    let database = (backend == Backend::Postgres).then(|| url.clone());
    let server = Server::start_in(dir, database, backend, &["--workers", "0"]);
    let admin = server.admin();
    admin
        .post(
            "/plans",
            &json!({"name": "small", "vcpus": 1, "memory_mib": 128, "disk_gib": 1}),
        )
        .expect(201);
    let mut passwords = BTreeMap::new();
    let mut tokens = BTreeMap::new();
    for role in ROLES {
        let (name, password) = if role == Role::Admin {
            (
                "admin".to_string(),
                common::control::ADMIN_PASSWORD.to_string(),
            )
        } else {
            let name = role_name(role).to_string();
            let password = format!("{name}-password-1");
            let mut body = json!({"username": name, "password": password, "role": name});
            if !matches!(role, Role::Operator) {
                body["tenant_id"] = json!(own);
            }
            admin.post("/users", &body).expect(201);
            (name, password)
        };
        let c = server.login(&name, &password);
        let t = c.post("/tokens", &json!({"name": "matrix"})).expect(201);
        tokens.insert(role, c.with_token(t["secret"].as_str().unwrap()));
        passwords.insert(role, (name, password));
    }
    let mut fx = Fixture {
        admin: admin.clone(),
        tokens,
        tenants: (own, other),
        passwords,
        vps,
        jobs,
        clusters,
        node_id,
    };

    let doc = server.anon().get("/openapi.json").expect(200);
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    let mut n = 0u32;
    let mut plans = 0u32;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let op = format!("{} {path}", method.to_uppercase());
            if expected(&op, Role::Admin, Scope::Own).is_none() {
                missing.push(op);
                continue;
            }
            if op != "POST /auth/login" {
                let anon = server.anon().send(
                    &method.to_uppercase(),
                    &concrete(path),
                    Some(&json!({})),
                    &[],
                );
                if anon.status != 401 {
                    wrong.push(format!("{op} anonymous: got {}", anon.status));
                }
            }
            for role in ROLES {
                for scope in [Scope::Own, Scope::Other] {
                    let want = expected(&op, role, scope).unwrap();
                    let (m, p, body, headers) =
                        request(&mut fx, &server, &op, role, scope, &mut n, &mut plans);
                    let client = if op == "POST /auth/login" {
                        server.anon()
                    } else {
                        fx.tokens[&role].clone()
                    };
                    let hdrs: Vec<(&str, &str)> = headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let got = client.send(&m, &p, body.as_ref(), &hdrs);
                    if got.status != want {
                        wrong.push(format!(
                            "{op} as {role:?} on {scope:?}: want {want}, got {} {}",
                            got.status, got.body
                        ));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "operations missing from the table: {missing:?}"
    );
    assert!(
        wrong.is_empty(),
        "{} wrong answers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// A path with placeholder ids (for anonymous calls).
fn concrete(path: &str) -> String {
    path.replace("{id}", "x")
        .replace("{action}", "start")
        .replace("{backup}", "x")
        .replace("{schedule}", "x")
}

type Request = (String, String, Option<Value>, Vec<(String, String)>);

/// The request a case sends, with fresh objects where it changes them.
fn request(
    fx: &mut Fixture,
    server: &Server,
    op: &str,
    role: Role,
    scope: Scope,
    n: &mut u32,
    plans: &mut u32,
) -> Request {
    let (method, path) = op.split_once(' ').unwrap();
    let m = method.to_string();
    let any = || vec![("if-match".to_string(), "\"1\"".to_string())];
    let tenant = fx.tenant(scope).to_string();
    let r = |p: String, body: Option<Value>, h: Vec<(String, String)>| (m.clone(), p, body, h);
    match op {
        "POST /auth/login" => {
            let (u, pw) = fx.passwords[&role].clone();
            r(
                path.into(),
                Some(json!({"username": u, "password": pw})),
                vec![],
            )
        }
        "POST /auth/mfa/totp" => {
            let pw = fx.passwords[&role].1.clone();
            r(path.into(), Some(json!({"password": pw})), vec![])
        }
        "POST /auth/mfa/totp/confirm" => r(path.into(), Some(json!({"code": "000000"})), vec![]),
        "DELETE /auth/mfa/totp" | "POST /auth/mfa/recovery-codes" => {
            let pw = fx.passwords[&role].1.clone();
            r(
                path.into(),
                Some(json!({"password": pw, "code": "000000"})),
                vec![],
            )
        }
        "POST /users" => {
            *n += 1;
            r(
                path.into(),
                Some(
                    json!({"username": format!("new{n}"), "password": "new-password-12", "role": "viewer", "tenant_id": tenant}),
                ),
                vec![],
            )
        }
        "GET /users/{id}" | "PATCH /users/{id}" | "DELETE /users/{id}" => {
            let id = fx.user(scope, n);
            let body = (method == "PATCH").then(|| json!({"disabled": true}));
            r(path.replace("{id}", &id), body, any())
        }
        "POST /tokens" => r(path.into(), Some(json!({"name": "x"})), vec![]),
        "GET /tokens/{id}" | "DELETE /tokens/{id}" => {
            let id = fx.token(server, scope, n);
            r(path.replace("{id}", &id), None, any())
        }
        "POST /tenants" => {
            *n += 1;
            r(
                path.into(),
                Some(
                    json!({"name": format!("t{n}"), "quota": {"vcpus": 1, "memory_mib": 1, "disk_gib": 1, "vms": 1}}),
                ),
                vec![],
            )
        }
        "GET /tenants/{id}" | "PATCH /tenants/{id}" | "DELETE /tenants/{id}" => {
            let version = fx.admin.get(&format!("/tenants/{tenant}")).etag();
            let body = (method == "PATCH").then(|| json!({"quota": {"vcpus": 1000, "memory_mib": 1073741824, "disk_gib": 100000, "vms": 1000}}));
            r(
                path.replace("{id}", &tenant),
                body,
                vec![("if-match".into(), version)],
            )
        }
        "POST /plans" => {
            *plans += 1;
            r(
                path.into(),
                Some(
                    json!({"name": format!("p{plans}"), "vcpus": 1, "memory_mib": 128, "disk_gib": 1}),
                ),
                vec![],
            )
        }
        "GET /plans/{id}" | "PATCH /plans/{id}" | "DELETE /plans/{id}" => {
            *plans += 1;
            let p = fx
                .admin
                .post("/plans", &json!({"name": format!("q{plans}"), "vcpus": 1, "memory_mib": 128, "disk_gib": 1}))
                .expect(201);
            let body = (method == "PATCH").then(|| json!({"vcpus": 2}));
            r(path.replace("{id}", p["id"].as_str().unwrap()), body, any())
        }
        "POST /clusters" => r(
            path.into(),
            Some(
                json!({"name": "nope", "endpoint": "http://127.0.0.1:9", "token_id": "root@pam!x", "token_secret": "x"}),
            ),
            vec![],
        ),
        "GET /clusters/{id}" | "POST /clusters/{id}/refresh" => {
            r(path.replace("{id}", "cluster-0"), None, vec![])
        }
        "DELETE /clusters/{id}" => {
            // Clusters 1.. host nothing; one each for the cases that may delete.
            let id = fx
                .clusters
                .pop()
                .filter(|c| c != "cluster-0")
                .unwrap_or_else(|| "cluster-1".into());
            r(path.replace("{id}", &id), None, any())
        }
        "POST /nodes/{id}/drain" => r(path.replace("{id}", "no-such-node"), None, vec![]),
        "POST /rebalance" => r(path.into(), Some(json!({"dry_run": true})), vec![]),
        "POST /nodes/{id}/maintenance" => r(
            path.replace("{id}", &fx.node_id),
            Some(json!({"maintenance": false})),
            vec![],
        ),
        "POST /vps" => {
            *n += 1;
            r(
                path.into(),
                Some(
                    json!({"name": format!("v{n}"), "plan": "small", "template": "guest", "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA x"], "tenant_id": tenant}),
                ),
                vec![],
            )
        }
        "GET /vps/{id}"
        | "GET /vps/{id}/events"
        | "PATCH /vps/{id}"
        | "DELETE /vps/{id}"
        | "POST /vps/{id}/{action}"
        | "POST /vps/{id}/migrate" => {
            let id = fx.take_vps(scope);
            let body = match method {
                "PATCH" => Some(json!({"plan": "small"})),
                "POST" if op.ends_with("/migrate") => Some(json!({})),
                _ => None,
            };
            r(
                path.replace("{id}", &id).replace("{action}", "stop"),
                body,
                any(),
            )
        }
        "GET /vps/{id}/backups"
        | "POST /vps/{id}/backups"
        | "GET /vps/{id}/backups/{backup}"
        | "DELETE /vps/{id}/backups/{backup}"
        | "POST /vps/{id}/backups/{backup}/restore"
        | "GET /vps/{id}/backup-schedules"
        | "POST /vps/{id}/backup-schedules" => {
            // The seeded backup is at version 1.
            let id = fx.take_vps(scope);
            let body = match op {
                "POST /vps/{id}/backups" => Some(json!({"mode": "snapshot"})),
                "POST /vps/{id}/backup-schedules" => {
                    Some(json!({"cron": "0 3 * * *", "keep_daily": 3}))
                }
                _ => None,
            };
            r(
                path.replace("{id}", &id)
                    .replace("{backup}", &rows::backup_id(&id)),
                body,
                any(),
            )
        }
        "GET /vps/{id}/backup-schedules/{schedule}"
        | "PATCH /vps/{id}/backup-schedules/{schedule}"
        | "DELETE /vps/{id}/backup-schedules/{schedule}" => {
            let id = fx.take_vps(scope);
            let s = fx
                .admin
                .post(
                    &format!("/vps/{id}/backup-schedules"),
                    &json!({"cron": "0 3 * * *", "timezone": "Europe/Paris", "keep_last": 2}),
                )
                .expect(201);
            let body = (method == "PATCH").then(|| json!({"keep_last": 3}));
            r(
                path.replace("{id}", &id)
                    .replace("{schedule}", s["id"].as_str().unwrap()),
                body,
                any(),
            )
        }
        "GET /jobs/{id}" => {
            let id = fx.take_job(scope);
            r(path.replace("{id}", &id), None, vec![])
        }
        _ => r(path.into(), None, vec![]),
    }
}

#[test]
fn every_operation_by_every_role_on_own_and_other_tenants() {
    for backend in BACKENDS {
        run_matrix(backend);
    }
}
