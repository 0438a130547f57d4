//! TLS for the test server: a throwaway CA and a certificate for 127.0.0.1, made at run
//! time with rcgen, so no key material is checked in and nothing expires in the repository.

use std::io;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::http_server::{Conn, TestServer, Wrap};

/// A CA whose PEM a client can trust, and a server configuration with a leaf it signed.
pub struct TestCa {
    /// The CA certificate in PEM, e.g. for `FetchOptions::ca_cert`.
    pub ca_pem: String,
    pub server_config: Arc<ServerConfig>,
}

impl TestCa {
    /// A CA and a server certificate valid for `127.0.0.1` and `localhost`.
    pub fn new() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "nodeforge test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");

        let leaf_key = KeyPair::generate().expect("server key");
        let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
        leaf_params.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        leaf_params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("server certificate");

        let chain = vec![CertificateDer::from(leaf.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let config = ServerConfig::builder().with_no_client_auth().with_single_cert(chain, key).expect("server config");
        Self { ca_pem: ca_cert.pem(), server_config: Arc::new(config) }
    }

    /// An https [`TestServer`] presenting this CA's server certificate.
    pub fn https_server(&self) -> TestServer {
        let config = Arc::clone(&self.server_config);
        let wrap: Wrap = Arc::new(move |tcp: TcpStream| {
            let conn = ServerConnection::new(Arc::clone(&config)).map_err(io::Error::other)?;
            Ok(Box::new(Tls(StreamOwned::new(conn, tcp))) as Box<dyn Conn>)
        });
        TestServer::start_with("https", wrap)
    }
}

/// A TLS connection, wrapped so this crate can give it the server's [`Conn`] trait (both
/// the trait and rustls' stream are foreign here).
struct Tls(StreamOwned<ServerConnection, TcpStream>);

impl std::io::Read for Tls {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl std::io::Write for Tls {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Conn for Tls {
    fn finish(&mut self) {
        use std::io::Write;
        self.0.conn.send_close_notify();
        let _ = self.0.flush();
        let _ = self.0.sock.shutdown(std::net::Shutdown::Write);
    }
}
