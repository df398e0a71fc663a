//! The three patch types Kubernetes clients send: JSON merge patch (RFC
//! 7386), JSON patch (RFC 6902) and strategic merge patch, which merges lists
//! of named things (containers, ports, env, ...) by their key instead of
//! replacing them (`weft_api::strategic`, shared with `weft apply`).
//! kubectl's client-side `apply` sends strategic merge patches.

use serde_json::Value;
use weft_api::ApiError;
pub use weft_api::strategic::strategic_merge;

/// Operations a JSON patch may hold, at most, as in kube-apiserver.
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// The size of `v` encoded as JSON, without encoding it anywhere.
fn json_size(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    let _ = serde_json::to_writer(&mut n, v);
    n.0
}

/// Applies JSON patch `ops` to `target`, an operation at a time: at most
/// [`MAX_JSON_PATCH_OPERATIONS`] (413), and its `copy` operations may copy
/// `copy_limit` bytes together (422). Without that bound, a small patch that
/// copies a value into itself again and again doubles it each time (20
/// operations on a 100 KiB string are 100 GiB).
fn json_patch_bounded(
    target: &mut Value,
    ops: &[json_patch::PatchOperation],
    copy_limit: usize,
) -> Result<(), ApiError> {
    if ops.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(ApiError::entity_too_large(format!(
            "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            ops.len()
        )));
    }
    let mut copied = 0usize;
    for (i, op) in ops.iter().enumerate() {
        if let json_patch::PatchOperation::Copy(c) = op {
            copied += target.pointer(c.from.as_str()).map_or(0, json_size);
            if copied > copy_limit {
                return Err(ApiError::invalid_patch(format!(
                    "operation {i}: its copy operations copy more than {copy_limit} bytes together"
                )));
            }
        }
        json_patch::patch(target, std::slice::from_ref(op)).map_err(|e| {
            ApiError::invalid_patch(format!(
                "operation '/{i}' failed at path '{}': {}",
                e.path, e.kind
            ))
        })?;
    }
    Ok(())
}

/// Applies a patch of `content_type` to `target`; a JSON patch's copies may
/// copy `copy_limit` bytes together (see [`json_patch_bounded`]).
pub fn apply(
    content_type: &str,
    target: &mut Value,
    patch: &[u8],
    copy_limit: usize,
) -> Result<(), ApiError> {
    let kind = content_type.split(';').next().unwrap_or_default().trim();
    match kind {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            let patch: Value = serde_json::from_slice(patch)
                .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            if kind == "application/merge-patch+json" {
                json_patch::merge(target, &patch);
                Ok(())
            } else {
                strategic_merge(target, &patch)
            }
        }
        "application/json-patch+json" => {
            let patch: json_patch::Patch = serde_json::from_slice(patch).map_err(|e| {
                ApiError::bad_request(format!("the JSON patch does not parse: {e}"))
            })?;
            json_patch_bounded(target, &patch.0, copy_limit)
        }
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
            Err(ApiError::unsupported_media_type(
                "server-side apply of this subresource (application/apply-patch+yaml) is not supported; apply the object, or use a merge patch",
            ))
        }
        other => Err(ApiError::unsupported_media_type(if other.is_empty() {
            "no Content-Type"
        } else {
            other
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMIT: usize = 1536 * 1024;

    #[test]
    fn json_patch_copies_and_operations_are_bounded() {
        // A value copied into itself doubles with each copy: refused once
        // the copies pass the limit, and the target is not grown past it.
        let mut ops = vec![json!({"op": "add", "path": "/zz", "value": ["A".repeat(100 * 1024)]})];
        ops.extend((0..20).map(|_| json!({"op": "copy", "from": "/zz", "path": "/zz/-"})));
        let mut obj = json!({});
        let err = apply(
            "application/json-patch+json",
            &mut obj,
            &serde_json::to_vec(&ops).unwrap(),
            LIMIT,
        )
        .unwrap_err();
        assert_eq!(err.code, 422, "{err:?}");
        assert!(
            err.message.contains("copy more than 1572864 bytes"),
            "{}",
            err.message
        );
        assert!(json_size(&obj) <= 2 * LIMIT, "{}", json_size(&obj));
        // A few copies under the limit apply.
        let ops = json!([{"op": "add", "path": "/a", "value": "x"}, {"op": "copy", "from": "/a", "path": "/b"}]);
        let mut obj = json!({});
        apply(
            "application/json-patch+json",
            &mut obj,
            &serde_json::to_vec(&ops).unwrap(),
            LIMIT,
        )
        .unwrap();
        assert_eq!(obj, json!({"a": "x", "b": "x"}));
        // More operations than kube-apiserver takes: 413.
        let ops: Vec<_> = (0..=MAX_JSON_PATCH_OPERATIONS)
            .map(|_| json!({"op": "test", "path": "", "value": {}}))
            .collect();
        let err = apply(
            "application/json-patch+json",
            &mut json!({}),
            &serde_json::to_vec(&ops).unwrap(),
            LIMIT,
        )
        .unwrap_err();
        assert_eq!(err.code, 413, "{err:?}");
    }

    #[test]
    fn merge_and_json_patch() {
        let mut obj = json!({"a": {"b": 1, "c": [1, 2]}});
        apply(
            "application/merge-patch+json",
            &mut obj,
            br#"{"a":{"b":null,"c":[3]}}"#,
            LIMIT,
        )
        .unwrap();
        assert_eq!(obj, json!({"a": {"c": [3]}}));
        apply(
            "application/json-patch+json",
            &mut obj,
            br#"[{"op":"add","path":"/a/d","value":4}]"#,
            LIMIT,
        )
        .unwrap();
        assert_eq!(obj["a"]["d"], 4);
        let err = apply(
            "application/json-patch+json",
            &mut obj,
            br#"[{"op":"test","path":"/a/d","value":5}]"#,
            LIMIT,
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(
            apply("application/apply-patch+yaml", &mut obj, b"{}", LIMIT)
                .unwrap_err()
                .code,
            415
        );
        assert_eq!(
            apply("application/merge-patch+json", &mut obj, b"[1]", LIMIT)
                .unwrap_err()
                .code,
            400
        );
    }
}
