//! Encryption at rest, in the manner of kube-apiserver's
//! `--encryption-provider-config`: a [`Store`] over another that encrypts
//! the values of the resources the configuration names (Secrets by
//! default) on their way in and decrypts them on their way out, so that
//! everything above it (the registry, lists, watches, the controllers'
//! cache) sees plain objects and the database file, etcd and its backups
//! hold only ciphertext.
//!
//! The configuration is kube's `EncryptionConfiguration` (YAML), with the
//! `aesgcm` and `identity` providers. The first provider of a resource
//! encrypts its new writes; every provider listed can read. A stored value
//! encrypted by `aesgcm` is `k8s:enc:aesgcm:v1:<key name>:` followed by a
//! random 12-byte nonce and the AES-256-GCM ciphertext of the object, with
//! the store key as associated data (a ciphertext moved under another key
//! does not decrypt). A value without that prefix is plain JSON, readable
//! only while `identity` is listed.
//!
//! On first start the controller writes a configuration with one fresh
//! 256-bit key into its data directory (mode 0600). Rotation: put a new
//! key first in the list, keep the old one after it, restart the
//! controller: at start it rewrites every stored value not encrypted with
//! the first provider's first key (see [`EncryptingStore::rewrite_stale`]);
//! the old key can then be removed.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, bail};
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use super::{
    Compare, EventStream, KeyValue, Op, Page, Store, StoreError, Txn, TxnOutcome, WatchItem,
};

/// The prefix of every encrypted value, as kube-apiserver writes it.
const ENC_PREFIX: &[u8] = b"k8s:enc:";
/// The file name of the generated configuration in the data directory.
pub const CONFIG_FILE: &str = "encryption-config.yaml";

/// kube-apiserver's `EncryptionConfiguration` (apiserver.config.k8s.io/v1),
/// the parts Weft reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EncryptionConfiguration {
    pub api_version: String,
    pub kind: String,
    pub resources: Vec<ResourceConfig>,
}

/// Which resources a list of providers applies to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceConfig {
    /// Plural names (`secrets`, `configmaps`), as kube spells them.
    pub resources: Vec<String>,
    pub providers: Vec<ProviderConfig>,
}

/// One provider; exactly one of its fields is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aesgcm: Option<KeysConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeysConfig {
    pub keys: Vec<KeyConfig>,
}

/// A named key: `secret` is the base64 of 32 random bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyConfig {
    pub name: String,
    pub secret: String,
}

/// What reads and writes one resource's values.
#[derive(Clone)]
enum Provider {
    AesGcm(Vec<(String, Arc<LessSafeKey>)>),
    Identity,
}

/// The transformers of one resource: the first provider writes.
#[derive(Clone)]
struct Transformer {
    prefix: String,
    resource: String,
    providers: Vec<Provider>,
}

impl Transformer {
    fn encrypt(&self, key: &str, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        match &self.providers[0] {
            Provider::Identity => Ok(plain.to_vec()),
            Provider::AesGcm(keys) => {
                let (name, k) = &keys[0];
                let mut nonce = [0u8; NONCE_LEN];
                aws_lc_rs::rand::fill(&mut nonce)
                    .map_err(|_| StoreError::Other("no randomness for a nonce".into()))?;
                let mut sealed = plain.to_vec();
                k.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(key.as_bytes()),
                    &mut sealed,
                )
                .map_err(|_| StoreError::Other(format!("encrypting {key} failed")))?;
                let mut out = format!("k8s:enc:aesgcm:v1:{name}:").into_bytes();
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&sealed);
                Ok(out)
            }
        }
    }

    /// The plain value, and whether it was written by anything but the
    /// first provider's first key (it should be rewritten).
    fn decrypt(&self, key: &str, stored: &[u8]) -> Result<(Vec<u8>, bool), StoreError> {
        let fail = |why: String| {
            StoreError::Other(format!(
                "{key} cannot be decrypted: {why} (is the encryption configuration the one it was written with?)"
            ))
        };
        let Some(rest) = stored.strip_prefix(ENC_PREFIX) else {
            let readable = self
                .providers
                .iter()
                .any(|p| matches!(p, Provider::Identity));
            if !readable {
                return Err(fail(
                    "it is stored unencrypted and the identity provider is not listed".into(),
                ));
            }
            let stale = !matches!(self.providers[0], Provider::Identity);
            return Ok((stored.to_vec(), stale));
        };
        let Some(rest) = rest.strip_prefix(b"aesgcm:v1:") else {
            return Err(fail(
                "it was written by a provider Weft does not have".into(),
            ));
        };
        let colon = rest
            .iter()
            .position(|b| *b == b':')
            .ok_or_else(|| fail("no key name".into()))?;
        let name = String::from_utf8_lossy(&rest[..colon]).into_owned();
        let body = &rest[colon + 1..];
        if body.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(fail("the value is truncated".into()));
        }
        for (i, p) in self.providers.iter().enumerate() {
            let Provider::AesGcm(keys) = p else { continue };
            for (j, (n, k)) in keys.iter().enumerate() {
                if *n != name {
                    continue;
                }
                let nonce = Nonce::try_assume_unique_for_key(&body[..NONCE_LEN])
                    .map_err(|_| fail("bad nonce".into()))?;
                let mut buf = body[NONCE_LEN..].to_vec();
                let plain = k
                    .open_in_place(nonce, Aad::from(key.as_bytes()), &mut buf)
                    .map_err(|_| fail(format!("key \"{name}\" does not open it")))?;
                let plain = plain.to_vec();
                return Ok((plain, i != 0 || j != 0));
            }
        }
        Err(fail(format!("no key named \"{name}\" is configured")))
    }
}

