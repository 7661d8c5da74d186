//! Mutual authentication of QUIC links from the cluster key.
//!
//! Each node makes a fresh key pair and a self-signed certificate at start. The certificate
//! carries one extension: HMAC-SHA256 under the cluster key of a fixed label and the
//! certificate's public key. A peer is accepted (as client or server) only if that MAC
//! verifies under a key of our ring, and the TLS handshake then proves it holds the private key.
//! A node without the cluster key can neither make such a certificate nor accept ours: no key,
//! no link. Rotation works as for gossip packets: any key of the ring verifies, the first signs.

use std::sync::Arc;

use rcgen::{CertificateParams, CustomExtension, DnType, KeyPair};
use ring::hmac;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use crate::keyring::Keyring;

/// Private-use arc for the attestation extension.
const OID: &[u64] = &[1, 3, 6, 1, 4, 1, 59_999, 1, 1];
const LABEL: &[u8] = b"edgemesh-quic-attestation-v1";
pub const SERVER_NAME: &str = "edgemesh";

fn mac(key: &[u8], spki: &[u8]) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(LABEL);
    ctx.update(spki);
    ctx.sign()
}

/// This node's certificate chain and key for QUIC, attested with the ring's first key.
pub fn node_cert(
    keyring: &Keyring,
    node_id: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), rcgen::Error> {
    let kp = KeyPair::generate()?;
    let tag = mac(keyring.primary().as_bytes(), &kp.public_key_der());
    // The extension's value is a DER OCTET STRING holding the 32-byte MAC.
    let mut value = vec![0x04, tag.as_ref().len() as u8];
    value.extend_from_slice(tag.as_ref());
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()])?;
    params.distinguished_name.push(DnType::CommonName, node_id);
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(OID, value));
    let cert = params.self_signed(&kp)?;
    Ok((
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(kp.serialize_der().into()),
    ))
}

/// Whether `cert` carries a MAC of its public key under a key of `keyring`.
pub fn is_attested(keyring: &Keyring, cert: &CertificateDer<'_>) -> bool {
    use x509_parser::prelude::*;
    let Ok((_, parsed)) = X509Certificate::from_der(cert) else {
        return false;
    };
    let oid = x509_parser::der_parser::oid::Oid::from(OID).expect("a valid OID");
    let Some(ext) = parsed.extensions().iter().find(|e| e.oid == oid) else {
        return false;
    };
    let value = ext.value;
    if value.len() != 34 || value[0] != 0x04 || value[1] != 32 {
        return false;
    }
    let spki = parsed.tbs_certificate.subject_pki.raw;
    keyring.keys().any(|k| {
        let key = hmac::Key::new(hmac::HMAC_SHA256, k.as_bytes());
        let mut msg = LABEL.to_vec();
        msg.extend_from_slice(spki);
        hmac::verify(&key, &msg, &value[2..]).is_ok()
    })
}

/// Accepts exactly the certificates attested by the cluster key, on both ends of a link.
#[derive(Debug)]
pub struct ClusterVerifier {
    keyring: Arc<Keyring>,
    provider: Arc<CryptoProvider>,
}

impl ClusterVerifier {
    pub fn new(keyring: Arc<Keyring>, provider: Arc<CryptoProvider>) -> ClusterVerifier {
        ClusterVerifier { keyring, provider }
    }

    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), Error> {
        if is_attested(&self.keyring, cert) {
            Ok(())
        } else {
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

/// What the server and client verifier traits share: handshake signatures checked with the
/// provider's algorithms.
impl ClusterVerifier {
    fn signature(
        &self,
        verify: fn(
            &[u8],
            &CertificateDer<'_>,
            &DigitallySignedStruct,
            &rustls::crypto::WebPkiSupportedAlgorithms,
        ) -> Result<HandshakeSignatureValid, Error>,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for ClusterVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.check(end_entity)
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.signature(verify_tls12_signature, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.signature(verify_tls13_signature, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for ClusterVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.check(end_entity)
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.signature(verify_tls12_signature, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.signature(verify_tls13_signature, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::ClusterKey;

    #[test]
    fn attestation_follows_the_keyring() {
        let (k1, k2) = (ClusterKey::generate(), ClusterKey::generate());
        let ring1 = Keyring::new(vec![k1.clone()]).unwrap();
        let (chain, _) = node_cert(&ring1, "n1").unwrap();
        assert!(is_attested(&ring1, &chain[0]));
        // Rotation: a ring that still holds the old key accepts it...
        assert!(is_attested(
            &Keyring::new(vec![k2.clone(), k1]).unwrap(),
            &chain[0]
        ));
        // ...a ring without it does not.
        assert!(!is_attested(&Keyring::new(vec![k2]).unwrap(), &chain[0]));
        // A certificate without the extension, or garbage, is refused.
        let kp = KeyPair::generate().unwrap();
        let plain = CertificateParams::new(vec!["edgemesh".into()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        assert!(!is_attested(&ring1, plain.der()));
        assert!(!is_attested(&ring1, &CertificateDer::from(vec![0u8; 10])));
    }

    #[test]
    fn a_mac_copied_onto_another_key_does_not_verify() {
        let ring = Keyring::new(vec![ClusterKey::generate()]).unwrap();
        let (chain, _) = node_cert(&ring, "n1").unwrap();
        // An attacker copies the extension of a genuine certificate onto its own key.
        use x509_parser::prelude::*;
        let (_, genuine) = X509Certificate::from_der(&chain[0]).unwrap();
        let oid = x509_parser::der_parser::oid::Oid::from(OID).unwrap();
        let ext = genuine.extensions().iter().find(|e| e.oid == oid).unwrap();
        let kp = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["edgemesh".into()]).unwrap();
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(OID, ext.value.to_vec()));
        let forged = params.self_signed(&kp).unwrap();
        assert!(!is_attested(&ring, forged.der()));
    }
}
