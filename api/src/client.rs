//! The client side of the API, for the `weft` CLI: credentials from a
//! kubeconfig, raw requests with Kubernetes errors, server-side Tables, and
//! `apply` (create, or update what the manifest says and remove what an
//! earlier apply set and this one no longer does).

use std::path::{Path, PathBuf};

use http::Request;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::resources::{self, Resource};

/// File modes as kubectl's YAML 1.1 reads them: a plain `0644` is octal
/// (420) there, while this YAML 1.2 parser keeps it as the string "0644".
/// Every `mode` and `defaultMode` under a `volumes` list (the only places
/// the API has them) that is such a string becomes the number kubectl
/// would have sent.
pub fn yaml11_modes(v: &mut Value) {
    fn modes(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if (k == "mode" || k == "defaultMode")
                        && let Some(s) = x.as_str()
                        && s.len() > 1
                        && s.starts_with('0')
                        && s.bytes().all(|b| (b'0'..=b'7').contains(&b))
                        && let Ok(n) = i64::from_str_radix(s, 8)
                    {
                        *x = Value::from(n);
                    } else {
                        modes(x);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(modes),
            _ => {}
        }
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "volumes" && x.is_array() {
                    modes(x);
                } else {
                    yaml11_modes(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(yaml11_modes),
        _ => {}
    }
}

/// The annotation where `apply` keeps what it applied last (kubectl's).
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Errors of client commands, for people to read.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the request.
    #[error("{0}")]
    Api(#[from] ApiError),
    /// No kubeconfig at the path in use.
    #[error(
        "no kubeconfig at {0}: pass --kubeconfig, set $KUBECONFIG, or run `weft controller`, which writes ~/.weft/config"
    )]
    NoConfig(String),
    /// The kubeconfig could not be used.
    #[error("reading the kubeconfig {path}: {message}")]
    Config {
        /// Its path.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// The server could not be reached.
    #[error("cannot reach the API server: {0}")]
    Transport(String),
    /// The command or its input is wrong.
    #[error("{0}")]
    Usage(String),
}

/// Which kubeconfig a command uses: `--kubeconfig`, else `$KUBECONFIG`
/// (its first entry), else ~/.weft/config.
pub fn kubeconfig_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(v) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty())
        && let Some(first) = std::env::split_paths(&v).next()
    {
        return first;
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".weft").join("config")
}

/// A connection to the API server.
#[derive(Clone)]
pub struct Client {
    inner: kube::Client,
    /// The API server's URL, for error messages.
    server: String,
    /// The namespace of the kubeconfig's context.
    pub default_namespace: String,
}

/// A response: HTTP code and body.
pub struct Response {
    /// HTTP status.
    pub code: u16,
    /// The JSON body.
    pub body: Value,
    /// Warning headers (e.g. unknown fields).
    pub warnings: Vec<String>,
}