/// Reads an `EncryptionConfiguration` file.
pub fn load(path: &Path) -> anyhow::Result<EncryptionConfiguration> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let cfg: EncryptionConfiguration = serde_norway::from_str(&text)
        .with_context(|| format!("{} is not an EncryptionConfiguration", path.display()))?;
    Ok(cfg)
}

/// The configuration in `data_dir`, written with a fresh key when there is
/// none yet; its path.
pub fn ensure_default(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join(CONFIG_FILE);
    if path.exists() {
        return Ok(path);
    }
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).map_err(|_| anyhow::anyhow!("no randomness for a key"))?;
    let name = format!(
        "key-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    );
    let cfg = EncryptionConfiguration {
        api_version: "apiserver.config.k8s.io/v1".into(),
        kind: "EncryptionConfiguration".into(),
        resources: vec![ResourceConfig {
            resources: vec!["secrets".into()],
            providers: vec![
                ProviderConfig {
                    aesgcm: Some(KeysConfig {
                        keys: vec![KeyConfig {
                            name,
                            secret: base64::engine::general_purpose::STANDARD.encode(key),
                        }],
                    }),
                    identity: None,
                },
                ProviderConfig {
                    identity: Some(BTreeMap::new()),
                    aesgcm: None,
                },
            ],
        }],
    };
    let text = format!(
        "# Written by the Weft controller: the keys that encrypt Secrets at rest.\n# Keep a copy somewhere safe: without it, stored Secrets cannot be read.\n# Rotation: docs/CONTROLLER.md.\n{}",
        serde_norway::to_string(&cfg)?
    );
    crate::private_file::write_private(&path, &text)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// A store that encrypts some resources' values (see the module docs).
pub struct EncryptingStore {
    inner: Arc<dyn Store>,
    transformers: Arc<Vec<Transformer>>,
}

impl EncryptingStore {
    /// `inner`, encrypting what `cfg` names. Errors name what is wrong in
    /// the configuration.
    pub fn new(inner: Arc<dyn Store>, cfg: &EncryptionConfiguration) -> anyhow::Result<Self> {
        if cfg.kind != "EncryptionConfiguration" {
            bail!("kind must be EncryptionConfiguration, not {:?}", cfg.kind);
        }
        let mut transformers = Vec::new();
        for (i, rc) in cfg.resources.iter().enumerate() {
            if rc.providers.is_empty() {
                bail!("resources[{i}].providers: at least one provider is needed");
            }
            let mut providers = Vec::new();
            for (j, p) in rc.providers.iter().enumerate() {
                let at = format!("resources[{i}].providers[{j}]");
                providers.push(match (&p.aesgcm, &p.identity) {
                    (Some(k), None) => {
                        if k.keys.is_empty() {
                            bail!("{at}.aesgcm.keys: at least one key is needed");
                        }
                        let mut keys = Vec::new();
                        for (n, kc) in k.keys.iter().enumerate() {
                            if kc.name.is_empty() || kc.name.contains(':') {
                                bail!(
                                    "{at}.aesgcm.keys[{n}].name: must be non-empty, without ':'"
                                );
                            }
                            let raw = base64::engine::general_purpose::STANDARD
                                .decode(kc.secret.trim())
                                .with_context(|| {
                                    format!("{at}.aesgcm.keys[{n}].secret is not base64")
                                })?;
                            if raw.len() != 32 {
                                bail!(
                                    "{at}.aesgcm.keys[{n}].secret: Weft takes 32-byte (AES-256) keys; this one has {} bytes",
                                    raw.len()
                                );
                            }
                            let key = UnboundKey::new(&AES_256_GCM, &raw)
                                .map_err(|_| anyhow::anyhow!("{at}: bad key"))?;
                            keys.push((kc.name.clone(), Arc::new(LessSafeKey::new(key))));
                        }
                        Provider::AesGcm(keys)
                    }
                    (None, Some(_)) => Provider::Identity,
                    _ => bail!("{at}: exactly one of aesgcm and identity (Weft has no other)"),
                });
            }
            for r in &rc.resources {
                let res = weft_api::resources::RESOURCES
                    .iter()
                    .find(|res| {
                        let full = if res.group.is_empty() {
                            res.plural.to_string()
                        } else {
                            format!("{}.{}", res.plural, res.group)
                        };
                        *r == full
                    })
                    .with_context(|| {
                        format!("resources[{i}].resources: {r:?} is not a resource Weft serves")
                    })?;
                if transformers.iter().any(|t: &Transformer| t.resource == *r) {
                    bail!("resources[{i}].resources: {r:?} is listed twice");
                }
                transformers.push(Transformer {
                    prefix: res.key_prefix(),
                    resource: r.clone(),
                    providers: Vec::new(),
                });
            }
            // Each resource of the entry gets its own copy of the providers.
            let n = rc.resources.len();
            let start = transformers.len() - n;
            for t in &mut transformers[start..] {
                t.providers = providers.clone();
            }
        }
        Ok(Self {
            inner,
            transformers: Arc::new(transformers),
        })
    }

    fn transformer(&self, key: &str) -> Option<&Transformer> {
        transformer(&self.transformers, key)
    }

    fn open(&self, kv: KeyValue) -> Result<KeyValue, StoreError> {
        open(&self.transformers, kv)
    }

    fn open_all(&self, kvs: Vec<KeyValue>) -> Result<Vec<KeyValue>, StoreError> {
        kvs.into_iter().map(|kv| self.open(kv)).collect()
    }

    /// Rewrites every value of an encrypted resource that is not written by
    /// its first provider's first key (after a rotation, or once
    /// encryption is turned on), each with a compare on its revision so that
    /// a concurrent write wins. Returns how many were rewritten.
    pub async fn rewrite_stale(&self) -> Result<usize, StoreError> {
        let mut done = 0;
        for t in self.transformers.iter() {
            let (kvs, _) = self.inner.list(&t.prefix).await?;
            for kv in kvs {
                let (plain, stale) = t.decrypt(&kv.key, &kv.value)?;
                if !stale {
                    continue;
                }
                let txn = Txn::new()
                    .when(Compare::at(&kv.key, kv.mod_revision))
                    .then(Op::put(&kv.key, t.encrypt(&kv.key, &plain)?));
                if self.inner.txn(txn).await?.applied().is_some() {
                    done += 1;
                }
            }
        }
        Ok(done)
    }

    /// The resources encrypted, for the log.
    pub fn resources(&self) -> Vec<&str> {
        self.transformers
            .iter()
            .filter(|t| !matches!(t.providers[0], Provider::Identity))
            .map(|t| t.resource.as_str())
            .collect()
    }
}

fn transformer<'a>(transformers: &'a [Transformer], key: &str) -> Option<&'a Transformer> {
    transformers.iter().find(|t| key.starts_with(&t.prefix))
}

