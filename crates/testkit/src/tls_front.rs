//! A TLS front on 127.0.0.1 for a plain HTTP server of the tests (the Nomad simulator): it
//! ends TLS with a certificate the test made and passes the bytes through, as a Nomad agent
//! with `tls { http = true }` serves its API.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// Stops listening when dropped.
pub struct TlsFront {
    /// `https://127.0.0.1:<port>`.
    pub address: String,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    /// Serves TLS with `cert` and `key` (PEM files) and passes each connection on to
    /// `target` (`127.0.0.1:<port>`).
    pub async fn start(target: &str, cert: &Path, key: &Path) -> TlsFront {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("the server certificate")
            .map(|c| c.expect("a PEM certificate"))
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).expect("the server key");
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("the server certificate and key");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("https://{}", listener.local_addr().unwrap());
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    // A client that refuses the certificate ends the handshake: nothing to pass.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront { address, task }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
