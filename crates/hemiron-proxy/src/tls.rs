//! TLS for the data plane: certificates chosen by SNI, reloaded when their files change.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{host_matches, Certificate};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate {path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("cannot read key {path}: {message}")]
    Key { path: PathBuf, message: String },
}

#[derive(Debug)]
struct Loaded {
    hosts: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// Picks a certificate by SNI: the first whose hosts match, else the first without hosts,
/// else the first.
#[derive(Debug)]
pub struct Resolver {
    certs: ArcSwap<Vec<Loaded>>,
    specs: Vec<Certificate>,
    stamps: std::sync::Mutex<Vec<Option<SystemTime>>>,
}

fn load(c: &Certificate) -> Result<Loaded, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: c.cert.clone(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Cert {
            path: c.cert.clone(),
            message: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&c.key).map_err(|e| TlsError::Key {
        path: c.key.clone(),
        message: e.to_string(),
    })?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| TlsError::Key {
            path: c.key.clone(),
            message: e.to_string(),
        })?;
    Ok(Loaded {
        hosts: c.hosts.clone(),
        key: Arc::new(CertifiedKey::new(chain, signing)),
    })
}

fn stamp(c: &Certificate) -> Option<SystemTime> {
    let a = std::fs::metadata(&c.cert).and_then(|m| m.modified()).ok()?;
    let b = std::fs::metadata(&c.key).and_then(|m| m.modified()).ok()?;
    Some(a.max(b))
}

impl Resolver {
    pub fn new(specs: &[Certificate]) -> Result<Resolver, TlsError> {
        let loaded = specs.iter().map(load).collect::<Result<Vec<_>, _>>()?;
        Ok(Resolver {
            certs: ArcSwap::from_pointee(loaded),
            specs: specs.to_vec(),
            stamps: std::sync::Mutex::new(specs.iter().map(stamp).collect()),
        })
    }

    /// Reloads certificates whose files changed; a file that fails to load keeps the old
    /// certificate (and is reported).
    pub fn refresh(&self) {
        let Ok(mut stamps) = self.stamps.lock() else {
            return;
        };
        let now: Vec<Option<SystemTime>> = self.specs.iter().map(stamp).collect();
        if *stamps == now {
            return;
        }
        let old = self.certs.load_full();
        let mut next = Vec::with_capacity(self.specs.len());
        for (i, spec) in self.specs.iter().enumerate() {
            match load(spec) {
                Ok(l) => {
                    if stamps.get(i) != now.get(i) {
                        tracing::info!(cert = %spec.cert.display(), "certificate reloaded");
                    }
                    next.push(l)
                }
                Err(e) => {
                    tracing::error!(error = %e, "certificate not reloaded; the old one stays");
                    if let Some(o) = old.get(i) {
                        next.push(Loaded {
                            hosts: o.hosts.clone(),
                            key: o.key.clone(),
                        });
                    }
                }
            }
        }
        self.certs.store(Arc::new(next));
        *stamps = now;
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        let name = hello.server_name().map(str::to_ascii_lowercase);
        if let Some(name) = &name {
            if let Some(c) = certs
                .iter()
                .find(|c| c.hosts.iter().any(|h| host_matches(h, name)))
            {
                return Some(c.key.clone());
            }
        }
        certs
            .iter()
            .find(|c| c.hosts.is_empty())
            .or_else(|| certs.first())
            .map(|c| c.key.clone())
    }
}

/// A rustls server configuration over the resolver, offering h2 and http/1.1 by ALPN.
pub fn server_config(resolver: Arc<Resolver>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_no_client_auth().with_cert_resolver(resolver.clone()))
    .unwrap_or_else(|_| {
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(resolver)
    });
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}
