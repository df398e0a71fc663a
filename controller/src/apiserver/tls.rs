//! The cluster's certificate authority and the API server's serving
//! certificate, generated on first start and kept in the data directory
//! (keys readable by root only).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// PEM files of the cluster PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub use crate::private_file::write_private;

fn san(name: &str) -> Result<SanType, rcgen::Error> {
    Ok(match name.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.try_into()?),
    })
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "weft-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    Ok(params)
}

/// Loads the PKI from `dir/pki`, creating the CA on first start. The
/// serving certificate is (re)issued when a name in `sans` is not in it yet.
pub fn ensure_pki(dir: &Path, sans: &[String]) -> anyhow::Result<Pki> {
    let pki = dir.join("pki");
    fs::create_dir_all(&pki)?;
    fs::set_permissions(&pki, fs::Permissions::from_mode(0o700))?;
    let (ca_cert, ca_key) = (pki.join("ca.crt"), pki.join("ca.key"));
    if !ca_cert.exists() || !ca_key.exists() {
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        write_private(&ca_key, &key.serialize_pem())?;
        write_private(&ca_cert, &cert.pem())?;
    }
    let ca_pem = fs::read_to_string(&ca_cert)?;
    let ca_key_pair = KeyPair::from_pem(&fs::read_to_string(&ca_key)?)?;

    let mut names: Vec<String> = vec![
        "localhost".into(),
        "127.0.0.1".into(),
        "weft-controller".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
    ];
    for s in sans {
        if !names.contains(s) {
            names.push(s.clone());
        }
    }
    let (cert_path, key_path, names_path) = (
        pki.join("apiserver.crt"),
        pki.join("apiserver.key"),
        pki.join("apiserver.names"),
    );
    let current = fs::read_to_string(&names_path).unwrap_or_default();
    let have: Vec<&str> = current.lines().collect();
    if !cert_path.exists()
        || !key_path.exists()
        || names.iter().any(|n| !have.contains(&n.as_str()))
    {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "weft-apiserver");
        params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.not_after = rcgen::date_time_ymd(2035, 1, 1);
        // The CA's parameters are fixed, so rebuilding them names the same
        // issuer that the stored CA certificate carries.
        let issuer = Issuer::new(ca_params()?, &ca_key_pair);
        let cert = params.signed_by(&key, &issuer)?;
        write_private(&key_path, &key.serialize_pem())?;
        write_private(&cert_path, &cert.pem())?;
        write_private(&names_path, &names.join("\n"))?;
    }
    Ok(Pki {
        ca_pem,
        cert_pem: fs::read_to_string(&cert_path)?,
        key_pem: fs::read_to_string(&key_path)?,
    })
}

/// Issues a client certificate for `user` in `groups`, signed by the
/// cluster CA in `dir/pki`, valid for `days`: (certificate PEM, key PEM).
/// kube-apiserver reads such a certificate's CN as the user and its O
/// entries as the groups, and so does Weft ([`user_of_cert`]).
pub fn issue_client_cert(
    dir: &Path,
    user: &str,
    groups: &[String],
    days: u32,
) -> anyhow::Result<(String, String)> {
    use p256::pkcs8::DecodePrivateKey as _;
    use std::str::FromStr as _;
    use x509_cert::builder::{Builder as _, CertificateBuilder};
    use x509_cert::der::{DecodePem as _, EncodePem as _};
    if user.is_empty() {
        anyhow::bail!("the user name is empty");
    }
    if user.chars().any(char::is_control)
        || groups
            .iter()
            .any(|g| g.is_empty() || g.chars().any(char::is_control))
    {
        anyhow::bail!("user and group names may not be empty or hold control characters");
    }
    let pki = dir.join("pki");
    let read = |name: &str| {
        fs::read_to_string(pki.join(name)).map_err(|e| {
            anyhow::anyhow!(
                "read the cluster CA's {} : {e} (run `weft controller --data-dir {}` once first)",
                pki.join(name).display(),
                dir.display()
            )
        })
    };
    let ca_cert = x509_cert::Certificate::from_pem(read("ca.crt")?.as_bytes())?;
    let ca_key = p256::ecdsa::SigningKey::from_pkcs8_pem(&read("ca.key")?)
        .map_err(|e| anyhow::anyhow!("the cluster CA's key is not a P-256 PKCS#8 key: {e}"))?;
    let key = KeyPair::generate()?;
    let spki =
        x509_cert::spki::SubjectPublicKeyInfoOwned::from_pem(key.public_key_pem().as_bytes())?;
    // A string name lists the last RDN first (RFC 4514): the groups in
    // reverse, then the CN, make CN, O=first, O=second in the certificate.
    let mut subject = String::new();
    for g in groups.iter().rev() {
        subject.push_str(&format!("O={},", rfc4514_escape(g)));
    }
    subject.push_str(&format!("CN={}", rfc4514_escape(user)));
    let profile = ClientProfile {
        issuer: ca_cert.tbs_certificate().subject().clone(),
        subject: x509_cert::name::Name::from_str(&subject)?,
    };
    let mut serial = *uuid::Uuid::new_v4().as_bytes();
    serial[0] &= 0x7f; // positive
    let validity = x509_cert::time::Validity::new(
        x509_cert::time::Time::try_from(
            std::time::SystemTime::now() - std::time::Duration::from_secs(300),
        )?,
        x509_cert::time::Time::try_from(
            std::time::SystemTime::now() + std::time::Duration::from_secs(u64::from(days) * 86_400),
        )?,
    );
    let builder = CertificateBuilder::new(
        profile,
        x509_cert::serial_number::SerialNumber::new(&serial)?,
        validity,
        spki,
    )?;
    let cert = builder.build::<_, p256::ecdsa::DerSignature>(&ca_key)?;
    let pem = cert.to_pem(x509_cert::der::pem::LineEnding::LF)?;
    Ok((pem, key.serialize_pem()))
}

