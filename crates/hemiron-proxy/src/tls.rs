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
    /// What `certs` was loaded from, and the files' modification times then.
    files: std::sync::Mutex<Files>,
}

#[derive(Debug)]
struct Files {
    specs: Vec<Certificate>,
    stamps: Vec<Option<SystemTime>>,
}

impl Files {
    /// `specs` and their files' modification times now (taken before loading them, so that a
    /// file changed meanwhile is loaded again by the next refresh).
    fn of(specs: &[Certificate]) -> Files {
        Files {
            specs: specs.to_vec(),
            stamps: specs.iter().map(stamp).collect(),
        }
    }
}

/// A certificate set loaded from a configuration, ready to be served.
#[derive(Debug)]
pub struct Prepared {
    files: Files,
    loaded: Vec<Loaded>,
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
    /// A resolver serving `specs`; fails with every one that cannot be loaded.
    pub fn new(specs: &[Certificate]) -> Result<Resolver, Vec<TlsError>> {
        let Prepared { files, loaded } = Resolver::prepare(specs)?;
        Ok(Resolver {
            certs: ArcSwap::from_pointee(loaded),
            files: std::sync::Mutex::new(files),
        })
    }

    /// Whether `specs` differ from the certificates served now.
    pub fn differs(&self, specs: &[Certificate]) -> bool {
        self.files.lock().map_or(true, |f| f.specs != specs)
    }

    /// Loads the certificates of a new configuration; every one that cannot be loaded is
    /// reported (and the configuration should then be refused whole).
    pub fn prepare(specs: &[Certificate]) -> Result<Prepared, Vec<TlsError>> {
        let files = Files::of(specs);
        let (mut loaded, mut errors) = (Vec::new(), Vec::new());
        for spec in specs {
            match load(spec) {
                Ok(l) => loaded.push(l),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(Prepared { files, loaded })
        } else {
            Err(errors)
        }
    }

    /// Serves a prepared certificate set from the next handshake on.
    pub fn install(&self, prepared: Prepared) {
        let Ok(mut files) = self.files.lock() else {
            return;
        };
        self.certs.store(Arc::new(prepared.loaded));
        *files = prepared.files;
        tracing::info!(certificates = files.specs.len(), "certificate set replaced");
    }

    /// Reloads certificates whose files changed; a file that fails to load keeps the old
    /// certificate (and is reported).
    pub fn refresh(&self) {
        let Ok(mut files) = self.files.lock() else {
            return;
        };
        let now: Vec<Option<SystemTime>> = files.specs.iter().map(stamp).collect();
        if files.stamps == now {
            return;
        }
        let old = self.certs.load_full();
        let mut next = Vec::with_capacity(files.specs.len());
        for (i, spec) in files.specs.iter().enumerate() {
            match load(spec) {
                Ok(l) => {
                    if files.stamps.get(i) != now.get(i) {
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
        files.stamps = now;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_certificate_that_cannot_be_loaded_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.pem"), "not a certificate").unwrap();
        let specs = [
            Certificate {
                cert: dir.path().join("missing.pem"),
                key: dir.path().join("missing.key"),
                hosts: vec!["a.example".into()],
            },
            Certificate {
                cert: dir.path().join("bad.pem"),
                key: dir.path().join("bad.pem"),
                hosts: vec!["b.example".into()],
            },
        ];
        let errors = Resolver::new(&specs).err().unwrap();
        assert_eq!(errors.len(), 2, "{errors:?}");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(text[0].contains("missing.pem"), "{text:?}");
        assert!(text[1].contains("bad.pem"), "{text:?}");
    }
}
