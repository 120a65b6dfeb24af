//! Running the proxy: listeners (SO_REUSEPORT, so a second proxy can take over), TLS,
//! the admin port, the engine's timers, configuration reloads and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::admin::{self, Admin};
use crate::config::{self, AccessLog};
use crate::dataplane::Conn;
use crate::engine::{self, Engine, Shared};
use crate::metrics::Metrics;
use crate::sticky::Signer;

/// How to run a proxy.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub admin: SocketAddr,
    /// The admin bearer token; `None`: read `STATE_DIR/admin.token`, made on first start.
    pub admin_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    State(#[from] engine::StateError),
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Certificates(Vec<crate::tls::TlsError>),
    #[error("cannot start the access log's writer: {0}")]
    AccessLogWriter(std::io::Error),
    #[error("cannot open the access log {path}: {source}")]
    AccessLog {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A started proxy: where it listens, and how to stop it.
#[derive(Debug)]
pub struct Running {
    pub listeners: Vec<(String, SocketAddr, bool)>,
    pub admin: SocketAddr,
    pub token_file: Option<PathBuf>,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets connections finish (up to the drain timeout) and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.done.await;
    }
}

/// Steers new connections of a listening address to this process's socket: a classic BPF
/// program on the SO_REUSEPORT group that picks the group's second socket. When an older
/// proxy holds the first, this one (started later, for a handover) gets every new
/// connection while the old one finishes what it has; alone in the group, the index is out
/// of range and the kernel falls back to its hash, which is then this socket anyway.
fn take_new_connections(socket: &socket2::Socket) -> std::io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt::AttachReusePortCbpf};
    // BPF_RET | BPF_K: return the constant 1.
    let program = [libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 1,
    }];
    let fprog = libc::sock_fprog {
        len: 1,
        filter: program.as_ptr().cast_mut(),
    };
    setsockopt(socket, AttachReusePortCbpf, &fprog).map_err(std::io::Error::from)
}

/// Binds a listening socket that other processes may share (SO_REUSEPORT).
fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    if let Err(e) = take_new_connections(&socket) {
        // Handover then loses what lands in the old process's queue as it closes.
        tracing::warn!(%address, error = %e, "cannot steer new connections to this process");
    }
    TcpListener::from_std(socket.into())
}

fn admin_token(opts: &ProxyOptions) -> Result<(String, Option<PathBuf>), ProxyError> {
    if let Some(t) = &opts.admin_token {
        return Ok((t.trim().to_owned(), None));
    }
    let path = opts.state_dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok((t.trim().to_owned(), Some(path))),
        _ => {}
    }
    let mut raw = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
    let token = hex::encode(raw);
    engine::persist(&path, format!("{token}\n").as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    Ok((token, Some(path)))
}

/// Opens the access log's destination (once, at start: a file that cannot be opened stops
/// the start; standard output that cannot be is reported and logging is off).
fn open_access_log(target: &AccessLog) -> Result<Option<std::fs::File>, ProxyError> {
    let append = |path: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    };
    match target {
        AccessLog::Off => Ok(None),
        AccessLog::Stdout => match append(Path::new("/dev/stdout")) {
            Ok(f) => Ok(Some(f)),
            Err(e) => {
                tracing::error!(error = %e, "access log not written");
                Ok(None)
            }
        },
        AccessLog::File(path) => append(path)
            .map(Some)
            .map_err(|source| ProxyError::AccessLog {
                path: path.clone(),
                source,
            }),
    }
}

/// How long access-log lines wait in memory before they are written.
const ACCESS_LOG_FLUSH: Duration = Duration::from_millis(50);

/// The access log's writer: a thread of its own that wakes every [`ACCESS_LOG_FLUSH`] and
/// writes what has queued up in one go. Not a task writing through `tokio::fs`: that hands
/// every batch to a blocking-pool thread and back, two context switches a few thousand
/// times a second on the data plane's CPU (measured with `perf stat`: 0.42 switches per
/// request with it, 0.13 without, as for nginx), which showed in the proxy's p99. Senders
/// never wake it: it only polls.
#[derive(Debug)]
struct AccessLogWriter {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl AccessLogWriter {
    fn start(
        rx: mpsc::UnboundedReceiver<String>,
        out: std::fs::File,
    ) -> Result<AccessLogWriter, ProxyError> {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_access_log(rx, out, &flag))
            .map_err(ProxyError::AccessLogWriter)?;
        Ok(AccessLogWriter { stop, thread })
    }

