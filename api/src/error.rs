//! API errors, carried to clients as Kubernetes `Status` objects.

use serde_json::{Value, json};

/// One reason an object was refused, with the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported`,
    /// `FieldValueDuplicate` or `FieldValueTypeInvalid`.
    pub reason: &'static str,
    /// What is wrong, for a person.
    pub message: String,
    /// The field path, e.g. `spec.containers[0].image`.
    pub field: String,
}

impl Cause {
    /// A required field is missing.
    pub fn required(field: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueRequired",
            message: "Required value".into(),
            field: field.into(),
        }
    }
    /// A field has a value that is not allowed.
    pub fn invalid(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        why: impl std::fmt::Display,
    ) -> Self {
        Self {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value}: {why}"),
            field: field.into(),
        }
    }
    /// A value is longer than allowed (Kubernetes' `FieldValueTooLong`).
    pub fn too_long(field: impl Into<String>, limit: usize) -> Self {
        Self {
            reason: "FieldValueTooLong",
            message: format!("Too long: must have at most {limit} bytes"),
            field: field.into(),
        }
    }
    /// A field is not known for this kind.
    pub fn unknown(field: impl Into<String>) -> Self {
        let field = field.into();
        Self {
            reason: "FieldValueInvalid",
            message: format!("unknown field \"{field}\""),
            field,
        }
    }
    /// A value repeats where it must be unique.
    pub fn duplicate(field: impl Into<String>, value: impl std::fmt::Display) -> Self {
        Self {
            reason: "FieldValueDuplicate",
            message: format!("Duplicate value: {value}"),
            field: field.into(),
        }
    }
    /// A value is valid in itself but not allowed here (Kubernetes'
    /// `FieldValueForbidden`).
    pub fn forbidden(field: impl Into<String>, why: impl std::fmt::Display) -> Self {
        Self {
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {why}"),
            field: field.into(),
        }
    }
    /// A value names something that does not exist (Kubernetes'
    /// `FieldValueNotFound`).
    pub fn not_found(field: impl Into<String>, value: impl std::fmt::Display) -> Self {
        Self {
            reason: "FieldValueNotFound",
            message: format!("Not found: \"{value}\""),
            field: field.into(),
        }
    }
    /// A value is not one of the supported ones.
    pub fn not_supported(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        supported: &[&str],
    ) -> Self {
        let list = supported
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            reason: "FieldValueNotSupported",
            message: format!("Unsupported value: \"{value}\": supported values: {list}"),
            field: field.into(),
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// An error the API returns: HTTP code, Kubernetes reason and details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Kubernetes StatusReason (`NotFound`, `Conflict`, ...).
    pub reason: &'static str,
    /// The full message.
    pub message: String,
    /// Kind the error concerns (lower-case plural in Kubernetes' `details.kind`).
    pub kind: Option<String>,
    /// Group of that kind.
    pub group: Option<String>,
    /// Name of the object concerned.
    pub name: Option<String>,
    /// Field-level causes.
    pub causes: Vec<Cause>,
    /// A continue token offered with a 410 for an expired one (the Status's
    /// `metadata.continue`).
    pub continue_token: Option<String>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            kind: None,
            group: None,
            name: None,
            causes: Vec::new(),
            continue_token: None,
        }
    }

    /// Attaches the object the error concerns.
    pub fn about(mut self, group: &str, kind: &str, name: &str) -> Self {
        self.group = Some(group.to_string());
        self.kind = Some(kind.to_string());
        self.name = Some(name.to_string());
        self
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }
    /// 403 Forbidden.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }
    /// 404 NotFound for an object.
    pub fn not_found(plural: &str, group: &str, name: &str) -> Self {
        let what = if group.is_empty() {
            plural.to_string()
        } else {
            format!("{plural}.{group}")
        };
        Self::new(404, "NotFound", format!("{what} \"{name}\" not found"))
            .about(group, plural, name)
    }
    /// 404 for a path that serves nothing.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }
    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }
    /// 409 AlreadyExists.
    pub fn already_exists(plural: &str, group: &str, name: &str) -> Self {
        let what = if group.is_empty() {
            plural.to_string()
        } else {
            format!("{plural}.{group}")
        };
        Self::new(
            409,
            "AlreadyExists",
            format!("{what} \"{name}\" already exists"),
        )
        .about(group, plural, name)
    }
    /// 409 Conflict (stale resourceVersion, or a clash on a unique value).
    pub fn conflict(plural: &str, group: &str, name: &str, why: impl std::fmt::Display) -> Self {
        let what = if group.is_empty() {
            plural.to_string()
        } else {
            format!("{plural}.{group}")
        };
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {what} \"{name}\": {why}"),
        )
        .about(group, plural, name)
    }
    /// 410 Gone (a watch or list from a compacted resourceVersion).
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }
    /// 410 Expired for a list continued from a compacted revision, with a
    /// token that continues from the current one (as kube-apiserver offers).
    pub fn continue_expired(token: String) -> Self {
        let mut e = Self::new(
            410,
            "Expired",
            "The provided continue parameter is too old to display a consistent list result. \
             You can start a new list without the continue parameter, or use the continue token \
             in this response to retrieve the remainder of the results. Continuing with the \
             provided token results in an inconsistent list - objects that were created, \
             modified, or deleted between the time the first chunk was returned and now may \
             show up in the list.",
        );
        e.continue_token = Some(token);
        e
    }
    /// 504 Timeout (a list at a resourceVersion the store has not reached).
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }
    /// 413 RequestEntityTooLarge.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("request body too large: the limit is {limit} bytes"),
        )
    }
    /// 413 for a request over a limit other than its body's size.
    pub fn entity_too_large(message: impl Into<String>) -> Self {
        Self::new(413, "RequestEntityTooLarge", message)
    }
    /// 413 for an object too large to store.
    pub fn object_too_large(kind: &str, name: &str, size: usize, limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!(
                "{kind} \"{name}\" is too large to store: {size} bytes, the limit is {limit} bytes (the controller's --max-object-size)"
            ),
        )
    }
    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format ({content_type})"),
        )
    }
    /// 422 Invalid, with the causes.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> Self {
        let list = causes
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {list}"),
        )
        .about(group, kind, name);
        e.causes = causes;
        e
    }
    /// 422 for a JSON patch that cannot be applied.
    pub fn invalid_patch(message: impl std::fmt::Display) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("the patch cannot be applied: {message}"),
        )
    }
    /// 500 InternalError.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        )
    }
    /// 429 TooManyRequests (an eviction a disruption budget refuses).
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(429, "TooManyRequests", message)
    }

    /// 503 ServiceUnavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// The Kubernetes `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(token) = &self.continue_token {
            status["metadata"]["continue"] = json!(token);
        }
        if self.kind.is_some() || !self.causes.is_empty() {
            let mut details = serde_json::Map::new();
            if let Some(name) = &self.name {
                details.insert("name".into(), json!(name));
            }
            if let Some(group) = self.group.as_deref().filter(|g| !g.is_empty()) {
                details.insert("group".into(), json!(group));
            }
            if let Some(kind) = &self.kind {
                details.insert("kind".into(), json!(kind));
            }
            if !self.causes.is_empty() {
                let causes: Vec<Value> = self
                    .causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
                details.insert("causes".into(), Value::Array(causes));
            }
            status["details"] = Value::Object(details);
        }
        status
    }

    /// Reads an error back from a Status body (for clients).
    pub fn from_status(code: u16, body: &Value) -> Self {
        let message = body["message"]
            .as_str()
            .unwrap_or("request failed")
            .to_string();
        let reason = match body["reason"].as_str().unwrap_or("") {
            "NotFound" => "NotFound",
            "AlreadyExists" => "AlreadyExists",
            "Conflict" => "Conflict",
            "Invalid" => "Invalid",
            "Forbidden" => "Forbidden",
            "Unauthorized" => "Unauthorized",
            "BadRequest" => "BadRequest",
            "Expired" | "Gone" => "Expired",
            "RequestEntityTooLarge" => "RequestEntityTooLarge",
            "Timeout" => "Timeout",
            _ => "Unknown",
        };
        let mut e = Self::new(code, reason, message);
        e.continue_token = body["metadata"]["continue"].as_str().map(String::from);
        let details = &body["details"];
        e.kind = details["kind"].as_str().map(String::from);
        e.name = details["name"].as_str().map(String::from);
        e.group = details["group"].as_str().map(String::from);
        if let Some(causes) = body["details"]["causes"].as_array() {
            e.causes = causes
                .iter()
                .map(|c| Cause {
                    reason: "FieldValueInvalid",
                    message: c["message"].as_str().unwrap_or_default().to_string(),
                    field: c["field"].as_str().unwrap_or_default().to_string(),
                })
                .collect();
        }
        e
    }
}