impl Client {
    /// Connects with the credentials in `path`.
    pub async fn from_kubeconfig(path: &Path) -> Result<Self, ClientError> {
        if !path.exists() {
            return Err(ClientError::NoConfig(path.display().to_string()));
        }
        let err = |e: &dyn std::fmt::Display| ClientError::Config {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(&e))?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| err(&e))?;
        // A user waits at a prompt: a 503 (an agent that cannot be reached)
        // is reported at once, not retried for minutes.
        config.default_retry = false;
        let default_namespace = config.default_namespace.clone();
        let server = config.cluster_url.to_string();
        let inner = kube::Client::try_from(config).map_err(|e| err(&e))?;
        Ok(Self {
            inner,
            server,
            default_namespace,
        })
    }

    /// The kube-rs client underneath (streams: logs, exec).
    pub fn kube(&self) -> &kube::Client {
        &self.inner
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends a request; a Kubernetes Status error becomes `ApiError`.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        content_type: &str,
        accept: &str,
    ) -> Result<Response, ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("Accept", accept);
        if body.is_some() {
            req = req.header("Content-Type", content_type);
        }
        let bytes = body
            .map(|b| serde_json::to_vec(b).expect("JSON values encode"))
            .unwrap_or_default();
        let req = req
            .body(kube::client::Body::from(bytes))
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let resp = self
            .inner
            .send(req)
            .await
            .map_err(|e| ClientError::Transport(format!("{}: {e}", self.server)))?;
        let code = resp.status().as_u16();
        let warnings = resp
            .headers()
            .get_all("warning")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|w| {
                w.trim_start_matches("299 - ")
                    .trim_matches('"')
                    .replace("\\\"", "\"")
            })
            .collect();
        let bytes = resp
            .into_body()
            .collect_bytes()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let body: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| json!({"message": String::from_utf8_lossy(&bytes)}));
        if code >= 400 {
            return Err(ApiError::from_status(code, &body).into());
        }
        Ok(Response {
            code,
            body,
            warnings,
        })
    }

    /// GETs a JSON object.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        Ok(self
            .request("GET", path, None, "", "application/json")
            .await?
            .body)
    }

    /// A server-side Table for `path` (what `weft get` prints).
    pub async fn table(&self, path: &str) -> Result<Value, ClientError> {
        Ok(self
            .request(
                "GET",
                path,
                None,
                "",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            )
            .await?
            .body)
    }

    /// Streams a watch, calling `each` with every event until it returns false.
    pub async fn watch(
        &self,
        path: &str,
        table: bool,
        mut each: impl FnMut(Value) -> bool,
    ) -> Result<(), ClientError> {
        use http_body_util::BodyExt;
        let accept = if table {
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        } else {
            "application/json"
        };
        let req = Request::builder()
            .method("GET")
            .uri(path)
            .header("Accept", accept)
            .body(kube::client::Body::empty())
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let resp = self
            .inner
            .send(req)
            .await
            .map_err(|e| ClientError::Transport(format!("{}: {e}", self.server)))?;
        let code = resp.status().as_u16();
        let mut body = resp.into_body();
        if code >= 400 {
            let bytes = body
                .collect_bytes()
                .await
                .map_err(|e| ClientError::Transport(e.to_string()))?;
            let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(ApiError::from_status(code, &v).into());
        }
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Transport(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if let Ok(event) = serde_json::from_slice::<Value>(&line)
                    && !each(event)
                {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// The REST path of a resource's collection (namespace None: all, or
/// cluster-scoped).
pub fn collection_path(res: &Resource, ns: Option<&str>) -> String {
    let base = if res.group.is_empty() {
        format!("/api/{}", res.version)
    } else {
        format!("/apis/{}/{}", res.group, res.version)
    };
    match ns {
        Some(ns) if res.namespaced => format!("{base}/namespaces/{ns}/{}", res.plural),
        _ => format!("{base}/{}", res.plural),
    }
}

/// The REST path of one object.
pub fn object_path(res: &Resource, ns: Option<&str>, name: &str) -> String {
    format!("{}/{name}", collection_path(res, ns))
}

/// A manifest document: where it came from and what it holds.
#[derive(Debug, Clone)]
pub struct Document {
    /// "file.yaml" or "file.yaml (document 2)".
    pub origin: String,
    /// The object.
    pub object: Value,
}

/// Reads manifests: a file, a directory (its .yaml, .yml and .json files,
/// sorted), or "-" for stdin; YAML may hold several documents, and a `List`
/// is unpacked.
pub fn read_manifests(path: &Path) -> Result<Vec<Document>, ClientError> {
    let mut files = Vec::new();
    if path == Path::new("-") {
        files.push(path.to_path_buf());
    } else if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect();
        entries.sort();
        files = entries;
    } else {
        files.push(path.to_path_buf());
    }
    let mut docs = Vec::new();
    for file in files {
        let text = if file == Path::new("-") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| ClientError::Usage(format!("stdin: {e}")))?;
            s
        } else {
            std::fs::read_to_string(&file)
                .map_err(|e| ClientError::Usage(format!("{}: {e}", file.display())))?
        };
        let name = file.display().to_string();
        for (i, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let origin = format!("{name} (document {})", i + 1);
            let mut value: Value = serde::Deserialize::deserialize(doc).map_err(|e| {
                ClientError::Usage(format!("{origin}: not valid YAML or JSON: {e}"))
            })?;
            yaml11_modes(&mut value);
            if value.is_null() {
                continue;
            }
            if !value.is_object() {
                return Err(ClientError::Usage(format!(
                    "{origin}: expected an object with apiVersion and kind"
                )));
            }
            if value["kind"] == "List" {
                for (j, item) in value["items"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                {
                    docs.push(Document {
                        origin: format!("{origin}, item {}", j + 1),
                        object: item,
                    });
                }
            } else {
                docs.push(Document {
                    origin,
                    object: value,
                });
            }
        }
    }
    Ok(docs)
}

/// The resource of a manifest object, or why it has none.
pub fn resource_of(doc: &Document) -> Result<&'static Resource, ClientError> {
    let api_version = doc.object["apiVersion"].as_str().unwrap_or_default();
    let kind = doc.object["kind"].as_str().unwrap_or_default();
    if api_version.is_empty() || kind.is_empty() {
        return Err(ClientError::Usage(format!(
            "{}: apiVersion and kind are required",
            doc.origin
        )));
    }
    resources::by_kind(api_version, kind).ok_or_else(|| {
        let served: Vec<String> = resources::RESOURCES
            .iter()
            .map(|r| format!("{}/{}", r.api_version(), r.kind))
            .collect();
        ClientError::Usage(format!(
            "{}: unknown kind {kind} in {api_version}; Weft serves {}",
            doc.origin,
            served.join(", ")
        ))
    })
}

