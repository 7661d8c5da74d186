//! Builds the certificate set a node serves from its config: PEM files named in the config,
//! then ACME certificates, then local-CA certificates for route hosts nothing else covers.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use edgemesh_proxy::CertEntry;
use rustls::pki_types::CertificateDer;

use crate::config::Config;
use crate::local_ca::LocalCa;

/// Expiry (unix seconds), DNS names and issuer (common name, else the whole name) of a DER
/// certificate.
pub fn inspect(der: &CertificateDer<'_>) -> Result<(i64, Vec<String>, String)> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| anyhow!("bad certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok().map(str::to_string))
        .unwrap_or_else(|| cert.issuer().to_string());
    Ok((cert.validity().not_after.timestamp(), names, issuer))
}

fn from_files(cert: &Path, key: &Path) -> Result<CertEntry> {
    let cert_pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let key_pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    from_pem(&cert_pem, &key_pem, format!("file:{}", cert.display()))
        .with_context(|| format!("{} / {}", cert.display(), key.display()))
}

/// A certificate entry from a PEM chain and a PEM key; `source` names it in status output.
pub fn from_pem(cert_pem: &[u8], key_pem: &[u8], source: String) -> Result<CertEntry> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .context("parsing the certificate chain")?;
    let first = chain
        .first()
        .ok_or_else(|| anyhow!("no certificate found"))?;
    let (not_after, names, issuer) = inspect(first)?;
    let key_der = rustls_pemfile::private_key(&mut &key_pem[..])
        .context("parsing the private key")?
        .ok_or_else(|| anyhow!("no private key found"))?;
    let mut entry = CertEntry::new(names, chain, key_der, not_after, source)?;
    entry.issuer = issuer;
    Ok(entry)
}

/// The certificates for `config` and the index of the default one: files first, then the
/// ACME certificates (`acme`) for names no file covers, then the local CA for the rest of
/// `tls_hosts` (the configuration's and the docker labels' TLS route hosts).
pub fn build(
    config: &Config,
    tls_hosts: &[String],
    acme: &[CertEntry],
) -> Result<(Vec<CertEntry>, Option<usize>)> {
    let mut entries = Vec::new();
    for (cert, key) in &config.cert_files {
        entries.push(from_files(cert, key)?);
    }
    for a in acme {
        if !a
            .names
            .iter()
            .all(|n| entries.iter().any(|e| covers(&e.names, n)))
        {
            entries.push(a.clone());
        }
    }
    let uncovered: Vec<String> = tls_hosts
        .iter()
        .filter(|h| !entries.iter().any(|e| covers(&e.names, h)))
        .cloned()
        .collect();
    let has_tls_listener = config
        .listeners
        .iter()
        .any(|l| l.kind == edgemesh_proxy::ListenerKind::Https);
    if config.local_ca && has_tls_listener && !uncovered.is_empty() {
        let ca = LocalCa::open(&config.data_dir)
            .with_context(|| format!("local CA in {}", config.data_dir.display()))?;
        for host in uncovered {
            let issued = ca.issue(std::slice::from_ref(&host))?;
            let (not_after, _, issuer) = inspect(&issued.chain[0])?;
            let mut entry =
                CertEntry::new(vec![host], issued.chain, issued.key, not_after, "local-ca")?;
            entry.issuer = issuer;
            entries.push(entry);
        }
    }
    let default = match &config.default_cert {
        Some(d) => Some(
            entries
                .iter()
                .position(|e| covers(&e.names, d))
                .ok_or_else(|| anyhow!("tls.default_cert {d:?}: no certificate covers it"))?,
        ),
        None => None,
    };
    Ok((entries, default))
}

fn covers(names: &[String], host: &str) -> bool {
    names.iter().any(|n| {
        n == host
            || n.strip_prefix("*.")
                .is_some_and(|suffix| host.split_once('.').is_some_and(|(_, rest)| rest == suffix))
    })
}