    /// Writes what is queued and ends the thread.
    async fn finish(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

fn write_access_log(
    mut rx: mpsc::UnboundedReceiver<String>,
    mut out: std::fs::File,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::io::Write;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut write = |buf: &mut Vec<u8>| {
        if !buf.is_empty() && out.write_all(buf).is_err() {
            tracing::error!("access log write failed");
        }
        buf.clear();
    };
    loop {
        // Read before draining: lines sent before the stop are all written.
        let stopping = stop.load(std::sync::atomic::Ordering::Acquire);
        loop {
            match rx.try_recv() {
                Ok(line) => {
                    buf.extend_from_slice(line.as_bytes());
                    buf.push(b'\n');
                    if buf.len() >= 60 * 1024 {
                        write(&mut buf);
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    write(&mut buf);
                    return;
                }
            }
        }
        write(&mut buf);
        if stopping {
            return;
        }
        std::thread::sleep(ACCESS_LOG_FLUSH);
    }
}

/// Starts the proxy; it runs until [`Running::shutdown`].
pub async fn start(opts: ProxyOptions) -> Result<Running, ProxyError> {
    let config = config::load(&opts.config)?;
    std::fs::create_dir_all(&opts.state_dir).map_err(|source| ProxyError::StateDir {
        path: opts.state_dir.clone(),
        source,
    })?;
    let key = engine::session_key(&opts.state_dir)?;
    let (token, token_file) = admin_token(&opts)?;
    let (access_log, access_log_writer) = match open_access_log(&config.proxy.access_log)? {
        Some(out) => {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(AccessLogWriter::start(rx, out)?))
        }
        None => (None, None),
    };
    let resolver = if config.listeners.iter().any(|l| l.tls) {
        Some(Arc::new(
            crate::tls::Resolver::new(&config.certificates).map_err(ProxyError::Certificates)?,
        ))
    } else {
        None
    };
    let engine = Engine::new(
        config.clone(),
        &opts.state_dir,
        Signer::new(&key),
        Metrics::new(),
        access_log,
    )?;
    let shared = engine.shared.clone();
    crate::health::first_round(&shared).await;
    let mut bound = Vec::new();
    for l in &config.listeners {
        let listener = bind(l.address).map_err(|source| ProxyError::Listen {
            address: l.address,
            source,
        })?;
        let local = listener.local_addr().map_err(|source| ProxyError::Listen {
            address: l.address,
            source,
        })?;
        bound.push((l.clone(), listener, local));
    }
    let admin_listener = bind(opts.admin).map_err(|source| ProxyError::Listen {
        address: opts.admin,
        source,
    })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| ProxyError::Listen {
            address: opts.admin,
            source,
        })?;

    // The first start writes the state the configuration implies.
    engine::persist(engine.state_path(), &engine.snapshot()?)?;
    let admin = Arc::new(Admin::new(
        engine,
        opts.config.clone(),
        resolver.clone(),
        &token,
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let tls_acceptor = resolver
        .clone()
        .map(|r| tokio_rustls::TlsAcceptor::from(crate::tls::server_config(r)));

    let mut tasks = Vec::new();
    let graceful = Arc::new(GracefulShutdown::new());
    let mut addresses = Vec::new();
    for (l, listener, local) in bound {
        addresses.push((l.name.clone(), local, l.tls));
        let acceptor = if l.tls { tls_acceptor.clone() } else { None };
        tasks.push(tokio::spawn(accept_loop(
            listener,
            shared.clone(),
            acceptor,
            graceful.clone(),
            stop_rx.clone(),
        )));
    }
    let admin_stop = stop_rx.clone();
    let admin_app = admin::router(admin.clone());
    let admin_task = tokio::spawn(async move {
        let mut stop = admin_stop;
        let served = axum::serve(admin_listener, admin_app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    let background = vec![
        tokio::spawn(ticker(admin.clone())),
        tokio::spawn(crate::health::run(shared.clone())),
        tokio::spawn(watch_config(admin.clone(), resolver, opts.config.clone())),
    ];
    let drain_timeout = config.proxy.drain_timeout;
    let mut stop_wait = stop_rx.clone();
    let done = tokio::spawn(async move {
        let _ = stop_wait.wait_for(|s| *s).await;
        for t in tasks {
            let _ = t.await;
        }
        // Listeners are closed; let connections finish (HTTP/2 gets GOAWAY, idle HTTP/1
        // connections close).
        if let Ok(g) = Arc::try_unwrap(graceful) {
            if tokio::time::timeout(drain_timeout, g.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("connections still open at the drain timeout; closing them");
            }
        }
        for b in background {
            b.abort();
        }
        let _ = admin_task.await;
        if let Some(w) = access_log_writer {
            w.finish().await;
        }
    });
    Ok(Running {
        listeners: addresses,
        admin: admin_addr,
        token_file,
        stop: stop_tx,
        done,
    })
}

/// Runs until `shutdown` resolves, then stops gracefully.
pub async fn run(opts: ProxyOptions, shutdown: impl Future<Output = ()>) -> Result<(), ProxyError> {
    let running = start(opts).await?;
    for (name, addr, tls) in &running.listeners {
        println!(
            "hemiron proxy: {name} listening on {}://{addr}",
            if *tls { "https" } else { "http" }
        );
    }
    println!("hemiron proxy: admin API on http://{}", running.admin);
    if let Some(f) = &running.token_file {
        println!("hemiron proxy: admin token in {}", f.display());
    }
    shutdown.await;
    tracing::info!("shutting down: no new connections; draining");
    running.shutdown().await;
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30));
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        serve(
            stream,
            peer,
            shared.clone(),
            tls.clone(),
            builder.clone(),
            &graceful,
            &stop,
        );
    }
    // Whatever reached the accept queue before the close is still served.
    while let Ok(Ok((stream, peer))) = tokio::time::timeout(Duration::ZERO, listener.accept()).await
    {
        serve(
            stream,
            peer,
            shared.clone(),
            tls.clone(),
            builder.clone(),
            &graceful,
            &stop,
        );
    }
}

fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: &GracefulShutdown,
    stop: &watch::Receiver<bool>,
) {
    let cx = crate::h1::Accepted {
        conn: Conn::new(shared, peer, tls.is_some()),
        builder,
        stop: stop.clone(),
        watcher: graceful.watcher(),
    };
    match tls {
        None => {
            tokio::spawn(crate::h1::serve(stream, cx));
        }
        Some(acceptor) => {
            tokio::spawn(async move {
                let stream =
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    crate::h1::serve_hyper(stream, cx).await;
                } else {
                    crate::h1::serve(stream, cx).await;
                }
            });
        }
    }
}

/// Step timers, analysis intervals and health changes.
async fn ticker(admin: Arc<Admin>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = admin.shared.health_changed.notified() => {}
        }
        let mut engine = admin.engine.lock().await;
        let mut changed = engine.tick();
        let due = engine.due_analyses();
        if !due.is_empty() {
            drop(engine);
            let judged = tokio::task::spawn_blocking(move || {
                due.into_iter()
                    .map(crate::engine::judge)
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            engine = admin.engine.lock().await;
            for j in judged {
                changed |= engine.apply_verdict(j);
            }
        }
        if changed {
            if let Err(e) = admin.save(engine).await {
                tracing::error!(error = %e, "rollout state not saved");
            }
        }
    }
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Reloads the configuration when its file changes or on SIGHUP, and certificates when
/// theirs change.
async fn watch_config(
    admin: Arc<Admin>,
    resolver: Option<Arc<crate::tls::Resolver>>,
    path: PathBuf,
) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut last = file_stamp(&path);
    loop {
        let signalled = tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => false,
            Some(()) = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        if let Some(r) = &resolver {
            r.refresh();
        }
        let now = file_stamp(&path);
        if signalled || now != last {
            last = now;
            // Errors are logged by reload_config; the running configuration stays.
            let _ = admin::reload_config(&admin).await;
        }
    }
}
