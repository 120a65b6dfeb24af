//! Running the control plane: open the store, make the first admin, serve the API.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::api::{self, metrics::Metrics, AppState};
use crate::authz::Role;
use crate::identity::users::{self, NewUser};
use crate::service::{Caller, Services, Settings};
use crate::store::{Db, StoreError};

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Holds the SQLite database (unless `database` is given) and `server.addr`.
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `postgres://…` or `sqlite://PATH`; default: `DATA_DIR/hemiron.db`.
    pub database: Option<String>,
    /// The first admin's password, if the store has no user yet (else one is generated and
    /// printed once).
    pub admin_password: Option<String>,
    pub settings: Settings,
    /// Serve HTTPS with this configuration (session cookies then get `Secure`).
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create the data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the store")]
    Store(#[from] StoreError),
    #[error("cannot create the first admin")]
    Bootstrap(#[source] crate::error::ServiceError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    WriteAddr {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// Name of the first admin.
pub const ADMIN: &str = "admin";

/// A started server.
#[derive(Debug)]
pub struct Running {
    pub svc: Services,
    /// `http://ADDR`.
    pub url: String,
    serve: tokio::task::JoinHandle<Result<(), std::io::Error>>,
}

impl Running {
    /// Waits until the server stops (after the shutdown future given to [`start`]).
    pub async fn wait(self) -> Result<(), ServerError> {
        let result = match self.serve.await {
            Ok(r) => r.map_err(ServerError::Serve),
            Err(e) => Err(ServerError::Serve(std::io::Error::other(e))),
        };
        self.svc.db.close().await;
        result
    }
}

/// Opens the store, makes the first admin if there is no user, and serves until `shutdown`
/// completes.
pub async fn run(
    opts: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    start(opts, shutdown).await?.wait().await
}

/// Opens the store, makes the first admin if there is no user, starts the job workers, the
/// reconciler and the HTTP server (which stops when `shutdown` completes).
pub async fn start(
    opts: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, ServerError> {
    std::fs::create_dir_all(&opts.data_dir).map_err(|source| ServerError::DataDir {
        path: opts.data_dir.clone(),
        source,
    })?;
    let url = opts
        .database
        .clone()
        .unwrap_or_else(|| Db::sqlite_url(&opts.data_dir.join("hemiron.db")));
    let db = Db::open(&url).await?;
    let svc = Services {
        db: db.clone(),
        settings: opts.settings.clone(),
        clients: Default::default(),
        wakeup: Default::default(),
        auth_cache: Default::default(),
        clock: opts.settings.clock.clone(),
    };
    bootstrap_admin(&svc, opts.admin_password.clone()).await?;
    if db.backend() == crate::store::Backend::Sqlite {
        // No other server can be using the file: jobs left running died with the last one.
        let n = crate::store::jobs::requeue_all_running(&db, crate::store::now_ms()).await?;
        if n > 0 {
            tracing::info!(
                jobs = n,
                "requeued jobs left running by the previous server"
            );
        }
    }

    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: opts.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: opts.listen,
        source,
    })?;
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{addr}");
    crate::jobs::runner::spawn(svc.clone(), svc.wakeup.clone());
    tokio::spawn(crate::fleet::reconciler::run(svc.clone()));
    tokio::spawn(crate::backups::scheduler::run(svc.clone()));

    let state = AppState {
        svc: svc.clone(),
        tls: opts.tls.is_some(),
        metrics: Metrics::new(),
    };
    let app = api::app(state);
    let serve = match opts.tls.clone() {
        None => tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown)
            .await
        }),
        Some(tls) => tokio::spawn(async move {
            serve_tls(listener, app, tls, shutdown).await;
            Ok(())
        }),
    };
    // Written once the server accepts connections: tests and scripts wait for this file.
    let addr_file = opts.data_dir.join("server.addr");
    crate::store::write_atomically(&addr_file, format!("{url}\n").as_bytes()).map_err(
        |source| ServerError::WriteAddr {
            path: addr_file.clone(),
            source,
        },
    )?;
    tracing::info!(%url, database = db.backend().as_str(), "control plane listening");
    println!("hemiron server: listening on {url} (API {url}/api/v1, docs {url}/api/v1/docs)");
    Ok(Running { svc, url, serve })
}

/// Makes the `admin` user when the store has no user at all. The password is the one given,
/// else a generated one, printed once on stdout.
async fn bootstrap_admin(svc: &Services, password: Option<String>) -> Result<(), ServerError> {
    let any = crate::store::identity::list_users(&svc.db, None, None, 1).await?;
    if !any.is_empty() {
        return Ok(());
    }
    let (password, generated) = match password {
        Some(p) => (p, false),
        None => {
            let (secret, _) = crate::identity::crypto::new_secret("pw");
            (secret.trim_start_matches("pw_").to_string(), true)
        }
    };
    let caller = Caller {
        principal: None,
        client: "server".into(),
    };
    let new = NewUser {
        username: ADMIN.into(),
        password: password.clone(),
        role: Role::Admin,
        tenant_id: None,
    };
    match users::create(svc, &caller, new).await {
        Ok(_) => {}
        // A second server on the same database made it first.
        Err(crate::error::ServiceError::Conflict(_)) => return Ok(()),
        Err(e) => return Err(ServerError::Bootstrap(e)),
    }
    if generated {
        println!("hemiron server: created user {ADMIN} with password {password} (shown only now)");
    } else {
        println!("hemiron server: created user {ADMIN} with the given password");
    }
    Ok(())
}

/// Serves `app` over TLS until `shutdown` completes: one task per connection, HTTP/1.1.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: std::sync::Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (app, acceptor) = (app.clone(), acceptor.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let service = TowerToHyperService::new(tower::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    app.clone().oneshot(req.map(axum::body::Body::new))
                },
            ));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with error");
            }
        });
    }
}