/// `kv` with its value decrypted, when its resource is encrypted.
fn open(transformers: &[Transformer], mut kv: KeyValue) -> Result<KeyValue, StoreError> {
    if let Some(t) = transformer(transformers, &kv.key) {
        kv.value = t.decrypt(&kv.key, &kv.value)?.0;
    }
    Ok(kv)
}

#[async_trait::async_trait]
impl Store for EncryptingStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner
            .get(key)
            .await?
            .map(|kv| self.open(kv))
            .transpose()
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError> {
        let (kvs, rev) = self.inner.list(prefix).await?;
        Ok((self.open_all(kvs)?, rev))
    }

    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        at: Option<i64>,
    ) -> Result<Page, StoreError> {
        let mut page = self.inner.list_page(prefix, after, limit, at).await?;
        page.items = self.open_all(std::mem::take(&mut page.items))?;
        Ok(page)
    }

    async fn txn(&self, mut txn: Txn) -> Result<TxnOutcome, StoreError> {
        for op in &mut txn.ops {
            if let Op::Put { key, value } = op
                && let Some(t) = self.transformer(key)
            {
                *value = t.encrypt(key, value)?;
            }
        }
        self.inner.txn(txn).await
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<EventStream, StoreError> {
        let stream = self.inner.watch(prefix, after).await?;
        let transformers = self.transformers.clone();
        Ok(Box::pin(stream.map(move |item| match item {
            Ok(WatchItem::Event(mut e)) => {
                e.kv = open(&transformers, e.kv)?;
                e.prev = e.prev.map(|p| open(&transformers, p)).transpose()?;
                Ok(WatchItem::Event(e))
            }
            other => other,
        })))
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        self.inner.revision().await
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}
