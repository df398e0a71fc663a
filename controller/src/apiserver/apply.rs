//! Server-side apply: `PATCH` with `application/apply-patch+yaml`
//! (`kubectl apply --server-side`, kube-rs' `Patch::Apply`). The merge,
//! the field ownership and the conflicts are `crate::fieldmanager`'s; this
//! reads the request, runs the admission a patch runs, and creates the
//! object when it does not exist yet.

use serde_json::{Value, json};
use weft_api::error::ApiError;
use weft_api::resources::Resource;
use weft_api::validate::FieldValidation;

use super::{ApiState, Query, User, admission};
use crate::fieldmanager::{self, Managed, Manager};
use crate::registry::{DynKind, Registry, Write};

/// The annotation `kubectl apply` (client-side) keeps its last
/// configuration in; an apply by `kubectl` keeps it current when the object
/// has it, as kube's does, so that a later client-side apply still works.
use crate::fieldmanager::LAST_APPLIED;

/// Whether a PATCH's content type asks for server-side apply.
pub fn is_apply(content_type: &str) -> bool {
    content_type.split(';').next().unwrap_or_default().trim() == "application/apply-patch+yaml"
}

/// The applied configuration: YAML (or JSON) of one object of the URL's
/// kind, naming no other object and no managedFields.
fn configuration(
    res: &Resource,
    name: &str,
    ns: Option<&str>,
    bytes: &[u8],
) -> Result<Value, ApiError> {
    let config: Value = serde_norway::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if !config.is_object() {
        return Err(ApiError::bad_request(
            "an applied configuration must be a YAML or JSON object",
        ));
    }
    let want = res.api_version();
    match (config["apiVersion"].as_str(), config["kind"].as_str()) {
        (Some(v), Some(k)) if v == want && k == res.kind => {}
        (Some(v), Some(_)) if v != want => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({want})"
            )));
        }
        (Some(_), Some(k)) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                res.kind
            )));
        }
        _ => {
            return Err(ApiError::bad_request(format!(
                "Object 'Kind' is missing or 'apiVersion' is missing in '{}'",
                truncate(&config.to_string())
            )));
        }
    }
    let meta = &config["metadata"];
    if let Some(given) = meta["name"].as_str()
        && given != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({given}) does not match the name on the URL ({name})"
        )));
    }
    if let (Some(given), Some(ns)) = (meta["namespace"].as_str(), ns)
        && !given.is_empty()
        && given != ns
    {
        return Err(ApiError::bad_request(format!(
            "the namespace of the provided object ({given}) does not match the namespace sent on the request ({ns})"
        )));
    }
    if !meta["managedFields"].is_null() {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    Ok(config)
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

/// The apply's manager, from `?fieldManager=` (required) and `?force`.
fn manager(res: &Resource, query: &Query, subresource: &str) -> Result<(Manager, bool), ApiError> {
    let force = match query.get("force") {
        None => false,
        Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "force must be true or false, not {other:?}"
            )));
        }
    };
    let name = match query.get("fieldManager") {
        Some(m) if !m.is_empty() => fieldmanager::manager_name(Some(m), None)?,
        _ => {
            let mut e = ApiError::invalid(
                "PatchOptions",
                "meta.k8s.io",
                "",
                vec![weft_api::Cause::required("fieldManager")],
            );
            e.message = "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into();
            return Err(e);
        }
    };
    Ok((
        Manager {
            name,
            apply: true,
            api_version: res.api_version(),
            subresource: subresource.to_string(),
        },
        force,
    ))
}

/// Applies `config` to `live` (none: the object is new) and returns the
/// object to store, managedFields included.
fn applied(
    res: &Resource,
    live: Option<&Value>,
    config: &Value,
    who: &Manager,
    force: bool,
) -> Result<Value, ApiError> {
    let node = crate::openapi::schemas()
        .kind(res.group, res.version, res.kind)
        .ok_or_else(|| {
            ApiError::unsupported_media_type(&format!(
                "server-side apply of {} is not supported (no schema)",
                res.plural
            ))
        })?;
    let entries = match live.map(|l| &l["metadata"]["managedFields"]) {
        Some(v) if !v.is_null() => {
            Some(serde_json::from_value(v.clone()).map_err(ApiError::internal)?)
        }
        _ => None,
    };
    let managed = Managed::decode(entries.as_ref())
        .map_err(|causes| ApiError::invalid(res.kind, res.group, "", causes))?;
    let allowed = live
        .filter(|_| who.name == "kubectl")
        .and_then(|l| fieldmanager::allowed_from_last_applied(l, node));
    let out = fieldmanager::apply(
        live,
        managed,
        config,
        node,
        who,
        res.has_status(),
        force,
        allowed.as_ref(),
    )?;
    let mut object = out.object;
    object["metadata"]["managedFields"] =
        serde_json::to_value(out.managed.encode()).map_err(ApiError::internal)?;
    if object["metadata"]["managedFields"].is_null()
        && let Some(m) = object["metadata"].as_object_mut()
    {
        m.remove("managedFields");
    }
    if who.name == "kubectl"
        && let Some(live) = live
        && live["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    {
        let mut last = config.clone();
        if let Some(a) = last["metadata"]["annotations"].as_object_mut() {
            a.remove(LAST_APPLIED);
        }
        object["metadata"]["annotations"][LAST_APPLIED] = json!(format!("{last}\n"));
    }
    Ok(object)
}

