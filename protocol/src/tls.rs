//! Client-side TLS configuration (feature `tls`): rustls with the `ring`
//! provider, trusting only the CA certificates given.

use std::io;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// A client configuration that trusts the CA certificates in `ca_pem` (one
/// or more PEM `CERTIFICATE` blocks). Build it once and share it between
/// connections.
pub fn client_config(ca_pem: &[u8]) -> io::Result<Arc<ClientConfig>> {
    let bad = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| bad(format!("CA certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("no CA certificate found in the PEM data".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
