//! Service account tokens, as kube-apiserver issues them since 1.24: JWTs
//! signed by the controller's service-account key (`DATA_DIR/pki/sa.key`,
//! P-256, ES256), asked for through TokenRequest, short-lived, with their
//! audiences and, when bound to a pod, valid only while that pod (the same
//! uid) exists. None is stored; the API server verifies them on use
//! (signature, expiry, audience, the ServiceAccount and the bound pod),
//! and TokenReview lets others ask it to.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::identity::{AUTHENTICATED, User};

/// The issuer and default audience, as kube-apiserver's default
/// `--service-account-issuer` and `--api-audiences`.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Tokens shorter than this are refused (kube's minimum).
pub const MIN_SECONDS: i64 = 600;
/// Tokens are never longer than this (kube's
/// `--service-account-max-token-expiration` is unset by default; Weft
/// caps them at two days).
pub const MAX_SECONDS: i64 = 48 * 3600;

/// What a token is bound to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ref {
    pub name: String,
    pub uid: String,
}

/// The `kubernetes.io` claim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KubeClaim {
    pub namespace: String,
    pub serviceaccount: Ref,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kube: KubeClaim,
}

impl Claims {
    /// The user the token speaks for.
    pub fn user(&self) -> User {
        User {
            name: self.sub.clone(),
            uid: self.kube.serviceaccount.uid.clone(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", self.kube.namespace),
                AUTHENTICATED.into(),
            ],
        }
    }
}

/// The token issuer and verifier.
pub struct Issuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Issuer {
    /// The issuer with the key in `dir/pki/sa.key`, made on first use.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("pki").join("sa.key");
        if !path.exists() {
            let key = rcgen::KeyPair::generate()?;
            super::tls::write_private(&path, &key.serialize_pem())?;
        }
        let pem = std::fs::read_to_string(&path)?;
        let key = rcgen::KeyPair::from_pem(&pem)?;
        Ok(Self {
            encoding: EncodingKey::from_ec_pem(pem.as_bytes())?,
            decoding: DecodingKey::from_ec_pem(key.public_key_pem().as_bytes())?,
        })
    }

    /// A token for service account `sa` (name, uid) in `ns`, for
    /// `audiences`, valid `seconds` from now, bound to `pod` if given.
    pub fn issue(
        &self,
        ns: &str,
        sa: Ref,
        pod: Option<Ref>,
        audiences: Vec<String>,
        seconds: i64,
    ) -> anyhow::Result<(String, i64)> {
        let now = weft_api::meta::now_time().0.as_second();
        let claims = Claims {
            iss: ISSUER.into(),
            sub: format!("system:serviceaccount:{ns}:{}", sa.name),
            aud: audiences,
            exp: now + seconds,
            iat: now,
            nbf: now,
            jti: weft_api::meta::new_uid(),
            kube: KubeClaim {
                namespace: ns.into(),
                serviceaccount: sa,
                pod,
            },
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.encoding)?;
        Ok((token, claims.exp))
    }

    /// The claims of `token` when it is one of ours, unexpired and for
    /// one of `audiences`; why not otherwise. Whether its ServiceAccount and
    /// pod still exist is the caller's to check.
    pub fn verify(&self, token: &str, audiences: &[&str]) -> Result<Claims, String> {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[ISSUER]);
        v.set_audience(audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = 5;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| e.to_string())
    }
}

/// Whether `token` looks like a JWT (three base64url parts), not a static
/// token.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && token.starts_with("eyJ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_for_their_audience_and_not_after_tampering() {
        let dir = tempfile::tempdir().expect("a directory");
        std::fs::create_dir_all(dir.path().join("pki")).expect("pki");
        let issuer = Issuer::open(dir.path()).expect("an issuer");
        let sa = Ref {
            name: "default".into(),
            uid: "u1".into(),
        };
        let pod = Some(Ref {
            name: "p".into(),
            uid: "u2".into(),
        });
        let (token, exp) = issuer
            .issue("team", sa.clone(), pod.clone(), vec![ISSUER.into()], 3600)
            .expect("a token");
        assert!(looks_like_jwt(&token));
        let claims = issuer.verify(&token, &[ISSUER]).expect("valid");
        assert_eq!(claims.exp, exp);
        assert_eq!(claims.kube.pod, pod);
        let user = claims.user();
        assert_eq!(user.name, "system:serviceaccount:team:default");
        assert!(
            user.groups
                .contains(&"system:serviceaccounts:team".to_string())
        );
        assert!(
            issuer.verify(&token, &["vault"]).is_err(),
            "another audience"
        );
        // A payload changed to another account breaks the signature.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let payload = String::from_utf8(b64.decode(&parts[1]).expect("base64")).expect("text");
        assert!(payload.contains("system:serviceaccount:team:default"));
        let forged = payload.replace("team:default", "team:admin");
        parts[1] = b64.encode(forged);
        let err = issuer
            .verify(&parts.join("."), &[ISSUER])
            .expect_err("forged");
        assert!(err.to_lowercase().contains("signature"), "{err}");
        // Another key's token is not ours.
        let other_dir = tempfile::tempdir().expect("a directory");
        std::fs::create_dir_all(other_dir.path().join("pki")).expect("pki");
        let other = Issuer::open(other_dir.path()).expect("an issuer");
        let (theirs, _) = other
            .issue("team", sa, None, vec![ISSUER.into()], 3600)
            .expect("a token");
        assert!(issuer.verify(&theirs, &[ISSUER]).is_err());
        // The key is kept: a restart verifies what was issued before.
        let again = Issuer::open(dir.path()).expect("the same key");
        assert!(again.verify(&token, &[ISSUER]).is_ok());
    }
}
