//! The API server's first look at a request body: decode it into its typed
//! k8s-openapi struct (which gives type errors with their field path), and
//! find the fields the typed struct dropped (unknown fields: refused under
//! strict field validation, reported as warnings otherwise, never kept), as
//! kube-apiserver does. Defaults and validation per kind come after, in the
//! controller's registry.

use serde_json::{Value, json};

use crate::error::{ApiError, Cause};

fn decode<T: serde::de::DeserializeOwned + serde::Serialize>(
    value: Value,
) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        (
            if path == "." { String::new() } else { path },
            e.inner().to_string(),
        )
    })
}

fn unknown_fields(input: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    None => out.push(p),
                    Some(kv) => unknown_fields(v, kv, &p, out),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, kv)) in a.iter().zip(b).enumerate() {
                unknown_fields(v, kv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The result of decoding a body as an object of some kind.
#[derive(Debug)]
pub struct Decoded<T> {
    /// The object in its typed form: unknown fields dropped.
    pub object: T,
    /// Paths of the fields the kind does not have.
    pub unknown: Vec<String>,
}

/// Decodes `body` as an object of `kind` (apiVersion `api_version`): fills a
/// missing apiVersion/kind, refuses a different one, and finds unknown fields.
pub fn decode_object<T>(
    api_version: &str,
    kind: &str,
    mut body: Value,
) -> Result<Decoded<T>, ApiError>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let Some(map) = body.as_object_mut() else {
        return Err(ApiError::bad_request(format!(
            "the body must be a JSON object of kind {kind}"
        )));
    };
    match map.get("apiVersion").and_then(Value::as_str) {
        None => {
            map.insert("apiVersion".into(), json!(api_version));
        }
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
    }
    match map.get("kind").and_then(Value::as_str) {
        None => {
            map.insert("kind".into(), json!(kind));
        }
        Some(k) if k == kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({kind})"
            )));
        }
    }
    let object: T = decode(body.clone()).map_err(|(path, message)| {
        let name = body["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let field = if path.is_empty() {
            "<body>".to_string()
        } else {
            path
        };
        let mut e = ApiError::bad_request(format!(
            "{kind} in version \"{api_version}\" cannot be handled as a {kind}: {field}: {message}"
        ));
        e.causes = vec![Cause {
            reason: "FieldValueTypeInvalid",
            message,
            field,
        }];
        e.kind = Some(kind.to_string());
        e.name = Some(name);
        e
    })?;
    let mut unknown = Vec::new();
    let known = serde_json::to_value(&object).map_err(ApiError::internal)?;
    unknown_fields(&body, &known, "", &mut unknown);
    Ok(Decoded { object, unknown })
}

/// What to do with fields the kind does not have (`fieldValidation`):
/// Kubernetes' default is to warn.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and say so in Warning headers.
    #[default]
    Warn,
    /// Refuse the request.
    Strict,
    /// A value that is none of these: refused once there are unknown
    /// fields to apply it to.
    Invalid(String),
}

impl FieldValidation {
    /// The `fieldValidation` query parameter (`None`: the default).
    #[must_use]
    pub fn parse(value: Option<&str>) -> Self {
        match value.unwrap_or("Warn") {
            "Strict" => Self::Strict,
            "Ignore" => Self::Ignore,
            "Warn" => Self::Warn,
            other => Self::Invalid(other.to_string()),
        }
    }

    /// The warnings for `unknown` fields of a `kind`, or the refusal.
    ///
    /// # Errors
    /// Unknown fields under `Strict`, or with an invalid setting.
    pub fn check(&self, kind: &str, unknown: &[String]) -> Result<Vec<String>, ApiError> {
        if unknown.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Self::Strict => {
                let list = unknown
                    .iter()
                    .map(|u| format!("unknown field \"{u}\""))
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut e = ApiError::bad_request(format!("strict decoding error: {list}"));
                e.kind = Some(kind.to_string());
                e.causes = unknown
                    .iter()
                    .map(|u| Cause {
                        reason: "FieldValueInvalid",
                        message: format!("unknown field \"{u}\""),
                        field: u.clone(),
                    })
                    .collect();
                Err(e)
            }
            Self::Ignore => Ok(Vec::new()),
            Self::Warn => Ok(unknown
                .iter()
                .map(|u| format!("unknown field \"{u}\""))
                .collect()),
            Self::Invalid(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, not \"{other}\""
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_validation_is_judged_only_where_there_are_unknown_fields() {
        let unknown = vec!["spec.colour".to_string()];
        assert_eq!(FieldValidation::parse(None), FieldValidation::Warn);
        assert_eq!(
            FieldValidation::Warn
                .check("Pod", &unknown)
                .expect("warned"),
            ["unknown field \"spec.colour\""]
        );
        assert!(
            FieldValidation::Ignore
                .check("Pod", &unknown)
                .expect("quiet")
                .is_empty()
        );
        let strict = FieldValidation::Strict
            .check("Pod", &unknown)
            .expect_err("refused");
        assert_eq!(strict.causes[0].field, "spec.colour");
        let bad = FieldValidation::parse(Some("Loose"));
        assert!(bad.check("Pod", &[]).expect("nothing to judge").is_empty());
        let e = bad.check("Pod", &unknown).expect_err("refused");
        assert!(e.to_string().contains("not \"Loose\""), "{e}");
    }

    #[test]
    fn unknown_fields_are_found_with_their_paths() {
        let d = decode_object::<k8s_openapi::api::core::v1::Pod>(
            "v1",
            "Pod",
            json!({"metadata": {"name": "a", "colour": "red"},
                   "spec": {"containers": [{"name": "c", "size": 3}]}}),
        )
        .expect("a pod");
        assert_eq!(d.unknown, ["metadata.colour", "spec.containers[0].size"]);
        assert_eq!(d.object.metadata.name.as_deref(), Some("a"));
        let e = decode_object::<k8s_openapi::api::core::v1::Pod>(
            "v1",
            "Pod",
            json!({"kind": "Service"}),
        )
        .expect_err("another kind");
        assert!(
            e.to_string().contains("does not match the expected kind"),
            "{e}"
        );
    }
}