/// What `apply` did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// It did not exist.
    Created,
    /// It changed.
    Configured,
    /// It already was as the manifest says.
    Unchanged,
}

fn strip_rv(mut v: Value) -> Value {
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    v
}

impl Client {
    /// Creates the object, or updates it to what the manifest says; with
    /// `dry_run` the server checks everything and stores nothing.
    pub async fn apply(
        &self,
        doc: &Document,
        namespace: Option<&str>,
        dry_run: bool,
    ) -> Result<(Applied, &'static Resource, String, Vec<String>), ClientError> {
        let res = resource_of(doc)?;
        let mut desired = doc.object.clone();
        let name = desired["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            return Err(ClientError::Usage(format!(
                "{}: metadata.name is required for apply",
                doc.origin
            )));
        }
        let ns = if res.namespaced {
            let ns = desired["metadata"]["namespace"]
                .as_str()
                .map(String::from)
                .or(namespace.map(String::from))
                .unwrap_or_else(|| self.default_namespace.clone());
            if let Some(flag) = namespace
                && desired["metadata"]["namespace"]
                    .as_str()
                    .is_some_and(|n| n != flag)
            {
                return Err(ClientError::Usage(format!(
                    "{}: the namespace of the object ({}) does not match --namespace {flag}",
                    doc.origin,
                    desired["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                )));
            }
            desired["metadata"]["namespace"] = json!(ns);
            Some(ns)
        } else {
            None
        };
        // Remember what was applied, as kubectl does, so the next apply can
        // remove what this one sets and that one does not.
        let mut annotated = desired.clone();
        if let Some(a) = annotated
            .get_mut("metadata")
            .and_then(|m| m.get_mut("annotations"))
            .and_then(Value::as_object_mut)
        {
            a.remove(LAST_APPLIED);
        }
        let record = serde_json::to_string(&annotated).expect("encodes");
        desired["metadata"]["annotations"][LAST_APPLIED] = json!(record);
        let path = object_path(res, ns.as_deref(), &name);
        let context = |e: ClientError| -> ClientError {
            match e {
                ClientError::Api(mut a) => {
                    a.message = format!("{}: {} {name}: {}", doc.origin, res.kind, a.message);
                    ClientError::Api(a)
                }
                other => other,
            }
        };
        let current = match self.get(&path).await {
            Ok(v) => Some(v),
            Err(ClientError::Api(e)) if e.code == 404 => None,
            Err(e) => return Err(context(e)),
        };
        let Some(current) = current else {
            let r = self
                .request(
                    "POST",
                    &format!(
                        "{}?fieldValidation=Strict&fieldManager=weft{}",
                        collection_path(res, ns.as_deref()),
                        if dry_run { "&dryRun=All" } else { "" }
                    ),
                    Some(&desired),
                    "application/json",
                    "application/json",
                )
                .await
                .map_err(context)?;
            return Ok((Applied::Created, res, name, r.warnings));
        };
        let last: Value = current["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_else(|| json!({}));
        // A strategic merge patch, as kubectl's: lists of named things
        // merge by key, so what others added (the API server's service
        // account volume in a pod) stays.
        let patch = crate::strategic::three_way(&last, &desired);
        let mut preview = current.clone();
        crate::strategic::strategic_merge(&mut preview, &patch)
            .map_err(|e| ClientError::Usage(format!("{}: {}", doc.origin, e.message)))?;
        if strip_rv(preview) == strip_rv(current.clone()) {
            return Ok((Applied::Unchanged, res, name, Vec::new()));
        }
        let r = self
            .request(
                "PATCH",
                &format!(
                    "{path}?fieldValidation=Strict&fieldManager=weft{}",
                    if dry_run { "&dryRun=All" } else { "" }
                ),
                Some(&patch),
                "application/strategic-merge-patch+json",
                "application/json",
            )
            .await
            .map_err(context)?;
        let after = strip_rv(r.body);
        let outcome = if after == strip_rv(current) {
            Applied::Unchanged
        } else {
            Applied::Configured
        };
        Ok((outcome, res, name, r.warnings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_as_kubectl_reads_them() {
        let mut v: Value = serde_norway::from_str(
            "spec:\n  volumes:\n  - secret: {defaultMode: 0400, items: [{key: a, path: a, mode: 0755}]}\n  - configMap: {defaultMode: 420}\ndata: {mode: '0755'}\n",
        )
        .expect("yaml");
        yaml11_modes(&mut v);
        assert_eq!(v["spec"]["volumes"][0]["secret"]["defaultMode"], 256);
        assert_eq!(v["spec"]["volumes"][0]["secret"]["items"][0]["mode"], 493);
        assert_eq!(v["spec"]["volumes"][1]["configMap"]["defaultMode"], 420);
        assert_eq!(v["data"]["mode"], "0755", "a ConfigMap's value stays");
    }

    #[test]
    fn apply_patches_remove_what_the_last_apply_set() {
        let last = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 2, "paused": false}});
        let desired = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 3}});
        let p = crate::strategic::three_way(&last, &desired);
        let mut current = json!({"metadata": {"labels": {"a": "1", "b": "2", "c": "kept"}}, "spec": {"replicas": 2, "paused": false, "x": 1}});
        crate::strategic::strategic_merge(&mut current, &p).unwrap();
        assert_eq!(
            current,
            json!({"metadata": {"labels": {"a": "1", "c": "kept"}}, "spec": {"replicas": 3, "x": 1}})
        );
    }

    #[test]
    fn paths() {
        let d = resources::by_name("deploy").unwrap();
        assert_eq!(
            object_path(d, Some("ns"), "web"),
            "/apis/apps/v1/namespaces/ns/deployments/web"
        );
        let n = resources::by_name("nodes").unwrap();
        assert_eq!(collection_path(n, Some("ns")), "/api/v1/nodes");
    }
}
