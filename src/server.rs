//! Serving: accept connections, bound them, speak HTTP/1.1 (optionally inside
//! TLS), run the key scheduler beside them, and shut everything down in order.
//!
//! This module sits above `http/` (it builds the router from the app state) and
//! owns everything about connections: the hyper timer that makes the
//! header-read timeout fire, the connection limit, the TLS certificate and its
//! reload, and graceful shutdown. It knows no routes, statuses or headers:
//! per-request limits (body deadline, request deadline, security headers, the
//! request log) are layers in `http/`. Every request gets the TCP peer as
//! `ConnectInfo<SocketAddr>`, which `http::extract::ClientMeta` reads.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::app::AppState;
use crate::config::{ServerConfig, TlsConfig};
use crate::keyring::scheduler;

/// Connection and request counters of one server, for tests and health output.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections accepted and being served now.
    pub open_connections: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub shed_connections: AtomicU64,
    /// Requests whose headers were read and that reached the router.
    pub requests_accepted: AtomicU64,
    /// Of those, requests whose response was produced.
    pub requests_answered: AtomicU64,
}

/// A server bound to a listener, ready to run.
pub struct Server {
    state: AppState,
    listener: TcpListener,
    tls: Option<TlsReloader>,
    stats: Arc<ServerStats>,
}

/// Serve `state` on `listener` until `shutdown` completes (the convenient form
/// of [`Server::new`] + [`Server::run`]).
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Server::new(state, listener)?.run(shutdown).await
}

impl Server {
    /// Load the TLS certificate if one is configured: a missing or broken
    /// certificate fails here, at start-up, rather than at the first handshake.
    pub fn new(state: AppState, listener: TcpListener) -> anyhow::Result<Self> {
        let tls = match &state.config.server.tls {
            Some(cfg) => Some(TlsReloader::load(cfg.clone())?),
            None => None,
        };
        Ok(Self {
            state,
            listener,
            tls,
            stats: Arc::new(ServerStats::default()),
        })
    }

    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }

    /// The handle that reloads the certificate (SIGHUP, tests); `None` on plain HTTP.
    pub fn tls_reloader(&self) -> Option<TlsReloader> {
        self.tls.clone()
    }

    /// Serve until `shutdown` completes, then: stop accepting (the listener is
    /// closed, so new connections are refused), let in-flight requests finish
    /// within `shutdown_grace_secs`, stop the key scheduler between two passes
    /// and the session cleanup between two batches, and close the database pool.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            state,
            listener,
            tls,
            stats,
        } = self;
        let cfg = state.config.server.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let sched = tokio::spawn(scheduler::run(
            state.lifecycle.clone(),
            state.ring.clone(),
            state.stats.clone(),
            stop_rx.clone(),
        ));
        let cleanup = tokio::spawn(crate::session::cleanup::run(
            state.store.clone(),
            state.clock.clone(),
            Duration::from_secs(state.config.tokens.cleanup_interval_secs),
            state.config.tokens.cleanup_batch_size,
            stop_rx.clone(),
        ));
        let revocations = (state.config.tokens.revocation_poll_millis > 0).then(|| {
            let store = state.store.clone();
            let every = Duration::from_millis(state.config.tokens.revocation_poll_millis);
            let stop = stop_rx.clone();
            tokio::spawn(async move { store.watch_revocations(every, stop).await })
        });
        let retention = tokio::spawn(crate::audit::retention::run(
            state.store.clone(),
            state.clock.clone(),
            state.config.audit.clone(),
            stop_rx.clone(),
        ));
        // `/metrics` on a listener of its own when `[metrics] bind` is set.
        let metrics_server = match state.config.metrics.bind {
            Some(addr) if state.config.metrics.enabled => {
                let metrics_listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on metrics.bind {addr}"))?;
                tracing::info!(addr = %metrics_listener.local_addr()?, "metrics serving");
                let app = crate::http::metrics_router(state.clone());
                let mut stop = stop_rx.clone();
                Some(tokio::spawn(async move {
                    axum::serve(metrics_listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stop.changed().await;
                        })
                        .await
                }))
            }
            _ => None,
        };
        let watch_task = tls
            .clone()
            .map(|t| tokio::spawn(t.watch_files(stop_rx.clone())));
        let store = state.store.clone();
        tracing::info!(
            addr = %listener.local_addr()?,
            issuer = %state.config.issuer,
            tls = tls.is_some(),
            "latchkey serving"
        );
        let router = crate::http::router(state);
        let acceptor = tls.as_ref().map(TlsReloader::acceptor);
        let graceful = accept_loop(&listener, &cfg, router, acceptor, &stats, shutdown).await;
        drop(listener);
        tracing::info!(
            in_flight = graceful.count(),
            grace_secs = cfg.shutdown_grace.as_secs(),
            "stopped accepting; draining connections"
        );
        if tokio::time::timeout(cfg.shutdown_grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over; closing the remaining connections");
        }
        let _ = stop_tx.send(true);
        let _ = sched.await;
        let _ = cleanup.await;
        let _ = retention.await;
        if let Some(r) = revocations {
            let _ = r.await;
        }
        if let Some(m) = metrics_server {
            let _ = m.await;
        }
        if let Some(task) = watch_task {
            let _ = task.await;
        }
        store.close().await;
        tracing::info!("latchkey stopped");
        Ok(())
    }
}

