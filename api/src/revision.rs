//! A DaemonSet's or StatefulSet's ControllerRevision data, in one place for
//! the controller (which writes it) and the CLI (which reads it back for
//! `weft rollout`): the strategic merge patch that puts a pod template
//! back, `{"spec": {"template": {..., "$patch": "replace"}}}`.
//!
//! kubectl's `rollout undo` compares these bytes with the same patch made
//! from the live object, which Go writes with the fields its types never
//! omit: the template's `metadata.creationTimestamp` (null) and each
//! container's `resources` (`{}`). The data carries them too, so that an
//! undo to the revision the object already has says "skipped rollback"
//! (keys are sorted on both sides); reading the template back takes them
//! off again.

use serde_json::{Map, Value, json};

const CONTAINER_LISTS: [&str; 3] = ["initContainers", "containers", "ephemeralContainers"];

fn containers_of(template: &mut Value) -> impl Iterator<Item = &mut Map<String, Value>> {
    let spec = template.get_mut("spec").and_then(Value::as_object_mut);
    spec.into_iter().flat_map(|spec| {
        spec.iter_mut()
            .filter(|(k, _)| CONTAINER_LISTS.contains(&k.as_str()))
            .filter_map(|(_, v)| v.as_array_mut())
            .flatten()
            .filter_map(Value::as_object_mut)
    })
}

/// The revision data of a pod template (as JSON).
#[must_use]
pub fn data_of(mut template: Value) -> Value {
    if let Some(o) = template.as_object_mut() {
        o.insert("$patch".into(), json!("replace"));
        let meta = o.entry("metadata").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.entry("creationTimestamp").or_insert(Value::Null);
        }
    }
    for c in containers_of(&mut template) {
        c.entry("resources").or_insert_with(|| json!({}));
    }
    json!({"spec": {"template": template}})
}

/// The pod template a revision's data holds (as JSON), without what
/// [`data_of`] added for kubectl.
#[must_use]
pub fn template_of(data: &Value) -> Value {
    let mut t = data["spec"]["template"].clone();
    if let Some(o) = t.as_object_mut() {
        o.remove("$patch");
        if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            if m.get("creationTimestamp") == Some(&Value::Null) {
                m.remove("creationTimestamp");
            }
            if m.is_empty() {
                o.remove("metadata");
            }
        }
    }
    for c in containers_of(&mut t) {
        if c.get("resources") == Some(&json!({})) {
            c.remove("resources");
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_has_gos_fields_and_reads_back_without_them() {
        let t = json!({"metadata": {"labels": {"app": "a"}},
            "spec": {"containers": [{"name": "c", "image": "i"}],
                "initContainers": [{"name": "s", "image": "i", "resources": {"limits": {"cpu": "1"}}}]}});
        let data = data_of(t.clone());
        assert_eq!(
            serde_json::to_string(&data).expect("json"),
            r#"{"spec":{"template":{"$patch":"replace","metadata":{"creationTimestamp":null,"labels":{"app":"a"}},"spec":{"containers":[{"image":"i","name":"c","resources":{}}],"initContainers":[{"image":"i","name":"s","resources":{"limits":{"cpu":"1"}}}]}}}}"#
        );
        assert_eq!(template_of(&data), t);
        let bare = json!({"spec": {"containers": [{"name": "c"}]}});
        assert_eq!(template_of(&data_of(bare.clone())), bare);
    }
}
