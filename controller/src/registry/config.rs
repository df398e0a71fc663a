//! ConfigMaps and Secrets, validated as kube-apiserver validates them
//! (`ValidateConfigMap`, `ValidateSecret`): keys of `[-._a-zA-Z0-9]+`, at
//! most 1 MiB of data, the required keys of each built-in Secret type, and
//! `immutable` objects whose data never changes again. A Secret's
//! `stringData` is merged into its `data` on every write and never stored,
//! as kube does. Secrets are encrypted at rest by the store (see
//! `crate::store::encrypt`); nothing here logs or echoes their values.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use weft_api::error::Cause;

use super::kind::{Kind, kind_fields};

/// The most data (values of every key together) a ConfigMap or a Secret
/// holds: kube's `MaxSecretSize`.
pub const MAX_DATA: usize = 1024 * 1024;

/// The Secret types kube-apiserver knows, which Weft checks alike.
pub const OPAQUE: &str = "Opaque";

/// What is wrong with a ConfigMap or Secret key (kube's `IsConfigMapKey`).
pub fn key_errors(key: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    if key.len() > 253 {
        out.push("must be no more than 253 characters");
    }
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        out.push("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')");
    }
    if key == "." {
        out.push("must not be '.'");
    } else if key == ".." {
        out.push("must not be '..'");
    } else if key.starts_with("..") {
        out.push("must not start with '..'");
    }
    out
}

fn check_keys<'a>(out: &mut Vec<Cause>, field: &str, keys: impl Iterator<Item = &'a String>) {
    for k in keys {
        for msg in key_errors(k) {
            out.push(Cause::invalid(format!("{field}[{k}]"), k, msg));
        }
    }
}

/// kube's rule for `immutable` objects: it stays set, and `fields` (the
/// data) stay as they were.
fn check_immutable(
    out: &mut Vec<Cause>,
    old: Option<bool>,
    new: Option<bool>,
    fields: &[(&str, bool)],
) {
    if old != Some(true) {
        return;
    }
    let why = "field is immutable when `immutable` is set";
    if new != Some(true) {
        out.push(Cause::forbidden("immutable", why));
    }
    for (field, same) in fields {
        if !same {
            out.push(Cause::forbidden(*field, why));
        }
    }
}

#[async_trait]
impl Kind for ConfigMap {
    kind_fields!();

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        let data = self.data.as_ref();
        let binary = self.binary_data.as_ref();
        check_keys(&mut out, "data", data.into_iter().flat_map(BTreeMap::keys));
        check_keys(
            &mut out,
            "binaryData",
            binary.into_iter().flat_map(BTreeMap::keys),
        );
        for k in data.into_iter().flat_map(BTreeMap::keys) {
            if binary.is_some_and(|b| b.contains_key(k)) {
                out.push(Cause::invalid(
                    format!("data[{k}]"),
                    k,
                    "duplicate of key present in binaryData",
                ));
            }
        }
        let size: usize = data
            .into_iter()
            .flatten()
            .map(|(_, v)| v.len())
            .sum::<usize>()
            + binary
                .into_iter()
                .flatten()
                .map(|(_, v)| v.0.len())
                .sum::<usize>();
        if size > MAX_DATA {
            out.push(Cause::too_long("", MAX_DATA));
        }
        out
    }

    fn validate_update(&self, old: &Self) -> Vec<Cause> {
        let mut out = Vec::new();
        check_immutable(
            &mut out,
            old.immutable,
            self.immutable,
            &[
                ("data", self.data == old.data),
                ("binaryData", self.binary_data == old.binary_data),
            ],
        );
        out
    }
}

#[async_trait]
impl Kind for Secret {
    kind_fields!();

