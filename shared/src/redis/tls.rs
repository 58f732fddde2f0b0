//! TLS to Redis (`rediss://`): the process-wide rustls crypto provider, and
//! the optional private CA and client certificate read from files.
//!
//! Without files, redis-rs trusts the system store (rustls-native-certs). With
//! `REDIS_CA_FILE` it trusts only the CAs in that file; with
//! `REDIS_CLIENT_CERT_FILE` and `REDIS_CLIENT_KEY_FILE` it also presents a
//! client certificate (mutual TLS). The files are read and checked once, when
//! the Redis handle is built at start-up, so a missing or malformed file stops
//! the process with a message naming it instead of failing every connection.

use std::path::Path;
use std::sync::Arc;

use redis::{ClientTlsConfig, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::RedisArgs;

/// Installs `ring` as rustls' process-wide crypto provider unless one is
/// installed already. redis-rs builds its TLS configuration from the
/// process default, which rustls cannot pick by itself once more than one
/// provider is compiled in. Cheap and idempotent: call it before any TLS use.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: a provider is set.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{env} {path}: {reason}")]
pub struct TlsFileError {
    /// The option naming the file, e.g. `REDIS_CA_FILE`.
    pub env: &'static str,
    /// The file as configured.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The certificates the options name, read and checked; `None` when no TLS
/// file is configured (system trust store, no client certificate).
///
/// # Errors
/// Fails when a file cannot be read, holds no usable PEM item, or the client
/// key does not belong to the client certificate.
pub(crate) fn certificates(args: &RedisArgs) -> Result<Option<TlsCertificates>, TlsFileError> {
    let root_cert = args
        .redis_ca_file
        .as_deref()
        .map(|p| read_ca(p, "REDIS_CA_FILE"))
        .transpose()?;
    let client_tls = match (&args.redis_client_cert_file, &args.redis_client_key_file) {
        (Some(cert), Some(key)) => Some(read_client_pair(cert, key)?),
        // clap's `requires` makes the two options come together.
        _ => None,
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

fn read(path: &Path, env: &'static str) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| file_error(env, path, format!("cannot read: {e}")))
}

fn file_error(env: &'static str, path: &Path, reason: String) -> TlsFileError {
    TlsFileError {
        env,
        path: path.display().to_string(),
        reason,
    }
}

/// Parses every `CERTIFICATE` block of a PEM file; at least one is required.
fn certs(
    pem: &[u8],
    path: &Path,
    env: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(env, path, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(
            env,
            path,
            "holds no PEM CERTIFICATE block".into(),
        ));
    }
    Ok(certs)
}

/// Reads a CA file and checks that each certificate is a usable trust anchor.
fn read_ca(path: &Path, env: &'static str) -> Result<Vec<u8>, TlsFileError> {
    let pem = read(path, env)?;
    let mut store = rustls::RootCertStore::empty();
    for cert in certs(&pem, path, env)? {
        store
            .add(cert)
            .map_err(|e| file_error(env, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(pem)
}

/// Reads the client certificate chain and key, and checks that they build a
/// client configuration (the key parses and matches the certificate).
fn read_client_pair(cert_path: &Path, key_path: &Path) -> Result<ClientTlsConfig, TlsFileError> {
    const CERT_ENV: &str = "REDIS_CLIENT_CERT_FILE";
    const KEY_ENV: &str = "REDIS_CLIENT_KEY_FILE";
    let client_cert = read(cert_path, CERT_ENV)?;
    let client_key = read(key_path, KEY_ENV)?;
    let chain = certs(&client_cert, cert_path, CERT_ENV)?;
    let key = PrivateKeyDer::from_pem_slice(&client_key)
        .map_err(|e| file_error(KEY_ENV, key_path, format!("no usable private key: {e}")))?;
    install_crypto_provider();
    rustls::ClientConfig::builder()
        .with_root_certificates(Arc::new(rustls::RootCertStore::empty()))
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            file_error(
                KEY_ENV,
                key_path,
                format!("does not fit {CERT_ENV} {}: {e}", cert_path.display()),
            )
        })?;
    Ok(ClientTlsConfig {
        client_cert,
        client_key,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        redis: RedisArgs,
    }

    fn args(flags: &[&str]) -> RedisArgs {
        Cli::try_parse_from(std::iter::once("test").chain(flags.iter().copied()))
            .unwrap()
            .redis
    }

    fn scratch(name: &str, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("chat-tls-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn no_files_means_system_roots() {
        assert!(certificates(&args(&[])).unwrap().is_none());
    }

    #[test]
    fn a_missing_ca_file_names_the_option_and_the_path() {
        let e = certificates(&args(&["--redis-ca-file", "/nonexistent/ca.pem"])).unwrap_err();
        assert_eq!(e.env, "REDIS_CA_FILE");
        let text = e.to_string();
        assert!(
            text.starts_with("REDIS_CA_FILE /nonexistent/ca.pem: cannot read"),
            "{text}"
        );
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let path = scratch("empty.pem", "not a certificate\n");
        let e = certificates(&args(&["--redis-ca-file", path.to_str().unwrap()])).unwrap_err();
        assert!(e.reason.contains("no PEM CERTIFICATE"), "{e}");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn client_certificate_and_key_come_together() {
        assert!(Cli::try_parse_from(["test", "--redis-client-cert-file", "c.pem"]).is_err());
        assert!(Cli::try_parse_from(["test", "--redis-client-key-file", "k.pem"]).is_err());
    }

    #[test]
    fn installing_the_provider_twice_is_harmless() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
