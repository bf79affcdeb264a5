//! HTTP services of fedcrime (a station's prediction service, the agency's
//! dashboard): one way to serve an axum router over plain TCP or TLS, with
//! optional client certificates, and stop it cleanly.
//!
//! TLS here is ordinary HTTPS (TLS 1.2 and 1.3, ALPN `http/1.1`), not the
//! federation's QUIC profile: browsers and load generators must reach it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::server::WebPkiClientVerifier;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use super::error::{NetError, Result};
use super::tls::{load_certs, load_key, load_roots, provider};

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTPS for a fedcrime web service (`[serve.tls]`, `[dashboard.tls]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTls {
    /// The service's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// When set, every client must present a certificate issued by this CA
    /// (PEM), e.g. the agency CA of `fedcrime-certs`: client-certificate
    /// authentication instead of (or beside) a bearer token.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl HttpTls {
    /// The rustls configuration: the certificate, TLS 1.2/1.3, ALPN
    /// `http/1.1`, client certificates required when `client_ca` is set.
    pub fn rustls_config(&self) -> Result<rustls::ServerConfig> {
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|source| NetError::Tls {
                what: "HTTPS configuration",
                source,
            })?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let roots = Arc::new(load_roots(ca)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|source| NetError::Verifier { crl: None, source })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let chain = load_certs(&self.cert, "HTTPS certificate")?;
        let key = load_key(&self.key)?;
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|source| NetError::Tls {
                what: "HTTPS configuration (certificate and key)",
                source,
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// A bound HTTP(S) listener, ready to serve a router.
#[derive(Debug)]
pub struct HttpListener {
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl HttpListener {
    /// Binds `addr` (port 0 picks a free port; see
    /// [`HttpListener::local_addr`]), with HTTPS when `tls` is set. The TLS
    /// files are read here, so a bad certificate fails before serving.
    pub async fn bind(addr: SocketAddr, tls: Option<&HttpTls>) -> Result<Self> {
        let tls = tls.map(|t| t.rustls_config().map(Arc::new)).transpose()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| NetError::Bind { addr, source })?;
        Ok(HttpListener { listener, tls })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(|source| NetError::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })
    }

    /// Whether it speaks HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves `router` until `shutdown` resolves. Plain HTTP stops
    /// gracefully (requests in flight finish); HTTPS stops accepting and
    /// lets open connections end with the runtime.
    pub async fn serve(
        self,
        router: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        match self.tls {
            None => {
                use axum::serve::ListenerExt;
                let listener = self.listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            Some(tls) => serve_tls(self.listener, tls, router, shutdown).await,
        }
    }
}

async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors and the like: wait, do not spin.
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an HTTPS connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "HTTPS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "HTTPS handshake timed out");
                    return;
                }
            };
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "HTTPS connection");
            }
        });
    }
}
