//! How objects sit in the store, for every kind alike: JSON without
//! `metadata.resourceVersion`, which is the key's `mod_revision` put back
//! on every read, so that the two can never disagree.

use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use weft_api::error::ApiError;

use crate::store::{KeyValue, StoreError};

/// A store error as the API answers it.
pub fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Compacted { requested, oldest } => {
            ApiError::gone(format!("too old resource version: {requested} ({oldest})"))
        }
        other => ApiError::internal(other),
    }
}

/// Decodes a stored value as JSON, with its revision as the
/// resourceVersion (the API's read path: no kind needs to be known).
pub fn decode_stored(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::internal(format!("stored object {} does not decode: {e}", kv.key))
    })?;
    set_rv(&mut obj, kv.mod_revision);
    Ok(obj)
}

/// Decodes a stored value as its typed kind, with its revision as the
/// resourceVersion.
pub fn decode_typed<K>(kv: &KeyValue) -> Result<K, ApiError>
where
    K: kube::Resource + DeserializeOwned,
{
    let mut obj: K = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::internal(format!("stored object {} does not decode: {e}", kv.key))
    })?;
    obj.meta_mut().resource_version = Some(kv.mod_revision.to_string());
    Ok(obj)
}

/// The bytes to store for `obj`: without its resourceVersion.
pub fn encode<K: kube::Resource + Serialize + Clone>(obj: &K) -> Vec<u8> {
    let mut obj = obj.clone();
    obj.meta_mut().resource_version = None;
    serde_json::to_vec(&obj).expect("k8s-openapi objects encode")
}

/// The stored JSON with `metadata.resourceVersion` spliced in, without
/// decoding it: what a watch sends per event and per watcher, so it must be
/// cheap. `None` when the object has no top-level metadata object.
pub fn splice_rv(stored: &[u8], rev: i64) -> Option<Vec<u8>> {
    let (mut depth, mut in_string, mut escaped) = (0i32, false, false);
    let mut key_start = None;
    let mut i = 0;
    while i < stored.len() {
        let b = stored[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
                // A top-level key "metadata" followed by ':' and '{'.
                if depth == 1 && key_start.is_some_and(|s| &stored[s..i] == b"metadata") {
                    let mut j = i + 1;
                    while j < stored.len() && stored[j].is_ascii_whitespace() {
                        j += 1;
                    }
                    if stored.get(j) == Some(&b':') {
                        j += 1;
                        while j < stored.len() && stored[j].is_ascii_whitespace() {
                            j += 1;
                        }
                        if stored.get(j) == Some(&b'{') {
                            let mut k = j + 1;
                            while k < stored.len() && stored[k].is_ascii_whitespace() {
                                k += 1;
                            }
                            let empty = stored.get(k) == Some(&b'}');
                            let field = format!(
                                "\"resourceVersion\":\"{rev}\"{}",
                                if empty { "" } else { "," }
                            );
                            let mut out = Vec::with_capacity(stored.len() + field.len());
                            out.extend_from_slice(&stored[..=j]);
                            out.extend_from_slice(field.as_bytes());
                            out.extend_from_slice(&stored[j + 1..]);
                            return Some(out);
                        }
                    }
                }
                key_start = None;
            }
        } else {
            match b {
                b'"' => {
                    in_string = true;
                    key_start = Some(i + 1);
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => depth -= 1,
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Puts `rev` as the resourceVersion of a JSON object.
pub fn set_rv(obj: &mut Value, rev: i64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(rev.to_string()));
    }
}

/// The resourceVersion of a typed object, as a revision (0 when unset).
pub fn revision_of<K: kube::Resource>(obj: &K) -> i64 {
    obj.meta()
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// Parses a resourceVersion the client sent.
pub fn parse_rv(rv: &str) -> Result<i64, ApiError> {
    // Digits only, as Go's ParseUint reads it (no sign, no spaces).
    let digits = !rv.is_empty() && rv.bytes().all(|b| b.is_ascii_digit());
    digits
        .then(|| rv.parse::<i64>().ok())
        .flatten()
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid resourceVersion \"{rv}\": must be a non-negative integer"
            ))
        })
}

/// Random suffix for generateName, from the alphabet Kubernetes uses (no
/// vowels, no look-alike characters).
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4();
    bytes.as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_matches_decoding() {
        for obj in [
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "labels": {"metadata": "x"}}, "spec": {"template": {"metadata": {}}}}),
            json!({"kind": "Pod", "metadata": {}, "data": "\"metadata\":{"}),
            json!({"a": {"metadata": {"x": 1}}, "metadata": {"name": "b"}}),
        ] {
            let stored = serde_json::to_vec(&obj).expect("encodes");
            let spliced: Value =
                serde_json::from_slice(&splice_rv(&stored, 42).expect("has metadata"))
                    .expect("valid JSON");
            let mut want = obj.clone();
            set_rv(&mut want, 42);
            assert_eq!(spliced, want);
        }
        assert!(splice_rv(b"{\"kind\":\"x\"}", 1).is_none());
    }

    #[test]
    fn typed_objects_are_stored_without_their_revision() {
        let mut pod = k8s_openapi::api::core::v1::Pod::default();
        pod.metadata.name = Some("a".into());
        pod.metadata.resource_version = Some("7".into());
        let stored = encode(&pod);
        assert!(!String::from_utf8_lossy(&stored).contains("resourceVersion"));
        let kv = KeyValue {
            key: "/registry/core/pods/default/a".into(),
            value: stored,
            create_revision: 3,
            mod_revision: 9,
        };
        let back: k8s_openapi::api::core::v1::Pod = decode_typed(&kv).expect("decodes");
        assert_eq!(revision_of(&back), 9);
        assert_eq!(
            decode_stored(&kv).expect("decodes")["metadata"]["resourceVersion"],
            "9"
        );
    }
}
