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
