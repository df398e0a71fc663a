//! Strategic merge patches, as Kubernetes defines them for its built-in
//! kinds: lists of named things (containers, ports, env, volumes, ...)
//! merge item by item by their key instead of being replaced, with the
//! `$patch`, `$retainKeys`, `$setElementOrder` and
//! `$deleteFromPrimitiveList` directives. The API server applies them
//! (`PATCH` with `application/strategic-merge-patch+json`); `weft apply`
//! makes them ([`three_way`]), as kubectl's client-side apply does.

use serde_json::{Map, Value};

use crate::ApiError;

/// The key that identifies an element of the list in field `field`, as the
/// Kubernetes types' `patchMergeKey` tags say; `None` for lists that a patch
/// replaces whole.
pub fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
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

/// The strategic merge patch `weft apply` sends: it takes the object where
/// `desired` says and removes what `last` (the previous apply, from the
/// last-applied annotation) set and `desired` no longer does, leaving
/// alone what others set: fields by name, keyed list items by their key
/// (an item dropped from the manifest is deleted with `$patch: delete`;
/// items others added, such as the service account volume the API server
/// adds to pods, stay), other lists whole.
#[must_use]
pub fn three_way(last: &Value, desired: &Value) -> Value {
    match (last.as_object(), desired.as_object()) {
        (Some(l), Some(d)) => {
            let mut out = Map::new();
            for (k, v) in d {
                let sub = match (l.get(k), v) {
                    (Some(lv), Value::Object(_)) if lv.is_object() => three_way(lv, v),
                    (lv, Value::Array(items)) => match list_patch(k, lv, items) {
                        Some((patch, order)) => {
                            if let Some(order) = order {
                                out.insert(format!("$setElementOrder/{k}"), order);
                            }
                            patch
                        }
                        None => v.clone(),
                    },
                    _ => v.clone(),
                };
                out.insert(k.clone(), sub);
            }
            for k in l.keys() {
                if !d.contains_key(k) {
                    out.insert(k.clone(), Value::Null);
                }
            }
            Value::Object(out)
        }
        _ => desired.clone(),
    }
}

/// A keyed list's patch (its items, each a three-way patch of its own
/// with its key, plus deletions) and the order to set; `None` for a list a
/// patch replaces whole.
fn list_patch(
    field: &str,
    last: Option<&Value>,
    desired: &[Value],
) -> Option<(Value, Option<Value>)> {
    let empty = Vec::new();
    let last = last.and_then(Value::as_array).unwrap_or(&empty);
    let mut sample = last.clone();
    sample.extend(desired.iter().cloned());
    let key = merge_key(field, &sample)?;
    if desired
        .iter()
        .chain(last.iter())
        .any(|i| i.get(key).is_none())
    {
        return None;
    }
    let mut items = Vec::new();
    for d in desired {
        let id = &d[key];
        let item = match last.iter().find(|l| &l[key] == id) {
            Some(l) => {
                let mut p = three_way(l, d);
                p[key] = id.clone();
                p
            }
            None => d.clone(),
        };
        items.push(item);
    }
    for l in last {
        if !desired.iter().any(|d| d[key] == l[key]) {
            items.push(serde_json::json!({ key: l[key].clone(), "$patch": "delete" }));
        }
    }
    let order: Vec<Value> = desired
        .iter()
        .map(|d| serde_json::json!({ key: d[key].clone() }))
        .collect();
    Some((Value::Array(items), Some(Value::Array(order))))
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

    #[test]
    fn three_way_patches_keep_what_others_added() {
        let last = json!({"metadata": {"labels": {"tier": "back", "old": "x"}},
            "spec": {"containers": [{"name": "a", "image": "x:1", "args": ["1"]}, {"name": "gone", "image": "y"}],
                "volumes": [{"name": "v", "emptyDir": {}}]}});
        let desired = json!({"metadata": {"labels": {"tier": "front"}},
            "spec": {"containers": [{"name": "a", "image": "x:2"}],
                "volumes": [{"name": "v", "emptyDir": {}}]}});
        let live = json!({"metadata": {"labels": {"tier": "back", "old": "x", "added": "by-someone"}},
            "spec": {"containers": [{"name": "a", "image": "x:1", "args": ["1"], "volumeMounts": [{"name": "sa", "mountPath": "/sa"}]}, {"name": "gone", "image": "y"}],
                "volumes": [{"name": "v", "emptyDir": {}}, {"name": "sa", "projected": {}}]}});
        let patch = three_way(&last, &desired);
        let mut obj = live.clone();
        strategic_merge(&mut obj, &patch).unwrap();
        assert_eq!(
            obj["metadata"]["labels"],
            json!({"tier": "front", "added": "by-someone"})
        );
        assert_eq!(
            obj["spec"]["containers"],
            json!([{"name": "a", "image": "x:2", "volumeMounts": [{"name": "sa", "mountPath": "/sa"}]}])
        );
        assert_eq!(
            obj["spec"]["volumes"],
            json!([{"name": "v", "emptyDir": {}}, {"name": "sa", "projected": {}}])
        );
        // Applying the same manifest again changes nothing.
        let mut again = obj.clone();
        strategic_merge(&mut again, &three_way(&desired, &desired)).unwrap();
        assert_eq!(again, obj);
    }
}
