//! Control-plane harness: starts `hemiron server` on SQLite or on a fresh database of the
//! throwaway PostgreSQL server, and talks JSON to it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{hemiron, wait_for};

pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// A fresh, empty PostgreSQL database on the test server; its URL.
pub fn fresh_postgres() -> String {
    let admin = std::env::var("HEMIRON_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "HEMIRON_TEST_POSTGRES is not set: run the tests with ./scripts/test, or start a \
             server with `eval \"$(scripts/throwaway-postgres start)\"`"
        )
    });
    let name = format!("t_{}", uuid_like());
    let out = Command::new("psql")
        .args([
            admin.as_str(),
            "-q",
            "-c",
            &format!("CREATE DATABASE {name}"),
        ])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{}/{name}", admin.rsplit_once('/').unwrap().0)
}

fn uuid_like() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..24)
        .map(|_| char::from(b'a' + rng.gen_range(0..26u8)))
        .collect()
}

/// A running `hemiron server`.
pub struct Server {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub url: String,
    pub database: Option<String>,
    pub backend: Backend,
    pub stdout: PathBuf,
    pub extra: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Server {
    pub fn start(backend: Backend) -> Server {
        Self::start_with_args(backend, &[])
    }

    /// A server with more command-line arguments.
    pub fn start_with_args(backend: Backend, extra: &[&str]) -> Server {
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(fresh_postgres()),
        };
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, database, backend, extra)
    }

    pub fn start_in(
        dir: tempfile::TempDir,
        database: Option<String>,
        backend: Backend,
        extra: &[&str],
    ) -> Server {
        Self::start_in_env(dir, database, backend, extra, &[])
    }

    /// The same, with more environment variables for the server process.
    pub fn start_in_env(
        dir: tempfile::TempDir,
        database: Option<String>,
        backend: Backend,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut s = Server {
            child: None,
            stdout: dir.path().join("server.out"),
            dir,
            url: String::new(),
            database,
            backend,
            extra: extra.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        s.launch();
        s
    }

    /// Starts the process (again).
    pub fn launch(&mut self) {
        let data = self.dir.path().join("data");
        let _ = std::fs::remove_file(data.join("server.addr"));
        let out = std::fs::File::create(&self.stdout).unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new(hemiron());
        cmd.args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .env("HEMIRON_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("HEMIRON_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Some(db) = &self.database {
            cmd.arg("--database").arg(db);
        }
        cmd.args(&self.extra);
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut child = cmd.spawn().expect("start hemiron server");
        let addr_file = data.join("server.addr");
        self.url = wait_for("server.addr", Duration::from_secs(30), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("server exited with {status}: {}", self.output());
            }
            std::fs::read_to_string(&addr_file)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        });
        self.child = Some(child);
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Waits until the process exits on its own (a crash hook fired).
    pub fn wait_exit(&mut self) {
        let child = self.child.as_mut().expect("a running server");
        wait_for("server to exit", Duration::from_secs(120), || {
            child.try_wait().ok().flatten().map(|_| ())
        });
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn anon(&self) -> Client {
        Client::new(&self.url, None)
    }

    /// A client logged in as `admin`.
    pub fn admin(&self) -> Client {
        self.login("admin", ADMIN_PASSWORD)
    }

    pub fn login(&self, username: &str, password: &str) -> Client {
        let r = self.anon().post(
            "/auth/login",
            &serde_json::json!({"username": username, "password": password}),
        );
        assert_eq!(r.status, 200, "login {username}: {}", r.body);
        Client::new(
            &self.url,
            Some(r.body["token"].as_str().unwrap().to_string()),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    pub fn etag(&self) -> String {
        self.header("etag").expect("an ETag")
    }

    /// Asserts the status and returns the body.
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status, status, "body: {}", self.body);
        self.body
    }

    /// Asserts a problem+json answer of this status and kind (`/problems/KIND`).
    #[track_caller]
    pub fn problem(&self, status: u16, kind: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json")
        );
        assert_eq!(
            self.body["type"],
            format!("/problems/{kind}"),
            "{}",
            self.body
        );
        assert_eq!(self.body["status"], status);
    }
}

/// A JSON client of `/api/v1`.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub bearer: Option<String>,
    http: reqwest::blocking::Client,
}

impl Client {
    pub fn new(base: &str, bearer: Option<String>) -> Client {
        Client {
            base: base.to_string(),
            bearer,
            // A --tls server's certificate is self-signed.
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .danger_accept_invalid_certs(base.starts_with("https://"))
                .build()
                .unwrap(),
        }
    }

    pub fn with_token(&self, token: &str) -> Client {
        Client::new(&self.base, Some(token.to_string()))
    }

    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let url = if path.starts_with('/')
            && !path.starts_with("/api/")
            && !path.starts_with("/healthz")
            && !path.starts_with("/metrics")
        {
            format!("{}/api/v1{path}", self.base)
        } else {
            format!("{}{path}", self.base)
        };
        let mut req = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
        if let Some(b) = &self.bearer {
            req = req.bearer_auth(b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().expect("HTTP request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None, &[])
    }

    pub fn post(&self, path: &str, body: &Value) -> Reply {
        self.send("POST", path, Some(body), &[])
    }

    pub fn patch(&self, path: &str, etag: &str, body: &Value) -> Reply {
        self.send("PATCH", path, Some(body), &[("if-match", etag)])
    }

    pub fn delete(&self, path: &str, etag: &str) -> Reply {
        self.send("DELETE", path, None, &[("if-match", etag)])
    }
}

/// Writes into a fresh store (before its server starts): a tenant `acme` with room for
/// `vms` VPSes, a cluster with one roomy online node holding template `guest`, and plan
/// `small`. Nothing answers at the cluster's address: with `--workers 0` the jobs stay
/// queued, which is all the API tests need.
pub fn seed_placeable(url: &str, vms: i64) -> String {
    use hemiron_server::store::fleet::{self, TemplateRow};
    use hemiron_server::store::tenancy::{self, PlanRow};
    use hemiron_server::store::{now_ms, Db};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = Db::open(url).await.unwrap();
        let now = now_ms();
        let mut tx = db.begin().await.unwrap();
        let tenant = super::rows::tenant("tenant-acme", "acme", vms, 0);
        tenancy::insert_tenant(&mut tx, &tenant).await.unwrap();
        let plan = PlanRow {
            id: "plan-small".into(),
            name: "small".into(),
            vcpus: 1,
            memory_mib: 128,
            disk_gib: 1,
            backups: 7,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        tenancy::insert_plan(&mut tx, &plan).await.unwrap();
        let cluster =
            super::rows::cluster("cluster-0", "c0", "http://127.0.0.1:9", "root@pam!x", "x");
        fleet::insert_cluster(&mut tx, &cluster).await.unwrap();
        tx.commit().await.unwrap();
        let node = super::rows::node("node-0", "cluster-0", "n1", 1000, 1 << 30);
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
        db.close().await;
        tenant.id
    })
}

/// A store URL for a new server in `dir` (the SQLite file it will use, or a fresh
/// PostgreSQL database).
pub fn store_url(backend: Backend, dir: &std::path::Path) -> String {
    match backend {
        Backend::Sqlite => {
            std::fs::create_dir_all(dir.join("data")).unwrap();
            hemiron_server::store::Db::sqlite_url(&dir.join("data/hemiron.db"))
        }
        Backend::Postgres => fresh_postgres(),
    }
}
