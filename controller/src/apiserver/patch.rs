//! The three patch types Kubernetes clients send: JSON merge patch (RFC
//! 7386), JSON patch (RFC 6902) and strategic merge patch, which merges lists
//! of named things (containers, ports, env, ...) by their key instead of
//! replacing them. kubectl's client-side `apply` sends strategic merge patches.

use serde_json::{Map, Value};
use weft_api::ApiError;

/// The key that identifies an element of the list in field `field`, as the
/// Kubernetes types' `patchMergeKey` tags say; `None` for lists that a patch
/// replaces whole.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    let has = |k: &str| items.iter().any(|i| i.get(k).is_some());
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => "name",
        "ports" if has("containerPort") => "containerPort",
        "ports" => "port",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "addresses" if has("type") && has("address") => "type",
        "hostAliases" => "ip",
        "ownerReferences" => "uid",
        "taints" => "key",
        "topologySpreadConstraints" => "topologyKey",
        "resourceClaims" => "name",
        _ => return None,
    })
}

/// Lists of scalars that a strategic patch merges as sets.
fn merges_scalars(field: &str) -> bool {
    field == "finalizers"
}

/// Applies a strategic merge patch to `target`.
pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => merge_map(t, p),
        _ => {
            *target = patch.clone();
            Ok(())
        }
    }
}

fn merge_map(target: &mut Map<String, Value>, patch: &Map<String, Value>) -> Result<(), ApiError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            *target = replaced;
            return Ok(());
        }
        Some("delete") => {
            target.clear();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown patch directive $patch: {other}"
            )));
        }
    }
    if let Some(keep) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            // Order only: applied after the field is merged, below.
            let _ = field;
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(remove)) = (
                target.get_mut(field).and_then(Value::as_array_mut),
                value.as_array(),
            ) {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if value.is_null() {
            target.remove(key);
            continue;
        }
        match (target.get_mut(key), value) {
            (Some(Value::Object(t)), Value::Object(p)) => merge_map(t, p)?,
            (Some(Value::Array(t)), Value::Array(p)) => merge_list(key, t, p)?,
            (_, Value::Object(p)) => {
                let mut fresh = Map::new();
                merge_map(&mut fresh, p)?;
                if p.get("$patch").and_then(Value::as_str) != Some("delete") {
                    target.insert(key.clone(), Value::Object(fresh));
                } else {
                    target.remove(key);
                }
            }
            (_, Value::Array(p)) => {
                let mut fresh = Vec::new();
                merge_list(key, &mut fresh, p)?;
                target.insert(key.clone(), Value::Array(fresh));
            }
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
    for (key, order) in patch {
        if let Some(field) = key.strip_prefix("$setElementOrder/")
            && let (Some(list), Some(order)) = (
                target.get_mut(field).and_then(Value::as_array_mut),
                order.as_array(),
            )
        {
            reorder(field, list, order);
        }
    }
    Ok(())
}

fn merge_list(field: &str, target: &mut Vec<Value>, patch: &[Value]) -> Result<(), ApiError> {
    // `[{"$patch": "replace"}, ...]` replaces the whole list.
    if patch
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *target = patch
            .iter()
            .filter(|p| p.get("$patch").is_none())
            .cloned()
            .collect();
        return Ok(());
    }
    let mut sample = target.clone();
    sample.extend(patch.iter().cloned());
    if let Some(mkey) = merge_key(field, &sample) {
        for item in patch {
            let Some(id) = item.get(mkey) else {
                return Err(ApiError::bad_request(format!(
                    "strategic merge patch: an element of {field} lacks its merge key \"{mkey}\""
                )));
            };
            let pos = target.iter().position(|t| t.get(mkey) == Some(id));
            let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
            match (pos, delete) {
                (Some(i), true) => {
                    target.remove(i);
                }
                (None, true) => {}
                (Some(i), false) => {
                    if let (Some(t), Some(p)) = (target[i].as_object_mut(), item.as_object()) {
                        merge_map(t, p)?;
                    }
                }
                (None, false) => {
                    let mut fresh = Map::new();
                    if let Some(p) = item.as_object() {
                        merge_map(&mut fresh, p)?;
                    }
                    target.push(Value::Object(fresh));
                }
            }
        }
    } else if merges_scalars(field) {
        for item in patch {
            if !target.contains(item) {
                target.push(item.clone());
            }
        }
    } else {
        *target = patch.to_vec();
    }
    Ok(())
}

fn reorder(field: &str, list: &mut [Value], order: &[Value]) {
    let key = merge_key(field, list);
    let id = |v: &Value| -> Value {
        match key {
            Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let position = |v: &Value| {
        order
            .iter()
            .position(|o| id(o) == id(v))
            .unwrap_or(usize::MAX)
    };
    list.sort_by_key(|v| position(v));
}

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

    #[test]
    fn strategic_merges_containers_by_name() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "x:1", "env": [{"name": "K", "value": "1"}]},
            {"name": "b", "image": "y:1"}
        ]}});
        let patch = json!({"spec": {"containers": [
            {"name": "a", "image": "x:2", "env": [{"name": "L", "value": "2"}]},
            {"name": "b", "$patch": "delete"},
            {"name": "c", "image": "z:1"}
        ]}});
        strategic_merge(&mut pod, &patch).unwrap();
        assert_eq!(
            pod,
            json!({"spec": {"containers": [
                {"name": "a", "image": "x:2", "env": [{"name": "K", "value": "1"}, {"name": "L", "value": "2"}]},
                {"name": "c", "image": "z:1"}
            ]}})
        );
    }

    #[test]
    fn strategic_directives() {
        let mut obj = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]}, "spec": {"args": ["1", "2"], "ports": [{"port": 80}, {"port": 81}]}});
        let patch = json!({
            "metadata": {"labels": {"b": null}, "finalizers": ["y"]},
            "spec": {"args": ["3"], "$setElementOrder/ports": [{"port": 81}, {"port": 80}], "ports": [{"port": 80, "name": "http"}]}
        });
        strategic_merge(&mut obj, &patch).unwrap();
        assert_eq!(obj["metadata"]["labels"], json!({"a": "1"}));
        assert_eq!(obj["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(
            obj["spec"]["args"],
            json!(["3"]),
            "lists without a merge key are replaced"
        );
        assert_eq!(
            obj["spec"]["ports"],
            json!([{"port": 81}, {"port": 80, "name": "http"}])
        );
        let mut obj = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        strategic_merge(&mut obj, &patch).unwrap();
        assert_eq!(obj, json!({"spec": {"strategy": {"type": "Recreate"}}}));
    }

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
