//! The node's self-signed TLS certificate, made on first start as Proxmox's `pve-ssl.pem` is.
//!
//! Clients pin it by its SHA-256 fingerprint (self-signed clusters are the norm), which the
//! agent prints at start and reports in `GET /nodes` as `ssl_fingerprint`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// Failure to load or create the certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("failed to generate the node certificate")]
    Generate(#[source] rcgen::Error),
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} holds no usable certificate or key")]
    Parse(PathBuf),
    #[error("TLS configuration refused the certificate")]
    Config(#[source] rustls::Error),
}

/// The loaded certificate and key.
#[derive(Debug, Clone)]
pub struct NodeCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// `AA:BB:…` SHA-256 of the DER certificate, as Proxmox prints fingerprints.
    pub fingerprint: String,
}

fn fingerprint_of(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Loads `DATA/tls/node.{pem,key}`, generating them first if absent.
pub fn load_or_create(dir: &Path, node_name: &str) -> Result<NodeCert, TlsError> {
    let cert_path = dir.join("node.pem");
    let key_path = dir.join("node.key");
    if !cert_path.exists() || !key_path.exists() {
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            node_name.to_string(),
        ];
        names.dedup();
        let certified = rcgen::generate_simple_self_signed(names).map_err(TlsError::Generate)?;
        // Key first: a crash between the two writes leaves a key without a certificate,
        // which the next start regenerates, never a certificate without its key.
        crate::fsutil::write_atomic(
            &key_path,
            certified.key_pair.serialize_pem().as_bytes(),
            0o600,
        )
        .map_err(|source| TlsError::Write {
            path: key_path.clone(),
            source,
        })?;
        crate::fsutil::write_atomic(&cert_path, certified.cert.pem().as_bytes(), 0o644).map_err(
            |source| TlsError::Write {
                path: cert_path.clone(),
                source,
            },
        )?;
    }
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| TlsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(&cert_path)?;
    let key_pem = read(&key_path)?;
    let der = rustls_pemfile_cert(&cert_pem).ok_or_else(|| TlsError::Parse(cert_path.clone()))?;
    Ok(NodeCert {
        fingerprint: fingerprint_of(&der),
        cert_pem,
        key_pem,
    })
}

fn rustls_pemfile_cert(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

/// A rustls server configuration for the certificate, offering HTTP/1.1.
pub fn server_config(cert: &NodeCert) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes())
        .map_err(|_| TlsError::Parse(PathBuf::from("node.pem")))?];
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|_| TlsError::Parse(PathBuf::from("node.key")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path(), "n1").unwrap();
        let b = load_or_create(dir.path(), "n1").unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 32 * 3 - 1);
        server_config(&a).unwrap();
    }
}
