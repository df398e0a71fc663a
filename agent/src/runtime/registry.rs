//! Pulling images from, and pushing them to, an OCI distribution registry
//! (Docker registry v2 API) with oci-client. Every blob that arrives goes
//! through [`ImageStore::put_blob`], which verifies it against its digest
//! before keeping it, so a registry cannot slip in other content.
//!
//! Requests leave from the node's network namespace when one is given: the
//! client runs on a thread that joined it, with its own small tokio runtime,
//! so its sockets are made there.

use std::{path::PathBuf, time::Duration};

use oci_client::{
    Client, Reference,
    client::{ClientConfig, ClientProtocol},
    secrets::RegistryAuth,
};
use oci_spec::image::ImageManifest;

use super::{
    image::{Image, ImageError, ImageStore},
    reference::ImageRef,
};
use crate::netlink::netns;

/// A registry login (`imagePullSecrets`): user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password (never logged).
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The host (and port) a docker config key names: `https://r.io/v1/`,
/// `r.io:5000`, `http://r.io`.
fn key_host(key: &str) -> &str {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

/// The login for `registry` in a `kubernetes.io/dockerconfigjson`
/// (`{"auths": {...}}`) or `kubernetes.io/dockercfg` (`{...}`) document,
/// as kubelet reads them: an entry's `username` and `password`, or its
/// `auth` (base64 of `user:password`). Docker Hub's keys
/// (`https://index.docker.io/v1/`) stand for `docker.io`.
#[must_use]
pub fn credentials_for(config: &[u8], registry: &str) -> Option<Credentials> {
    use base64::Engine as _;
    let v: serde_json::Value = serde_json::from_slice(config).ok()?;
    let auths = v.get("auths").unwrap_or(&v).as_object()?;
    let wanted = |host: &str| {
        host == registry
            || (registry == "docker.io"
                && matches!(host, "index.docker.io" | "registry-1.docker.io"))
    };
    let entry = auths.iter().find(|(k, _)| wanted(key_host(k)))?.1;
    let user = entry.get("username").and_then(|u| u.as_str());
    let pass = entry.get("password").and_then(|p| p.as_str());
    if let (Some(u), Some(p)) = (user, pass) {
        return Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        });
    }
    let auth = entry.get("auth")?.as_str()?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some(Credentials {
        username: u.to_string(),
        password: p.to_string(),
    })
}

fn auth_of(creds: Option<&Credentials>) -> RegistryAuth {
    creds.map_or(RegistryAuth::Anonymous, |c| {
        RegistryAuth::Basic(c.username.clone(), c.password.clone())
    })
}

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Registries (host:port) spoken to over plain HTTP, as a lab's is; all
    /// others use HTTPS.
    pub plain_http: Vec<String>,
    /// Network namespace the requests leave from (`None`: the caller's).
    pub netns: Option<String>,
    /// Give up on a registry that does not answer within this time
    /// (default 10 s).
    pub timeout: Option<Duration>,
}

/// Media types a pull accepts for the top-level manifest.
const ACCEPTED: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

fn client(opts: &RegistryOptions) -> Client {
    let t = opts.timeout.unwrap_or(Duration::from_secs(10));
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(opts.plain_http.clone()),
        connect_timeout: Some(t),
        read_timeout: Some(t),
        ..Default::default()
    })
}

/// The error with its chain of causes, so that "error sending request"
/// also says why (DNS, refused, timed out).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn registry_err(r: &ImageRef, e: impl std::fmt::Display) -> ImageError {
    let reason = e.to_string();
    let reason = if reason.contains("error sending request") || reason.contains("connect") {
        format!("cannot reach the registry: {reason}")
    } else {
        reason
    };
    ImageError::Registry {
        registry: r.registry.clone(),
        reason,
    }
}

/// Runs an async registry job on a thread inside `ns`, with its own runtime.
fn in_netns<T: Send>(
    ns: Option<&str>,
    job: impl std::future::Future<Output = Result<T, ImageError>> + Send,
) -> Result<T, ImageError> {
    netns::run_in(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| ImageError::Io {
                op: "start a runtime for the registry client",
                path: PathBuf::new(),
                source,
            })?;
        rt.block_on(job)
    })
    .map_err(|e| ImageError::Io {
        op: "join the node's network namespace",
        path: PathBuf::from(ns.unwrap_or_default()),
        source: std::io::Error::other(e.to_string()),
    })?
}

impl ImageStore {
    /// Pulls `reference` from its registry into the store (blobs already
    /// present are not fetched again) and tags it. Blocking.
    ///
    /// # Errors
    /// [`ImageError::Registry`] when the registry is unreachable or refuses,
    /// [`ImageError::DigestMismatch`] when content does not match.
    pub fn pull(&self, reference: &str, opts: &RegistryOptions) -> Result<Image, ImageError> {
        self.pull_as(reference, opts, None)
    }