/// A value escaped for a string name (RFC 4514).
fn rfc4514_escape(v: &str) -> String {
    let mut out = String::new();
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A client certificate: not a CA, signing for TLS client authentication.
struct ClientProfile {
    issuer: x509_cert::name::Name,
    subject: x509_cert::name::Name,
}

impl x509_cert::builder::profile::BuilderProfile for ClientProfile {
    fn get_issuer(&self, _subject: &x509_cert::name::Name) -> x509_cert::name::Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> x509_cert::name::Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        _spk: x509_cert::spki::SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: x509_cert::spki::SubjectPublicKeyInfoRef<'_>,
        tbs: &x509_cert::TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<x509_cert::ext::Extension>> {
        use x509_cert::ext::ToExtension as _;
        use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages};
        let mut out = vec![
            BasicConstraints {
                ca: false,
                path_len_constraint: None,
            }
            .to_extension(tbs.subject(), &[])?,
        ];
        out.push(KeyUsage(KeyUsages::DigitalSignature.into()).to_extension(tbs.subject(), &out)?);
        out.push(
            ExtendedKeyUsage(vec![x509_cert::der::oid::db::rfc5280::ID_KP_CLIENT_AUTH])
                .to_extension(tbs.subject(), &out)?,
        );
        Ok(out)
    }
}

/// The user a client certificate names (CN the user, each O a group), as
/// kube-apiserver's x509 authenticator reads it. The certificate must have
/// been verified against the CA by the TLS handshake.
pub fn user_of_cert(der: &[u8]) -> Option<super::auth::User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_string();
    if name.is_empty() {
        return None;
    }
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect();
    if !groups.iter().any(|g| g == super::auth::AUTHENTICATED) {
        groups.push(super::auth::AUTHENTICATED.to_string());
    }
    Some(super::auth::User {
        name,
        uid: String::new(),
        groups,
    })
}

/// The API server's TLS configuration: its serving certificate, and client
/// certificates signed by the cluster CA verified when a client offers one
/// (not required: tokens authenticate too).
pub fn server_config(pki: &Pki) -> anyhow::Result<std::sync::Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(ca?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(std::sync::Arc::new(roots))
        .allow_unauthenticated()
        .build()?;
    let chain =
        CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes())?;
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_certificate_names_its_user_and_every_group() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let pki = ensure_pki(dir.path(), &[]).expect("a CA");
        let groups = vec!["sales".to_string(), "a, b+c".to_string(), "qa".to_string()];
        let (cert, key) =
            issue_client_cert(dir.path(), "alice=x", &groups, 30).expect("a certificate");
        assert!(key.contains("PRIVATE KEY"));
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert.as_bytes())
            .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
            .expect("PEM");
        let user = user_of_cert(&der).expect("a user");
        assert_eq!(user.name, "alice=x");
        assert_eq!(
            user.groups,
            vec!["sales", "a, b+c", "qa", "system:authenticated"]
        );
        // The CA verifies it, for client authentication.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        for ca in
            <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(
                pki.ca_pem.as_bytes(),
            )
        {
            roots.add(ca.expect("CA PEM")).expect("a root");
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(std::sync::Arc::new(roots))
            .build()
            .expect("a verifier");
        verifier
            .verify_client_cert(
                &rustls::pki_types::CertificateDer::from(der),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .expect("signed by the CA, for clients");
        assert!(issue_client_cert(dir.path(), "", &[], 1).is_err());
        assert!(issue_client_cert(dir.path(), "bob", &[String::new()], 1).is_err());
    }
}