    fn default_fields(&mut self) {
        // stringData is write-only: merged into data (winning over the
        // same key there), never stored.
        if let Some(strings) = self.string_data.take() {
            let data = self.data.get_or_insert_with(BTreeMap::new);
            for (k, v) in strings {
                data.insert(k, ByteString(v.into_bytes()));
            }
        }
        self.type_.get_or_insert_with(|| OPAQUE.into());
    }

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        let empty = BTreeMap::new();
        let data = self.data.as_ref().unwrap_or(&empty);
        check_keys(&mut out, "data", data.keys());
        let size: usize = data.values().map(|v| v.0.len()).sum();
        if size > MAX_DATA {
            out.push(Cause::too_long("data", MAX_DATA));
        }
        let need = |out: &mut Vec<Cause>, key: &str| {
            if !data.contains_key(key) {
                out.push(Cause::required(format!("data[{key}]")));
            }
        };
        let json_key = |out: &mut Vec<Cause>, key: &str| {
            if let Some(v) = data.get(key) {
                if let Err(e) =
                    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&v.0)
                {
                    out.push(Cause::invalid(
                        format!("data[{key}]"),
                        "<secret contents redacted>",
                        e,
                    ));
                }
            } else {
                out.push(Cause::required(format!("data[{key}]")));
            }
        };
        match self.type_.as_deref().unwrap_or(OPAQUE) {
            "kubernetes.io/service-account-token" => {
                let annotated = self
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("kubernetes.io/service-account.name"))
                    .is_some_and(|v| !v.is_empty());
                if !annotated {
                    out.push(Cause::required(
                        "metadata.annotations[kubernetes.io/service-account.name]",
                    ));
                }
            }
            "kubernetes.io/dockercfg" => json_key(&mut out, ".dockercfg"),
            "kubernetes.io/dockerconfigjson" => json_key(&mut out, ".dockerconfigjson"),
            "kubernetes.io/basic-auth"
                if !data.contains_key("username") && !data.contains_key("password") =>
            {
                need(&mut out, "username");
                need(&mut out, "password");
            }
            "kubernetes.io/ssh-auth"
                if data.get("ssh-privatekey").is_none_or(|v| v.0.is_empty()) =>
            {
                out.push(Cause::required("data[ssh-privatekey]"));
            }
            "kubernetes.io/tls" => {
                need(&mut out, "tls.crt");
                need(&mut out, "tls.key");
            }
            _ => {}
        }
        out
    }

    fn validate_update(&self, old: &Self) -> Vec<Cause> {
        let mut out = Vec::new();
        if self.type_ != old.type_ {
            out.push(Cause::invalid(
                "type",
                self.type_.as_deref().unwrap_or_default(),
                "field is immutable",
            ));
        }
        check_immutable(
            &mut out,
            old.immutable,
            self.immutable,
            &[("data", self.data == old.data)],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_kube() {
        assert!(key_errors("key.name").is_empty());
        assert!(key_errors("KEY_NAME-1").is_empty());
        assert!(key_errors(".hidden").is_empty());
        assert_eq!(key_errors("a/b").len(), 1);
        assert_eq!(key_errors("").len(), 1);
        assert_eq!(key_errors(".."), vec!["must not be '..'"]);
        assert_eq!(key_errors("..data"), vec!["must not start with '..'"]);
        assert_eq!(key_errors(&"a".repeat(254)).len(), 1);
    }

    #[test]
    fn string_data_is_merged_and_dropped() {
        let mut s = Secret {
            data: Some([("a".to_string(), ByteString(b"1".to_vec()))].into()),
            string_data: Some([("a".to_string(), "2".to_string())].into()),
            ..Secret::default()
        };
        s.default_fields();
        assert_eq!(s.string_data, None);
        assert_eq!(s.data.unwrap()["a"].0, b"2");
        assert_eq!(s.type_.as_deref(), Some(OPAQUE));
    }

    #[test]
    fn immutable_data_stays() {
        let old = ConfigMap {
            immutable: Some(true),
            data: Some([("a".to_string(), "1".to_string())].into()),
            ..ConfigMap::default()
        };
        let mut new = old.clone();
        assert!(new.validate_update(&old).is_empty());
        new.data = Some([("a".to_string(), "2".to_string())].into());
        new.immutable = None;
        let fields: Vec<_> = new
            .validate_update(&old)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(fields, ["immutable", "data"]);
    }
}