/// `PATCH` with an applied configuration.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve(
    st: &ApiState,
    reg: Registry,
    kind: &dyn DynKind,
    ns: Option<&str>,
    name: &str,
    subresource: Option<&str>,
    query: &Query,
    user: &User,
    fv: &FieldValidation,
    bytes: &[u8],
) -> Result<(u16, Value, Vec<String>), ApiError> {
    let res = kind.resource();
    let config = configuration(res, name, ns, bytes)?;
    let (who, force) = manager(res, query, subresource.unwrap_or_default())?;
    let write = if subresource == Some("status") {
        Write::Status
    } else {
        Write::Update
    };
    let reg = reg.applying();
    let labels = admission::patch_labels(st, res.plural, write, ns).await;
    let mut admitted = Vec::new();
    let result = kind
        .modify(&reg, ns, name, write, fv, &mut |live| {
            let object = applied(res, Some(&live), &config, &who, force)?;
            if res.group == crate::registry::rbac::GROUP {
                st.rbac.admit_write(user, res.plural, ns, &object)?;
            }
            if let Some(labels) = &labels {
                admitted = admission::patched(
                    st.registry.pod_security_default,
                    labels,
                    ns.unwrap_or_default(),
                    res.plural,
                    &live,
                    &object,
                )?;
            }
            Ok(object)
        })
        .await;
    match result {
        Ok((updated, mut warnings)) => {
            warnings.extend(admitted);
            Ok((200, updated, warnings))
        }
        // Apply on create: the configuration is the new object.
        Err(e) if e.code == 404 && write == Write::Update && e.name.as_deref() == Some(name) => {
            let mut object = applied(res, None, &config, &who, force)?;
            object["metadata"]["name"] = json!(name);
            if let Some(ns) = ns.filter(|_| res.namespaced) {
                object["metadata"]["namespace"] = json!(ns);
            }
            if res.group == crate::registry::rbac::GROUP {
                st.rbac.admit_write(user, res.plural, ns, &object)?;
            }
            let decoded = kind.decode(object, fv)?;
            super::auth::check_body_name(user, res.plural, &decoded.name)?;
            let mut warnings = decoded.warnings.clone();
            warnings.extend(admission::pod_security(st, ns, &decoded).await?);
            warnings.extend(admission::advisories(&decoded));
            let created = kind.create(&reg, ns, decoded).await?;
            Ok((201, created, warnings))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_are_checked_and_yaml_bombs_refused() {
        let res = weft_api::resources::by_kind("apps/v1", "Deployment").expect("served");
        let ok = configuration(
            res,
            "web",
            Some("ns"),
            b"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n",
        )
        .unwrap();
        assert_eq!(ok["metadata"]["name"], "web");
        for (body, want) in [
            (
                &b"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: other}\n"[..],
                "does not match the name on the URL",
            ),
            (
                b"apiVersion: v1\nkind: Deployment\n",
                "does not match the expected API version",
            ),
            (b"kind: Deployment\n", "Object 'Kind' is missing"),
            (
                b"apiVersion: apps/v1\nkind: Deployment\nmetadata: {managedFields: []}\n",
                "managedFields must be nil",
            ),
            (b"[1, 2]", "must be a YAML or JSON object"),
        ] {
            let err = configuration(res, "web", Some("ns"), body).unwrap_err();
            assert_eq!(err.code, 400);
            assert!(err.message.contains(want), "{}", err.message);
        }
        // A billion laughs: aliases that would expand past memory.
        let mut bomb = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (i, prev) in ["b", "c", "d", "e", "f", "g", "h", "i"]
            .iter()
            .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
        {
            bomb.push_str(&format!("{i}: &{i} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
        }
        let err = configuration(res, "web", Some("ns"), bomb.as_bytes()).unwrap_err();
        assert_eq!(err.code, 400, "{}", err.message);
    }
}