    /// As [`ImageStore::pull`], logged in with `creds` when given.
    ///
    /// # Errors
    /// As [`ImageStore::pull`].
    pub fn pull_as(
        &self,
        reference: &str,
        opts: &RegistryOptions,
        creds: Option<&Credentials>,
    ) -> Result<Image, ImageError> {
        let auth = auth_of(creds);
        let r = ImageRef::parse(reference)?;
        let remote: Reference = r
            .to_string()
            .parse()
            .map_err(|e| registry_err(&r, format!("reference: {e}")))?;
        let c = client(opts);
        let (r2, remote2) = (r.clone(), remote.clone());
        let digest = in_netns(opts.netns.as_deref(), async move {
            let (raw, digest) = c
                .pull_manifest_raw(&remote2, &auth, ACCEPTED)
                .await
                .map_err(|e| registry_err(&r2, chain(&e)))?;
            if let Some(want) = &r2.digest
                && *want != digest
            {
                return Err(ImageError::DigestMismatch {
                    what: format!("manifest of {r2}"),
                    expected: want.clone(),
                    actual: digest,
                });
            }
            let manifest: ImageManifest =
                serde_json::from_slice(&raw).map_err(|source| ImageError::Json {
                    what: format!("manifest of {r2}"),
                    source,
                })?;
            let mut blobs = vec![(manifest.config().digest().to_string(), "config")];
            blobs.extend(
                manifest
                    .layers()
                    .iter()
                    .map(|l| (l.digest().to_string(), "layer")),
            );
            for (d, what) in blobs {
                if self.has_blob(&d) {
                    continue;
                }
                let mut data = Vec::new();
                c.pull_blob(&remote2, d.as_str(), &mut data)
                    .await
                    .map_err(|e| registry_err(&r2, format!("{what} {d}: {}", chain(&e))))?;
                self.put_blob(&d, what, data.as_slice())?;
            }
            // The manifest last: a tag never names an image with missing blobs.
            self.put_blob(&digest, "manifest", raw.as_ref())?;
            Ok(digest)
        })?;
        self.tag(&r, &digest)?;
        self.resolve(&r.to_string())
    }

    /// Pushes the local image `local` to the registry as `remote`. Blocking.
    ///
    /// # Errors
    /// When the image is not here or the registry refuses.
    pub fn push(
        &self,
        local: &str,
        remote: &str,
        opts: &RegistryOptions,
    ) -> Result<String, ImageError> {
        self.push_as(local, remote, opts, None)
    }

    /// As [`ImageStore::push`], logged in with `creds` when given.
    ///
    /// # Errors
    /// As [`ImageStore::push`].
    pub fn push_as(
        &self,
        local: &str,
        remote: &str,
        opts: &RegistryOptions,
        creds: Option<&Credentials>,
    ) -> Result<String, ImageError> {
        let auth = auth_of(creds);
        let image = self.resolve(local)?;
        let r = ImageRef::parse(remote)?;
        let target: Reference = r
            .to_string()
            .parse()
            .map_err(|e| registry_err(&r, format!("reference: {e}")))?;
        let c = client(opts);
        let manifest = self.read_blob(&image.manifest_digest)?;
        let parsed: ImageManifest =
            serde_json::from_slice(&manifest).map_err(|source| ImageError::Json {
                what: format!("manifest of {local}"),
                source,
            })?;
        let mut blobs = vec![parsed.config().digest().to_string()];
        blobs.extend(image.layers.iter().cloned());
        let media_type = parsed.media_type().as_ref().map_or_else(
            || "application/vnd.oci.image.manifest.v1+json".to_string(),
            ToString::to_string,
        );
        in_netns(opts.netns.as_deref(), async move {
            c.store_auth_if_needed(&r.registry, &auth).await;
            for d in &blobs {
                let data = self.read_blob(d)?;
                c.push_blob(&target, data, d)
                    .await
                    .map_err(|e| registry_err(&r, format!("blob {d}: {}", chain(&e))))?;
            }
            let ct = media_type
                .parse()
                .map_err(|e| registry_err(&r, format!("media type: {e}")))?;
            c.push_manifest_raw(&target, manifest, ct)
                .await
                .map_err(|e| registry_err(&r, format!("manifest: {}", chain(&e))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_found_as_kubelet_finds_them() {
        let json = br#"{"auths": {"https://r.example:5000/v1/": {"username": "u", "password": "p"},
                       "other.io": {"auth": "YWxpY2U6czNjcjN0"},
                       "https://index.docker.io/v1/": {"auth": "aHViOmh1Yg=="}}}"#;
        let c = credentials_for(json, "r.example:5000").expect("found");
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p"));
        let c = credentials_for(json, "other.io").expect("found");
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "s3cr3t")
        );
        assert_eq!(
            credentials_for(json, "docker.io").expect("hub").username,
            "hub"
        );
        assert!(
            credentials_for(json, "r.example").is_none(),
            "the port is part of the host"
        );
        assert!(credentials_for(b"not json", "x").is_none());
        // The old dockercfg form: no "auths".
        let cfg = br#"{"old.io": {"username": "a", "password": "b"}}"#;
        assert_eq!(credentials_for(cfg, "old.io").expect("found").password, "b");
        assert!(!format!("{c:?}").contains("s3cr3t"), "never printed");
    }
}