/// Accept until `shutdown`; returns the tracker of the connections still open.
async fn accept_loop(
    listener: &TcpListener,
    cfg: &ServerConfig,
    router: axum::Router,
    acceptor: Option<TlsAcceptor>,
    stats: &Arc<ServerStats>,
    shutdown: impl Future<Output = ()>,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    // Without a timer hyper's header-read timeout never fires. The timer runs
    // from accept (or the end of the previous response) until the request's
    // headers are complete, so it bounds idle keep-alive connections as well.
    http.timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .keep_alive(true);
    let handshake_timeout = cfg.header_read_timeout;
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Load shedding: past the limit a connection is closed at once rather
        // than queued, so a flood costs the attacker a connect and us nothing.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let n = stats.shed_connections.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    shed_total = n,
                    limit = cfg.max_connections,
                    "connection limit reached; closing new connections"
                );
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        stats.open_connections.fetch_add(1, Ordering::Relaxed);
        let service = connection_service(router.clone(), peer, stats.clone());
        let watcher = graceful.watcher();
        let http = http.clone();
        let acceptor = acceptor.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            match acceptor {
                None => {
                    let conn = http.serve_connection(TokioIo::new(tcp), service);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                Some(acceptor) => {
                    if let Some(tls) = handshake(acceptor, tcp, peer, handshake_timeout).await {
                        let conn = http.serve_connection(TokioIo::new(tls), service);
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    }
                }
            }
            stats.open_connections.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    graceful
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// The per-connection service: the router, with the peer address attached to
/// every request and the request counters kept.
fn connection_service(
    router: axum::Router,
    peer: SocketAddr,
    stats: Arc<ServerStats>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future + Send,
> + Clone {
    hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let router = router.clone();
        let stats = stats.clone();
        async move {
            stats.requests_accepted.fetch_add(1, Ordering::Relaxed);
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            let response = router.oneshot(req).await;
            stats.requests_answered.fetch_add(1, Ordering::Relaxed);
            response
        }
    })
}

// ---------------------------------------------------------------------------
// TLS: one certificate, swapped atomically on reload.
// ---------------------------------------------------------------------------

/// The served certificate and the means to reload it from its files. Cloning
/// shares the certificate: a reload is seen by every new handshake at once,
/// while established connections keep the certificate they started with.
#[derive(Clone)]
pub struct TlsReloader {
    cfg: TlsConfig,
    resolver: Arc<Resolver>,
    provider: Arc<CryptoProvider>,
    server_config: Arc<rustls::ServerConfig>,
}

#[derive(Debug)]
struct Resolver(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

impl TlsReloader {
    fn load(cfg: TlsConfig) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = read_certified_key(&cfg, &provider)?;
        let resolver = Arc::new(Resolver(ArcSwap::from_pointee(key)));
        // rustls' safe defaults: TLS 1.3 and 1.2 with forward-secret suites only.
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("the TLS provider supports no default protocol version")?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            cfg,
            resolver,
            provider,
            server_config: Arc::new(server_config),
        })
    }

    /// Read the certificate chain and key again and serve them to new
    /// handshakes. On any error the previous certificate stays in service.
    pub fn reload(&self) -> anyhow::Result<()> {
        let key = read_certified_key(&self.cfg, &self.provider)?;
        self.resolver.0.store(Arc::new(key));
        tracing::info!(cert = %self.cfg.cert_chain_file.display(), "TLS certificate reloaded");
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server_config.clone())
    }

    /// Poll the files' modification times and reload when either changes.
    async fn watch_files(self, mut stop: watch::Receiver<bool>) {
        let mut seen = self.stamp();
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.cfg.poll_interval) => {}
                _ = stop.changed() => return,
            }
            let now = self.stamp();
            if now != seen {
                // A certificate and its key are often replaced one after the
                // other; a reload that fails on a mismatched pair is retried
                // on the next poll because `seen` is only advanced on success.
                match self.reload() {
                    Ok(()) => seen = now,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "TLS files changed but cannot be loaded; still serving the previous certificate")
                    }
                }
            }
        }
    }

    fn stamp(&self) -> (Option<SystemTime>, Option<SystemTime>) {
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (mtime(&self.cfg.cert_chain_file), mtime(&self.cfg.key_file))
    }
}

fn read_certified_key(cfg: &TlsConfig, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let chain_pem = std::fs::read(&cfg.cert_chain_file)
        .with_context(|| format!("cannot read {}", cfg.cert_chain_file.display()))?;
    let chain = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| {
            format!(
                "{} is not a PEM certificate chain",
                cfg.cert_chain_file.display()
            )
        })?;
    if chain.is_empty() {
        anyhow::bail!("{} holds no certificate", cfg.cert_chain_file.display());
    }
    let key_pem = std::fs::read(&cfg.key_file)
        .with_context(|| format!("cannot read {}", cfg.key_file.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("{} is not a PEM private key", cfg.key_file.display()))?;
    CertifiedKey::from_der(chain, key, provider).with_context(|| {
        format!(
            "{} and {} do not form a usable certificate and key",
            cfg.cert_chain_file.display(),
            cfg.key_file.display()
        )
    })
}
