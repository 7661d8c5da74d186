//! A certificate authority of this node's own, for TLS without ACME: created once in the data
//! directory, then used to issue certificates for the configured hosts at every (re)load, so
//! `curl --cacert <data_dir>/ca/ca.pem` works out of the box.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

/// Leaf certificates live this long; they are re-issued at every start and reload.
const LEAF_DAYS: i64 = 90;
const CA_DAYS: i64 = 3650;

pub struct LocalCa {
    cert: Certificate,
    key: KeyPair,
    pub cert_path: PathBuf,
}

/// A leaf issued by the local CA: chain (leaf, CA) and key.
pub struct Issued {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl LocalCa {
    /// Loads the CA from `<data_dir>/ca/`, creating it on first use.
    pub fn open(data_dir: &Path) -> Result<LocalCa> {
        let dir = data_dir.join("ca");
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        if cert_path.exists() && key_path.exists() {
            let key_pem = fs::read_to_string(&key_path)
                .with_context(|| format!("reading {}", key_path.display()))?;
            let cert_pem = fs::read_to_string(&cert_path)
                .with_context(|| format!("reading {}", cert_path.display()))?;
            let key = KeyPair::from_pem(&key_pem)
                .with_context(|| format!("parsing {}", key_path.display()))?;
            // Re-signing the same parameters with the same key yields a certificate with the
            // same subject and key, so leaves chain to the ca.pem clients already trust.
            let params = CertificateParams::from_ca_cert_pem(&cert_pem)
                .with_context(|| format!("parsing {}", cert_path.display()))?;
            let cert = params.self_signed(&key)?;
            return Ok(LocalCa {
                cert,
                key,
                cert_path,
            });
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "edgemesh local CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(CA_DAYS);
        let cert = params.self_signed(&key)?;
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
        Ok(LocalCa {
            cert,
            key,
            cert_path,
        })
    }

    pub fn issue(&self, names: &[String]) -> Result<Issued> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())
            .with_context(|| format!("certificate names {names:?}"))?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(LEAF_DAYS);
        let leaf = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            chain: vec![leaf.der().clone(), self.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        })
    }
}

/// Writes through a temporary file and a rename, so a crash never leaves half a key.
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn ca_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::open(dir.path()).unwrap();
        let pem1 = fs::read(&ca.cert_path).unwrap();
        let mode = fs::metadata(dir.path().join("ca/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = LocalCa::open(dir.path()).unwrap();
        assert_eq!(fs::read(&again.cert_path).unwrap(), pem1);
        // A leaf from the reopened CA verifies against the original ca.pem.
        let issued = again.issue(&["a.test".into(), "*.b.test".into()]).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        let ca_der = rustls_pemfile::certs(&mut &pem1[..])
            .next()
            .unwrap()
            .unwrap();
        roots.add(ca_der).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.into(),
            rustls::crypto::ring::default_provider().into(),
        )
        .build()
        .unwrap();
        for name in ["a.test", "x.b.test"] {
            verifier
                .verify_server_cert(
                    &issued.chain[0],
                    &issued.chain[1..],
                    &rustls::pki_types::ServerName::try_from(name).unwrap(),
                    &[],
                    rustls::pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
