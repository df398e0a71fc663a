//! The Kubernetes-compatible API server: REST paths, JSON bodies, watch
//! streams, discovery; TLS and bearer tokens in front.

mod admission;
mod apply;
pub mod auth;
mod discovery;
pub mod hub;
pub mod list;
pub mod metrics;
pub mod patch;
pub mod protobuf;
pub mod proxy;
mod reviews;
pub mod satoken;
pub mod table;
pub mod tls;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State, ws::WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use weft_api::error::ApiError;
use weft_api::resources::{self, Resource};
use weft_api::selector::{FieldSelector, LabelSelector};
use weft_api::validate::{FieldValidation, decode_object};

use crate::rbac::forbidden;
use crate::registry::{Registry, Write, kind_of, parse_rv};
use auth::{Attributes, Decision, Tokens, User};

/// Kubernetes' limit on a request body.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub struct ApiState {
    pub registry: Registry,
    /// One store watch, fanned out to every API watch.
    pub hub: Arc<hub::WatchHub>,
    pub tokens: Arc<Tokens>,
    /// RBAC, over the controllers' cache.
    pub rbac: Arc<crate::rbac::Authorizer>,
    /// Service account tokens: issued and verified.
    pub sa_tokens: Arc<satoken::Issuer>,
    /// The controllers' cache (what a token's account and pod are checked
    /// against).
    pub cache: Arc<crate::cache::Cache>,
    /// How often a watch with allowWatchBookmarks=true gets a bookmark.
    pub bookmark_every: Duration,
    /// What `/metrics` reports.
    pub metrics: metrics::Metrics,
    /// Where node heartbeats are served: a runtime of their own, so that no
    /// other client's load delays them.
    pub heartbeats: tokio::runtime::Handle,
    /// Where LISTs are read and encoded (see [`Bulk`]).
    pub bulk: Bulk,
}

/// LISTs (and requests with bodies over [`BULK_BODY`]) run apart: reading
/// and encoding a large collection, or decoding megabytes of JSON, is work
/// without a pause (a few hundred milliseconds of CPU for 60 MB of objects),
/// and on the runtime that serves connections a few of them at once left
/// every other request, a node's Lease renewal included, waiting seconds for
/// a thread. Here they run on a runtime of their own at a lower CPU
/// priority, at most [`Bulk::AT_ONCE`] at a time once they are ready to
/// work (a LIST that waits for a resourceVersion waits without a turn).
#[derive(Clone)]
pub struct Bulk {
    runtime: tokio::runtime::Handle,
    permits: Arc<tokio::sync::Semaphore>,
}

impl Bulk {
    /// LISTs read and encoded at once; more wait their turn.
    pub const AT_ONCE: usize = 4;

    pub fn new(runtime: tokio::runtime::Handle) -> Self {
        Self {
            runtime,
            permits: Arc::new(tokio::sync::Semaphore::new(Self::AT_ONCE)),
        }
    }
}

/// The largest body served as a heartbeat: a Lease or a node's status is a
/// few KiB; a larger one is not let ahead of other work.
const HEARTBEAT_BODY: usize = 64 * 1024;

/// Bodies larger than this are decoded and served on the bulk runtime (see
/// [`Bulk`]): parsing megabytes of JSON is work without a pause too.
const BULK_BODY: usize = 256 * 1024;

/// Whether a request is a LIST: a GET of a collection that is not a watch.
fn is_list(method: &Method, path: &str, query: Option<&str>) -> bool {
    if method != Method::GET || Query::parse(query).flag("watch") {
        return false;
    }
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => ("", "v1", rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return false,
    };
    parse_target(group, version, rest, path).is_ok_and(|t| t.name.is_none())
}

/// Whether a request is a node's heartbeat: a write of a Lease in
/// `kube-node-lease` or of a Node's status, by a node.
fn is_heartbeat(st: &ApiState, method: &Method, path: &str, headers: &HeaderMap) -> bool {
    if !matches!(method.as_str(), "PUT" | "PATCH" | "POST") {
        return false;
    }
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let heartbeat_path = matches!(
        segs.as_slice(),
        [
            "apis",
            "coordination.k8s.io",
            "v1",
            "namespaces",
            "kube-node-lease",
            "leases",
            ..
        ] | ["api", "v1", "nodes", _, "status"]
    );
    heartbeat_path
        && st
            .tokens
            .authenticate(
                headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok()),
            )
            .is_ok_and(|u| u.node().is_some())
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// Serves the API over TLS on `listener` until the process ends.
pub async fn serve(
    state: Arc<ApiState>,
    listeners: Vec<std::net::TcpListener>,
    pki: &tls::Pki,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = axum_server::tls_rustls::RustlsConfig::from_config(tls::server_config(pki)?);
    let app = router(state);
    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners {
        listener.set_nonblocking(true)?;
        let server = axum_server::from_tcp_rustls(listener, config.clone())?;
        let app = app.clone();
        servers.spawn(async move {
            server
                .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                .await
        });
    }
    // Serving ends when any listener fails.
    if let Some(r) = servers.join_next().await {
        r??;
    }
    Ok(())
}

tokio::task_local! {
    /// Whether the request being served asked for protobuf first (its
    /// Accept header), so that [`json_response`] answers in it.
    static WANTS_PROTOBUF: bool;
}

/// Whether the first media type of the Accept header is protobuf (a Table
/// or a watch stream is never answered in it).
fn prefers_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|t| !t.is_empty())
        .is_some_and(|t| protobuf::is_protobuf(t) && !t.contains("as=") && !t.contains("stream="))
}

/// Serves `work` in the encoding the request's Accept header prefers.
async fn negotiated<F: std::future::Future>(headers: &HeaderMap, work: F) -> F::Output {
    WANTS_PROTOBUF.scope(prefers_protobuf(headers), work).await
}

/// The answer `body` with status `code`: JSON, or protobuf when the client
/// asked for it first and the object has a message (errors stay JSON, as
/// clients read them by their Content-Type).
pub fn json_response(code: u16, body: &Value) -> Response {
    if (200..300).contains(&code)
        && WANTS_PROTOBUF.try_with(|w| *w).unwrap_or(false)
        && let Some(bytes) = protobuf::encode(body)
    {
        let mut resp = Response::new(Body::from(bytes));
        *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(protobuf::MEDIA_TYPE),
        );
        return resp;
    }
    let bytes = serde_json::to_vec(body).expect("JSON values encode");
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.to_status())
}

async fn handle(State(st): State<Arc<ApiState>>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    // A client certificate the handshake verified against the cluster CA.
    let cert_user = parts
        .extensions
        .get::<Arc<axum_server::tls::TlsInfo>>()
        .and_then(|info| info.peer_certificates.first().cloned())
        .and_then(|der| tls::user_of_cert(&der));
    let path = parts.uri.path().to_string();
    let method = parts.method.clone();
    // pods/exec is a WebSocket: it is upgraded, not read.
    let exec_target = match path
        .split('/')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .as_slice()
    {
        [
            "api",
            "v1",
            "namespaces",
            ns,
            "pods",
            name,
            "exec" | "attach",
        ] => Some((ns.to_string(), name.to_string())),
        _ => None,
    };
    if let Some((ns, name)) = exec_target {
        return match exec(&st, &mut parts, cert_user.as_ref(), &ns, &name).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
    }
    // The body is read before anything can refuse the request: an HTTP/2
    // stream answered while its client is still sending is reset, and the
    // client never sees the Status.
    let result = match read_body(body).await {
        Ok(bytes)
            if bytes.len() <= HEARTBEAT_BODY
                && is_heartbeat(&st, &method, &path, &parts.headers) =>
        {
            // A heartbeat: served on its own runtime, and ahead of other
            // work in the store.
            let lane = st.heartbeats.clone();
            let (st, method, path) = (st.clone(), method.clone(), path.clone());
            let (query, headers) = (parts.uri.query().map(String::from), parts.headers.clone());
            let work = async move {
                crate::store::HEARTBEAT
                    .scope(true, async {
                        negotiated(
                            &headers,
                            dispatch(&st, &method, &path, query.as_deref(), &headers, bytes, None),
                        )
                        .await
                    })
                    .await
            };
            lane.spawn(work)
                .await
                .unwrap_or_else(|e| Err(ApiError::internal(format!("heartbeat task: {e}"))))
        }
        Ok(bytes) if bytes.len() > BULK_BODY || is_list(&method, &path, parts.uri.query()) => {
            let runtime = st.bulk.runtime.clone();
            // A LIST takes its turn itself, once what it waits for is there
            // (see list::serve); a large body takes one here.
            let turn = if bytes.len() > BULK_BODY {
                st.bulk.permits.clone().acquire_owned().await.ok()
            } else {
                None
            };
            let (st, method, path) = (st.clone(), method.clone(), path.clone());
            let (query, headers) = (parts.uri.query().map(String::from), parts.headers.clone());
            let cert_user = cert_user.clone();
            let work = async move {
                let _turn = turn;
                negotiated(
                    &headers,
                    dispatch(
                        &st,
                        &method,
                        &path,
                        query.as_deref(),
                        &headers,
                        bytes,
                        cert_user.as_ref(),
                    ),
                )
                .await
            };
            runtime
                .spawn(work)
                .await
                .unwrap_or_else(|e| Err(ApiError::internal(format!("list task: {e}"))))
        }
        Ok(bytes) => {
            negotiated(
                &parts.headers,
                dispatch(
                    &st,
                    &parts.method,
                    &path,
                    parts.uri.query(),
                    &parts.headers,
                    bytes,
                    cert_user.as_ref(),
                ),
            )
            .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(resp) => resp,
        Err(e) => {
            if e.code >= 500 {
                tracing::warn!(%method, %path, "{e}");
            }
            let mut resp = error_response(&e);
            if e.code == 413 && parts.version < axum::http::Version::HTTP_2 {
                // As Go's net/http does after an oversized body: the client
                // must not reuse this HTTP/1 connection (HTTP/2 has no such
                // header).
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    }
}

/// Query parameters, every value of each (a single-valued one is its first,
/// as kube-apiserver converts them).
pub struct Query(HashMap<String, Vec<String>>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        let mut m: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in form_urlencoded::parse(q.unwrap_or_default().as_bytes()).into_owned() {
            m.entry(k).or_default().push(v);
        }
        Query(m)
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .get(k)
            .and_then(|v| v.first())
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
    /// Every value of `k`, empty ones included.
    fn values(&self, k: &str) -> &[String] {
        self.0.get(k).map_or(&[], Vec::as_slice)
    }
    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("1" | "true" | "True"))
    }
}

/// A request for a resource, parsed from its path.
#[derive(Debug)]
struct Target {
    res: &'static Resource,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(group: &str, version: &str, rest: &[&str], path: &str) -> Result<Target, ApiError> {
    let find = |plural: &str| {
        resources::by_path(group, version, plural).ok_or_else(|| ApiError::no_route(path))
    };
    // /namespaces/{ns}/{plural}[/{name}[/{sub}]] when {plural} is namespaced here.
    if rest.len() >= 3
        && rest[0] == "namespaces"
        && let Some(res) = resources::by_path(group, version, rest[2]).filter(|r| r.namespaced)
    {
        if rest.len() > 5 {
            return Err(ApiError::no_route(path));
        }
        return Ok(Target {
            res,
            ns: Some(rest[1].to_string()),
            name: rest.get(3).map(|s| s.to_string()),
            sub: rest.get(4).map(|s| s.to_string()),
        });
    }
    match rest {
        [plural] => Ok(Target {
            res: find(plural)?,
            ns: None,
            name: None,
            sub: None,
        }),
        [plural, name] => {
            let res = find(plural)?;
            if res.namespaced {
                return Err(ApiError::no_route(path));
            }
            Ok(Target {
                res,
                ns: None,
                name: Some(name.to_string()),
                sub: None,
            })
        }
        [plural, name, sub] => {
            let res = find(plural)?;
            if res.namespaced {
                return Err(ApiError::no_route(path));
            }
            Ok(Target {
                res,
                ns: None,
                name: Some(name.to_string()),
                sub: Some(sub.to_string()),
            })
        }
        _ => Err(ApiError::no_route(path)),
    }
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string()
}

async fn read_body(body: Body) -> Result<bytes::Bytes, ApiError> {
    use futures::StreamExt as _;
    // A body over the limit is still read to its end (up to DRAIN_LIMIT)
    // and dropped: answering while the client is still sending makes it
    // see a reset connection instead of the 413.
    const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        seen += chunk.len();
        if seen <= MAX_BODY {
            buf.extend_from_slice(&chunk);
        } else if seen > DRAIN_LIMIT {
            break;
        }
    }
    if seen > MAX_BODY {
        return Err(ApiError::too_large(MAX_BODY));
    }
    Ok(buf.freeze())
}

/// Parses a request body as JSON, or YAML for `application/yaml`.
fn parse_body(headers: &HeaderMap, bytes: &[u8]) -> Result<Value, ApiError> {
    let ct = content_type(headers);
    let kind = ct.split(';').next().unwrap_or_default().trim();
    match kind {
        protobuf::MEDIA_TYPE => protobuf::decode(bytes),
        "application/json" | "" | "*/*" => serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}"))),
        "application/yaml" | "application/x-yaml" | "text/yaml" => {
            let mut v: Value = serde_norway::from_slice(bytes).map_err(|e| {
                ApiError::bad_request(format!("the request body is not valid YAML: {e}"))
            })?;
            weft_api::client::yaml11_modes(&mut v);
            Ok(v)
        }
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append("Warning", v);
        }
    }
    resp
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.contains("as=Table") && t.contains("g=meta.k8s.io"))
        })
}

async fn dispatch(
    st: &ApiState,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    bytes: bytes::Bytes,
    cert_user: Option<&User>,
) -> Result<Response, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if let ["healthz" | "livez" | "readyz", ..] = segs.as_slice() {
        return Ok((StatusCode::OK, "ok").into_response());
    }
    let user = authenticate(st, headers, cert_user).await?;
    let raw_query = query.unwrap_or_default();
    let query = Query::parse(query);
    // Paths outside the resource tree are authorized as paths.
    let resource_path = matches!(
        segs.as_slice(),
        ["api", "v1", _, ..] | ["apis", _, _, _, ..]
    );
    if !resource_path {
        let verb = method.as_str().to_ascii_lowercase();
        authorized(
            st,
            &user,
            &Attributes {
                verb: &verb,
                path: Some(path),
                ..Default::default()
            },
        )
        .await?;
    }
    if let Some(resp) = reviews::serve(st, &user, method, &segs, headers, &bytes).await? {
        return Ok(resp);
    }
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        [] => return Ok(json_response(200, &discovery::root_paths())),
        ["version"] => return Ok(json_response(200, &discovery::version())),
        ["api"] => return Ok(discovery::respond(headers, true)),
        ["apis"] => return Ok(discovery::respond(headers, false)),
        ["api", "v1"] => return Ok(json_response(200, &discovery::resource_list("", "v1")?)),
        ["apis", g] => return Ok(json_response(200, &discovery::api_group(g)?)),
        ["apis", g, v] => return Ok(json_response(200, &discovery::resource_list(g, v)?)),
        ["openapi", "v2"] if discovery::wants_json(headers) => {
            return Ok(discovery::openapi_v2_json());
        }
        ["openapi", "v2"] => return Ok(discovery::openapi_v2()),
        ["openapi", "v3"] => return Ok(json_response(200, &discovery::openapi_v3_root())),
        ["openapi", "v3", rest @ ..] => {
            return discovery::openapi_v3(&rest.join("/"), query.get("hash"));
        }
        ["metrics"] => {
            let mut resp = Response::new(Body::from(st.metrics.render()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return Ok(resp);
        }
        ["openapi", ..] => return Err(ApiError::no_route(path)),
        ["api", "v1", "nodes", node, "proxy", rest @ ..] => {
            authorized(
                st,
                &user,
                &Attributes {
                    verb: proxy_verb(method),
                    resource: "nodes",
                    subresource: Some("proxy"),
                    name: Some(node),
                    ..Default::default()
                },
            )
            .await?;
            return proxy::node_proxy(st, node, &rest.join("/"), raw_query).await;
        }
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route(path)),
    };
    let target = parse_target(group, version, rest, path)?;
    let res = target.res;
    if let Some(sub) = &target.sub
        && !res.subresources.contains(&sub.as_str())
    {
        return Err(ApiError::no_route(path));
    }
    let watching = query.flag("watch");
    let verb = match (method.as_str(), target.name.is_some()) {
        ("GET", false) if watching => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "{method} is not supported on {path}"
            )));
        }
    };
    // A namespaced kind is written under its namespace's path; its
    // cluster-wide path only lists and watches, as kube-apiserver serves it
    // (a DELETE there would empty the kind in every namespace).
    if res.namespaced && target.ns.is_none() && matches!(verb, "create" | "deletecollection") {
        return Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on {path}: {} are created and deleted under /namespaces/{{namespace}}/",
            res.plural
        )));
    }
    let attrs = Attributes {
        verb,
        group: res.group,
        resource: res.plural,
        subresource: target.sub.as_deref(),
        namespace: target.ns.as_deref(),
        name: target.name.as_deref(),
        path: None,
    };
    match authorized(st, &user, &attrs).await? {
        Decision::Allow | Decision::Deny(_) => {}
        Decision::IfPodOnNode(node) => {
            let name = target.name.as_deref().unwrap_or_default();
            let pod = st
                .registry
                .get_json(res, target.ns.as_deref(), name)
                .await?
                .map(|(p, _)| p)
                .ok_or_else(|| ApiError::not_found(res.plural, res.group, name))?;
            if pod["spec"]["nodeName"].as_str() != Some(node.as_str()) {
                return Err(ApiError::forbidden(format!(
                    "node \"{node}\" can only change pods bound to it; pod \"{name}\" is not"
                )));
            }
        }
        Decision::IfReferencedOnNode(node) => {
            let name = target.name.as_deref().unwrap_or_default();
            let ns = target.ns.as_deref();
            let wanted = (res.plural, name.to_string());
            // The cache's pods of the node first (an index: a node's pods,
            // not its namespace's); the store when they do not say yes,
            // for a pod bound a moment ago that the cache has not seen.
            let cached = st.registry.namespaces.as_ref().is_some_and(|c| {
                c.pods_on_node(&node).iter().any(|p| {
                    p.metadata.namespace.as_deref() == ns
                        && p.spec
                            .as_ref()
                            .is_some_and(|s| weft_api::pod::references(s).contains(&wanted))
                })
            });
            let referenced = cached || {
                let pods = weft_api::resources::by_kind("v1", "Pod").expect("pods are served");
                let (pods, _) = st
                    .registry
                    .list_json(pods, ns, |p| {
                        p["spec"]["nodeName"].as_str() == Some(node.as_str())
                    })
                    .await?;
                pods.into_iter().any(|p| {
                    serde_json::from_value::<k8s_openapi::api::core::v1::PodSpec>(p["spec"].clone())
                        .is_ok_and(|spec| weft_api::pod::references(&spec).contains(&wanted))
                })
            };
            if !referenced {
                return Err(ApiError::forbidden(format!(
                    "User \"{}\" cannot get resource \"{}\" in API group \"\" in the namespace \"{}\": no relationship found between node '{node}' and this object",
                    user.name,
                    res.plural,
                    ns.unwrap_or_default()
                )));
            }
        }
    }
    let ns = target.ns.as_deref();
    let table = wants_table(headers);
    let fv = FieldValidation::parse(query.get("fieldValidation"));
    // Who writes, for managedFields: `?fieldManager=`, else the client.
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let manager = match crate::fieldmanager::manager_name(query.get("fieldManager"), agent) {
        Ok(m) => m,
        Err(e) if matches!(verb, "create" | "update" | "patch") => return Err(e),
        Err(_) => crate::fieldmanager::manager_name(None, agent)?,
    };
    let kind = kind_of(res);
    let get = |name: String| async move {
        st.registry
            .get_json(res, ns, &name)
            .await?
            .map(|(o, _)| o)
            .ok_or_else(|| ApiError::not_found(res.plural, res.group, &name))
    };
    match (verb, target.sub.as_deref()) {
        ("watch", None) => watch::serve(st, res, ns, &query, table).await,
        ("list", None) => list::serve(st, res, ns, &query, table).await,
        ("get", None | Some("status")) => {
            // resourceVersion=N: not older than N, as for a list.
            if let Some(rv) = query.get("resourceVersion") {
                let rv = parse_rv(rv)?;
                if rv > 0 {
                    list::wait_for_revision(st, rv).await?;
                }
            }
            let obj = get(target.name.clone().unwrap_or_default()).await?;
            if table {
                return Ok(json_response(
                    200,
                    &table::table(
                        res,
                        std::slice::from_ref(&obj),
                        None,
                        &query_include(&query),
                    ),
                ));
            }
            Ok(json_response(200, &obj))
        }
        ("get", Some("scale")) => {
            let obj = get(target.name.clone().unwrap_or_default()).await?;
            Ok(json_response(200, &scale_of(&obj)))
        }
        ("create", None) if target.name.is_none() => {
            let body = parse_body(headers, &bytes)?;
            if res.group == crate::registry::rbac::GROUP {
                st.rbac.admit_write(&user, res.plural, ns, &body)?;
            }
            let decoded = kind.decode(body, &fv)?;
            auth::check_body_name(&user, res.plural, &decoded.name)?;
            let reg = registry_for(st, &query, &user, &manager)?;
            let mut warnings = decoded.warnings.clone();
            warnings.extend(admission::pod_security(st, ns, &decoded).await?);
            warnings.extend(admission::advisories(&decoded));
            let created = kind.create(&reg, ns, decoded).await?;
            Ok(with_warnings(json_response(201, &created), &warnings))
        }
        ("create", Some("token")) => {
            let name = target.name.as_deref().unwrap_or_default();
            let body = parse_body(headers, &bytes)?;
            let answer = token_request(st, &user, ns.unwrap_or("default"), name, body).await?;
            Ok(json_response(201, &answer))
        }
        ("create", Some("eviction")) => {
            let decoded = decode_object::<k8s_openapi::api::policy::v1::Eviction>(
                "policy/v1",
                "Eviction",
                parse_body(headers, &bytes)?,
            )?;
            let pod = target.name.as_deref().unwrap_or_default();
            // As kube-apiserver: the Eviction names the pod of its URL.
            if decoded
                .object
                .metadata
                .name
                .as_deref()
                .is_some_and(|n| n != pod)
            {
                return Err(ApiError::bad_request(
                    "name in URL does not match name in Eviction object",
                ));
            }
            let body_dry_run = decoded
                .object
                .delete_options
                .as_ref()
                .and_then(|o| o.dry_run.clone())
                .unwrap_or_default();
            registry_for_with(st, &query, &user, &body_dry_run, &manager)?
                .evict(
                    ns.unwrap_or("default"),
                    pod,
                    decoded.object.delete_options.as_ref(),
                )
                .await?;
            Ok(json_response(
                201,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ))
        }
        ("create", Some("binding")) => {
            let decoded = decode_object::<k8s_openapi::api::core::v1::Binding>(
                "v1",
                "Binding",
                parse_body(headers, &bytes)?,
            )?;
            let pod = target.name.as_deref().unwrap_or_default();
            // As kube-apiserver: the Binding names the pod of its URL.
            if decoded
                .object
                .metadata
                .name
                .as_deref()
                .is_some_and(|n| n != pod)
            {
                return Err(ApiError::bad_request(
                    "name in URL does not match name in Binding object",
                ));
            }
            if let (Some(body), Some(url)) = (decoded.object.metadata.namespace.as_deref(), ns)
                && body != url
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            let node = decoded.object.target.name.clone().unwrap_or_default();
            if node.is_empty() {
                return Err(ApiError::invalid(
                    "Binding",
                    "",
                    target.name.as_deref().unwrap_or_default(),
                    vec![weft_api::Cause::required("target.name")],
                ));
            }
            registry_for(st, &query, &user, &manager)?
                .bind(ns.unwrap_or("default"), pod, &node)
                .await?;
            Ok(json_response(
                201,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ))
        }
        ("update", None | Some("status")) => {
            let name = target.name.as_deref().unwrap_or_default();
            let body = parse_body(headers, &bytes)?;
            if res.group == crate::registry::rbac::GROUP {
                st.rbac.admit_write(&user, res.plural, ns, &body)?;
            }
            let decoded = kind.decode(body, &fv)?;
            let reg = registry_for(st, &query, &user, &manager)?;
            let write = if target.sub.is_some() {
                Write::Status
            } else {
                Write::Update
            };
            let mut warnings = decoded.warnings.clone();
            if write == Write::Update {
                warnings.extend(admission::pod_security(st, ns, &decoded).await?);
            }
            let updated = kind.update(&reg, ns, name, decoded, write).await?;
            Ok(with_warnings(json_response(200, &updated), &warnings))
        }
        ("update", Some("scale")) | ("patch", Some("scale")) => {
            let name = target.name.as_deref().unwrap_or_default().to_string();
            let reg = registry_for(st, &query, &user, &manager)?.managed_by(&manager, "scale");
            let is_patch = verb == "patch";
            let ct = content_type(headers);
            let (updated, _) = kind
                .modify(&reg, ns, &name, Write::Update, &fv, &mut |obj| {
                    let mut scale = scale_of(&obj);
                    let current_rv = scale["metadata"]["resourceVersion"].clone();
                    if is_patch {
                        patch::apply(&ct, &mut scale, &bytes, reg.max_object)?;
                    } else {
                        scale = parse_body(headers, &bytes)?;
                        if let Some(rv) = scale["metadata"]["resourceVersion"].as_str()
                            && Some(rv) != current_rv.as_str() {
                                return Err(ApiError::conflict(res.plural, res.group, &name, "the object has been modified; please apply your changes to the latest version and try again"));
                            }
                    }
                    // Scale's replicas is a plain int32 in Go: left out is 0
                    // (as kube reads it, and as a protobuf body leaves it).
                    let replicas = match &scale["spec"]["replicas"] {
                        Value::Null => 0,
                        v => v.as_i64().ok_or_else(|| {
                            ApiError::invalid("Scale", "autoscaling", &name, vec![weft_api::Cause::invalid("spec.replicas", v, "must be an integer")])
                        })?,
                    };
                    if replicas < 0 {
                        return Err(ApiError::invalid("Scale", "autoscaling", &name, vec![weft_api::Cause::invalid("spec.replicas", replicas, "must be greater than or equal to 0")]));
                    }
                    let mut obj = obj;
                    obj["spec"]["replicas"] = json!(replicas);
                    Ok(obj)
                })
                .await?;
            Ok(json_response(200, &scale_of(&updated)))
        }
        ("patch", None | Some("status")) if apply::is_apply(&content_type(headers)) => {
            let name = target.name.as_deref().unwrap_or_default();
            let reg = registry_for(st, &query, &user, &manager)?;
            let (code, obj, warnings) = apply::serve(
                st,
                reg,
                kind,
                ns,
                name,
                target.sub.as_deref(),
                &query,
                &user,
                &fv,
                &bytes,
            )
            .await?;
            Ok(with_warnings(json_response(code, &obj), &warnings))
        }
        ("patch", None | Some("status")) => {
            let name = target.name.as_deref().unwrap_or_default().to_string();
            if query.get("force").is_some() {
                return Err(ApiError::invalid(
                    "PatchOptions",
                    "meta.k8s.io",
                    "",
                    vec![weft_api::Cause::forbidden(
                        "force",
                        "may not be specified for non-apply patch",
                    )],
                ));
            }
            let reg = registry_for(st, &query, &user, &manager)?;
            let ct = content_type(headers);
            let write = if target.sub.is_some() {
                Write::Status
            } else {
                Write::Update
            };
            // Pod Security judges what the patch makes of a pod spec.
            let labels = admission::patch_labels(st, res.plural, write, ns).await;
            let mut admitted = Vec::new();
            let (updated, mut warnings) = kind
                .modify(&reg, ns, &name, write, &fv, &mut |obj| {
                    let before = labels.as_ref().map(|_| obj.clone());
                    let mut patched = obj;
                    patch::apply(&ct, &mut patched, &bytes, reg.max_object)?;
                    if res.group == crate::registry::rbac::GROUP {
                        st.rbac.admit_write(&user, res.plural, ns, &patched)?;
                    }
                    if let (Some(labels), Some(before)) = (&labels, &before) {
                        // Assigned, not added: a conflict runs this again.
                        admitted = admission::patched(
                            st.registry.pod_security_default,
                            labels,
                            ns.unwrap_or_default(),
                            res.plural,
                            before,
                            &patched,
                        )?;
                    }
                    Ok(patched)
                })
                .await?;
            warnings.extend(admitted);
            Ok(with_warnings(json_response(200, &updated), &warnings))
        }
        ("delete", None) => {
            let name = target.name.as_deref().unwrap_or_default();
            let opts = delete_options(headers, &bytes)?;
            let grace = grace_period(&query, opts.grace)?;
            let reg = registry_for_with(st, &query, &user, &opts.dry_run, &manager)?;
            let mut warnings = Vec::new();
            let policy = propagation(res, opts.policy, &query, &mut warnings)?;
            let deleted = reg
                .delete_object(res, ns, name, (opts.uid, opts.rv), policy.as_deref(), grace)
                .await?;
            let (code, body) = delete_answer(res, deleted, opts.orphan_dependents);
            Ok(with_warnings(json_response(code, &body), &warnings))
        }
        ("deletecollection", None) => {
            // The DeleteOptions of a collection apply to each object.
            let opts = delete_options(headers, &bytes)?;
            let grace = grace_period(&query, opts.grace)?;
            let mut warnings = Vec::new();
            let policy = propagation(res, opts.policy, &query, &mut warnings)?;
            let reg = registry_for_with(st, &query, &user, &opts.dry_run, &manager)?;
            let (items, _) = selected(st, res, ns, &query).await?;
            let objects = items
                .iter()
                .map(|o| {
                    (
                        o["metadata"]["namespace"].as_str().map(String::from),
                        o["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    )
                })
                .collect();
            let deleted = reg
                .delete_collection(res, objects, policy.as_deref(), grace)
                .await?;
            Ok(with_warnings(
                json_response(
                    200,
                    &json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": {}, "items": deleted}),
                ),
                &warnings,
            ))
        }
        ("get", Some("log")) => {
            let name = target.name.as_deref().unwrap_or_default();
            proxy::pod_log(st, ns.unwrap_or("default"), name, &query).await
        }
        ("get" | "create", Some("exec")) => {
            // kubectl falls back to SPDY when its WebSocket attempt was
            // refused, and shows only this answer: give the real reason
            // first when there is one.
            let name = target.name.as_deref().unwrap_or_default();
            proxy::exec_precheck(st, ns.unwrap_or("default"), name, &query).await?;
            Err(ApiError::bad_request(
                "pods/exec and pods/attach are served over WebSocket only (kubectl 1.30 and later, or `weft exec`); SPDY is not supported",
            ))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on {path}"
        ))),
    }
}

/// `pods/{name}/exec`: admins only, over a WebSocket (Kubernetes'
/// `v5.channel.k8s.io` / `v4.channel.k8s.io`), relayed to the pod's agent.
async fn exec(
    st: &ApiState,
    parts: &mut axum::http::request::Parts,
    cert_user: Option<&User>,
    ns: &str,
    name: &str,
) -> Result<Response, ApiError> {
    use axum::extract::FromRequestParts as _;
    let user = authenticate(st, &parts.headers, cert_user).await?;
    let sub = if parts.uri.path().ends_with("/attach") {
        "attach"
    } else {
        "exec"
    };
    // kube asks `create` of a WebSocket's GET too (since 1.30).
    authorized(
        st,
        &user,
        &Attributes {
            verb: "create",
            resource: "pods",
            subresource: Some(sub),
            namespace: Some(ns),
            name: Some(name),
            ..Default::default()
        },
    )
    .await?;
    let protocols = proxy::offered_protocols(&parts.headers);
    let raw_query = parts.uri.query().unwrap_or_default().to_string();
    let query = Query::parse(Some(&raw_query));
    let ws = WebSocketUpgrade::from_request_parts(parts, &()).await.map_err(|_| {
        ApiError::bad_request(
            "pods/exec and pods/attach are served over WebSocket only (kubectl 1.30 and later, or `weft exec`); SPDY is not supported",
        )
    })?;
    proxy::pod_exec(st, sub, ns, name, &raw_query, &query, protocols, ws).await
}

/// Who is asking: the user of a verified client certificate, else of a
/// bearer token (kube-apiserver's x509 authenticator comes before its
/// token authenticators too); 401 for neither.
///
/// A request with `Impersonate-User` (and `Impersonate-Group`,
/// `Impersonate-Uid`) is then served as that user, once its real user is
/// authorized to `impersonate` it, each group and the uid, as
/// kube-apiserver does it (`kubectl --as`).
async fn authenticate(
    st: &ApiState,
    headers: &HeaderMap,
    cert_user: Option<&User>,
) -> Result<User, ApiError> {
    let real = match cert_user {
        Some(u) => u.clone(),
        None => {
            let token = auth::bearer(
                headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok()),
            )
            .ok_or_else(ApiError::unauthorized)?;
            // A JWT is a service account's (the static file's tokens are
            // not JWTs): no look at the file for those.
            if satoken::looks_like_jwt(token) {
                service_account_user(st, token, &[satoken::ISSUER])
                    .await
                    .map_err(|_| ApiError::unauthorized())?
                    .0
            } else {
                st.tokens.find(token).ok_or_else(ApiError::unauthorized)?
            }
        }
    };
    let values = |name: &str| -> Result<Vec<String>, ApiError> {
        headers
            .get_all(name)
            .iter()
            .map(|v| {
                v.to_str()
                    .map(String::from)
                    .map_err(|_| ApiError::bad_request(format!("{name} is not text")))
            })
            .collect()
    };
    let users = values("impersonate-user")?;
    let groups = values("impersonate-group")?;
    let uids = values("impersonate-uid")?;
    let extras = headers
        .keys()
        .any(|k| k.as_str().starts_with("impersonate-extra-"));
    if users.is_empty() {
        if !groups.is_empty() || !uids.is_empty() || extras {
            return Err(ApiError::bad_request(
                "requested impersonation of groups, a uid or extra fields without impersonating a user",
            ));
        }
        return Ok(real);
    }
    if users.len() > 1 || uids.len() > 1 {
        return Err(ApiError::bad_request(
            "only one Impersonate-User and one Impersonate-Uid may be given",
        ));
    }
    if extras {
        return Err(ApiError::bad_request(
            "Impersonate-Extra-* is not supported: Weft's users carry no extra fields",
        ));
    }
    let name = users[0].clone();
    // A service account's user: its namespace and name.
    let account = name
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'));
    match account {
        Some((ns, sa)) => {
            may_impersonate(
                st,
                &real,
                Attributes {
                    verb: "impersonate",
                    resource: "serviceaccounts",
                    namespace: Some(ns),
                    name: Some(sa),
                    ..Default::default()
                },
            )
            .await?
        }
        None => {
            may_impersonate(
                st,
                &real,
                Attributes {
                    verb: "impersonate",
                    resource: "users",
                    name: Some(&name),
                    ..Default::default()
                },
            )
            .await?
        }
    }
    for g in &groups {
        may_impersonate(
            st,
            &real,
            Attributes {
                verb: "impersonate",
                resource: "groups",
                name: Some(g),
                ..Default::default()
            },
        )
        .await?;
    }
    for u in &uids {
        may_impersonate(
            st,
            &real,
            Attributes {
                verb: "impersonate",
                group: "authentication.k8s.io",
                resource: "uids",
                name: Some(u),
                ..Default::default()
            },
        )
        .await?;
    }
    let mut all_groups = groups;
    if let Some((ns, _)) = account {
        for g in [
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{ns}"),
        ] {
            if !all_groups.contains(&g) {
                all_groups.push(g);
            }
        }
    }
    if !all_groups.iter().any(|g| g == auth::AUTHENTICATED) {
        all_groups.push(auth::AUTHENTICATED.to_string());
    }
    Ok(User {
        name,
        uid: uids.into_iter().next().unwrap_or_default(),
        groups: all_groups,
    })
}

/// TokenRequest (`serviceaccounts/NAME/token`): a token for service
/// account `name` in `ns`, for the audiences asked (the API's by default),
/// for `expirationSeconds` (an hour by default; 10 minutes to 48 hours),
/// bound to a pod when `boundObjectRef` names one (which must exist, with
/// the uid given). A node's agent may ask only for the account of a pod
/// bound to it, bound to that pod.
async fn token_request(
    st: &ApiState,
    user: &User,
    ns: &str,
    name: &str,
    body: Value,
) -> Result<Value, ApiError> {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
    // The status is the server's to write (clients send it empty).
    let mut body = body;
    if let Some(obj) = body.as_object_mut() {
        obj.remove("status");
    }
    let req =
        decode_object::<TokenRequest>("authentication.k8s.io/v1", "TokenRequest", body)?.object;
    let invalid = |field: &str, value: String, why: &str| {
        ApiError::invalid(
            "TokenRequest",
            "authentication.k8s.io",
            name,
            vec![weft_api::Cause::invalid(field, value, why)],
        )
    };
    let seconds = req.spec.expiration_seconds.unwrap_or(3600);
    if seconds < satoken::MIN_SECONDS {
        return Err(invalid(
            "spec.expirationSeconds",
            seconds.to_string(),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if seconds > 1 << 32 {
        return Err(invalid(
            "spec.expirationSeconds",
            seconds.to_string(),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let seconds = seconds.min(satoken::MAX_SECONDS);
    let sa = st
        .registry
        .find::<ServiceAccount>(Some(ns), name)
        .await?
        .map(|(a, _)| a)
        .ok_or_else(|| ApiError::not_found("serviceaccounts", "", name))?;
    let mut audiences = req.spec.audiences.clone();
    if audiences.is_empty() {
        audiences.push(satoken::ISSUER.to_string());
    }
    let mut bound = req.spec.bound_object_ref.clone();
    let pod = match &bound {
        None => None,
        Some(r) => {
            if r.kind.as_deref() != Some("Pod") || r.api_version.as_deref().unwrap_or("v1") != "v1"
            {
                return Err(invalid(
                    "spec.boundObjectRef.kind",
                    r.kind.clone().unwrap_or_default(),
                    "Weft binds tokens to pods (kind Pod, apiVersion v1) only",
                ));
            }
            let pod_name = r.name.clone().unwrap_or_default();
            let pod = st
                .registry
                .find::<Pod>(Some(ns), &pod_name)
                .await?
                .map(|(p, _)| p)
                .ok_or_else(|| ApiError::not_found("pods", "", &pod_name))?;
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if let Some(want) = r.uid.as_deref().filter(|u| !u.is_empty())
                && want != uid
            {
                return Err(ApiError::conflict(
                    "pods",
                    "",
                    &pod_name,
                    format!(
                        "the UID in the bound object reference ({want}) does not match the UID in record ({uid}); the object might have been deleted and then recreated"
                    ),
                ));
            }
            let pod_sa = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.as_deref())
                .filter(|s| !s.is_empty())
                .unwrap_or("default");
            if pod_sa != name {
                return Err(ApiError::forbidden(format!(
                    "serviceaccounts \"{name}\" is forbidden: pod {ns}/{pod_name} runs as service account \"{pod_sa}\", not \"{name}\""
                )));
            }
            if let Some(b) = bound.as_mut() {
                b.uid = Some(uid.clone());
            }
            Some((pod_name, uid, pod))
        }
    };
    if let Some(node) = user.node() {
        let on_node = pod.as_ref().is_some_and(|(_, _, p)| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
        });
        if !on_node {
            return Err(ApiError::forbidden(format!(
                "serviceaccounts \"{name}\" is forbidden: node \"{node}\" may only ask for tokens bound to pods bound to it"
            )));
        }
    }
    let (token, exp) = st
        .sa_tokens
        .issue(
            ns,
            satoken::Ref {
                name: name.to_string(),
                uid: sa.metadata.uid.clone().unwrap_or_default(),
            },
            pod.map(|(name, uid, _)| satoken::Ref { name, uid }),
            audiences.clone(),
            seconds,
        )
        .map_err(|e| ApiError::internal(format!("sign the token: {e}")))?;
    let expires = weft_api::meta::format_rfc3339(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp.max(0).unsigned_abs()),
    );
    let mut spec = serde_json::to_value(&req.spec).unwrap_or_default();
    spec["audiences"] = json!(audiences);
    spec["expirationSeconds"] = json!(seconds);
    if let Some(b) = bound {
        spec["boundObjectRef"] = serde_json::to_value(b).unwrap_or_default();
    }
    Ok(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": expires},
    }))
}

/// The service account a token speaks for, once its signature, expiry and
/// audience hold and its ServiceAccount (and the pod it is bound to) still
/// exist with the uids it names; why not otherwise.
pub(crate) async fn service_account_user(
    st: &ApiState,
    token: &str,
    audiences: &[&str],
) -> Result<(User, satoken::Claims), String> {
    use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
    let claims = st.sa_tokens.verify(token, audiences)?;
    let ns = claims.kube.namespace.as_str();
    let sa = &claims.kube.serviceaccount;
    // The cache first; the store for what it may not have seen yet.
    let sa_uid = match st.cache.store::<ServiceAccount>().get(Some(ns), &sa.name) {
        Some(a) => a.metadata.uid.clone(),
        None => st
            .registry
            .find::<ServiceAccount>(Some(ns), &sa.name)
            .await
            .map_err(|e| e.to_string())?
            .and_then(|(a, _)| a.metadata.uid),
    };
    if sa_uid.as_deref() != Some(sa.uid.as_str()) {
        return Err(format!("service account {ns}/{} has been deleted", sa.name));
    }
    if let Some(pod) = &claims.kube.pod {
        // Only its uid is wanted: no copy of the pod.
        let uid = match st.cache.store::<Pod>().get(Some(ns), &pod.name) {
            Some(p) => p.metadata.uid.clone(),
            None => st
                .registry
                .find::<Pod>(Some(ns), &pod.name)
                .await
                .map_err(|e| e.to_string())?
                .and_then(|(p, _)| p.metadata.uid),
        };
        if uid.as_deref() != Some(pod.uid.as_str()) {
            return Err(format!("pod {ns}/{} has been deleted", pod.name));
        }
    }
    Ok((claims.user(), claims))
}

/// Whether `real` may impersonate what `a` names (verb `impersonate`).
async fn may_impersonate(st: &ApiState, real: &User, a: Attributes<'_>) -> Result<(), ApiError> {
    match authorized(st, real, &a).await? {
        Decision::Allow => Ok(()),
        _ => Err(forbidden(
            &a,
            &format!(
                "User \"{}\" cannot impersonate resource \"{}\"",
                real.name, a.resource
            ),
        )),
    }
}

/// Authorizes a request as kube-apiserver's chain does: admins
/// (system:masters), then the node authorizer, then RBAC. A refusal is a
/// 403 in kube's words (`pods "x" is forbidden: User "alice" cannot get
/// resource "pods" in API group "" in the namespace "team"`); what the node
/// authorizer allows on a condition comes back for the caller to check.
async fn authorized(st: &ApiState, user: &User, a: &Attributes<'_>) -> Result<Decision, ApiError> {
    match auth::authorize(user, a) {
        Decision::Deny(reason) => {
            if st
                .rbac
                .allows_fresh(user, a, st.registry.store.as_ref())
                .await
            {
                Ok(Decision::Allow)
            } else {
                Err(forbidden(a, &reason))
            }
        }
        d => Ok(d),
    }
}

/// The verb of a proxy request, as kube maps its method.
fn proxy_verb(method: &Method) -> &'static str {
    match method.as_str() {
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "get",
    }
}

/// The registry to write through: `dryRun=All` checks and answers as usual
/// and stores nothing.
/// A node's agent writes through a registry that admits only what
/// NodeRestriction allows it.
fn registry_for(
    st: &ApiState,
    query: &Query,
    user: &User,
    manager: &str,
) -> Result<Registry, ApiError> {
    registry_for_with(st, query, user, &[], manager)
}

/// As [`registry_for`], with the `dryRun` of a body's DeleteOptions too
/// (kubectl sends a delete's or an eviction's there, not in the query).
fn registry_for_with(
    st: &ApiState,
    query: &Query,
    user: &User,
    body_dry_run: &[String],
    manager: &str,
) -> Result<Registry, ApiError> {
    let reg = match user.node() {
        Some(node) => st.registry.as_node(node),
        None => st.registry.clone(),
    }
    .managed_by(manager, "");
    // Every value must be All: a write that was asked to be a dry run in any
    // way (`?dryRun`, `?dryRun=All&dryRun=`, the body's) must not happen
    // for real.
    let values: Vec<&str> = query
        .values("dryRun")
        .iter()
        .map(String::as_str)
        .chain(body_dry_run.iter().map(String::as_str))
        .collect();
    match values.as_slice() {
        [] => Ok(reg),
        values => match values.iter().find(|v| **v != "All") {
            None => Ok(reg.dry()),
            Some(other) => Err(ApiError::bad_request(format!(
                "dryRun must be \"All\", not \"{other}\""
            ))),
        },
    }
}

/// The grace period of a delete: the query's, else the body's.
fn grace_period(query: &Query, body_grace: Option<i64>) -> Result<Option<i64>, ApiError> {
    match query.get("gracePeriodSeconds") {
        Some(g) => Ok(Some(g.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!("gracePeriodSeconds must be an integer, not {g:?}"))
        })?)),
        None => Ok(body_grace),
    }
}

/// The propagation policy of a delete: the body's, else the query's, else
/// the kind's default. batch/v1 Jobs keep their pods unless told otherwise,
/// as kube-apiserver's job strategy, with its warning.
fn propagation(
    res: &Resource,
    body: Option<String>,
    query: &Query,
    warnings: &mut Vec<String>,
) -> Result<Option<String>, ApiError> {
    let policy = body.or_else(|| query.get("propagationPolicy").map(String::from));
    if let Some(p) = &policy
        && !["Background", "Foreground", "Orphan"].contains(&p.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "propagationPolicy must be Background, Foreground or Orphan, not {p}"
        )));
    }
    if policy.is_none() && res.kind == "Job" {
        warnings.push(
            "child pods are preserved by default when jobs are deleted; set propagationPolicy=Background to remove them or set propagationPolicy=Orphan to suppress this warning"
                .to_string(),
        );
        return Ok(Some("Orphan".into()));
    }
    Ok(policy)
}

/// What a DELETE body asks.
#[derive(Default)]
struct DeleteOptions {
    /// Preconditions: the object's uid and resourceVersion.
    uid: Option<String>,
    rv: Option<i64>,
    /// propagationPolicy, or what the deprecated orphanDependents says.
    policy: Option<String>,
    /// The deprecated orphanDependents as given (kube answers 202 to an
    /// explicit `false` whose deletion is still pending).
    orphan_dependents: Option<bool>,
    grace: Option<i64>,
    dry_run: Vec<String>,
}

fn delete_options(headers: &HeaderMap, bytes: &[u8]) -> Result<DeleteOptions, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(DeleteOptions::default());
    }
    // kubectl sends DeleteOptions without kind and apiVersion, or as
    // meta.k8s.io/v1: read the fields, not the type.
    let body = parse_body(headers, bytes)?;
    if !body.is_object() {
        return Err(ApiError::bad_request("DeleteOptions must be a JSON object"));
    }
    let pre = &body["preconditions"];
    let uid = pre["uid"].as_str().map(String::from);
    let rv = pre["resourceVersion"].as_str().map(parse_rv).transpose()?;
    if let Some(policy) = body["propagationPolicy"].as_str()
        && !["Background", "Foreground", "Orphan"].contains(&policy)
    {
        return Err(ApiError::bad_request(format!(
            "propagationPolicy must be Background, Foreground or Orphan, not {policy}"
        )));
    }
    let orphan_dependents = match &body["orphanDependents"] {
        Value::Null => None,
        Value::Bool(b) => Some(*b),
        other => {
            return Err(ApiError::bad_request(format!(
                "orphanDependents must be a boolean, not {other}"
            )));
        }
    };
    let policy = match (body["propagationPolicy"].as_str(), orphan_dependents) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "DeleteOptions",
                "meta.k8s.io",
                "",
                vec![weft_api::Cause::invalid(
                    "propagationPolicy",
                    &body["propagationPolicy"],
                    "orphanDependents and deletionPropagation cannot be both set",
                )],
            ));
        }
        (Some(p), None) => Some(p.to_string()),
        (None, Some(true)) => Some("Orphan".to_string()),
        (None, Some(false)) => Some("Background".to_string()),
        (None, None) => None,
    };
    // Foreground is served as Background: the object goes at once and the
    // garbage collector removes its dependents after it.
    let grace = match &body["gracePeriodSeconds"] {
        Value::Null => None,
        g => Some(g.as_i64().ok_or_else(|| {
            ApiError::bad_request(format!("gracePeriodSeconds must be an integer, not {g}"))
        })?),
    };
    let dry_run = match &body["dryRun"] {
        Value::Null => Vec::new(),
        Value::Array(l) => l
            .iter()
            .map(|v| {
                v.as_str().map(String::from).ok_or_else(|| {
                    ApiError::bad_request(format!("dryRun must be a list of strings, not {v}"))
                })
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(ApiError::bad_request(format!(
                "dryRun must be a list of strings, not {other}"
            )));
        }
    };
    Ok(DeleteOptions {
        uid,
        rv,
        policy,
        orphan_dependents,
        grace,
        dry_run,
    })
}

/// The answer to a DELETE, as kube-apiserver gives it: the object when its
/// deletion is still pending (finalizers hold it) or when the kind's store
/// returns deleted objects (`ReturnDeletedObject`: pods, services,
/// namespaces and the like); otherwise a Status naming what went. 200,
/// or 202 for a pending deletion that asked `orphanDependents: false`.
fn delete_answer(res: &Resource, deleted: Value, orphan_dependents: Option<bool>) -> (u16, Value) {
    let pending = deleted["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
        || (deleted["metadata"]["deletionTimestamp"].is_string()
            && deleted["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .is_some_and(|g| g > 0));
    let code = if pending && orphan_dependents == Some(false) {
        202
    } else {
        200
    };
    if pending || res.returns_deleted_object() {
        return (code, deleted);
    }
    let meta = &deleted["metadata"];
    (
        code,
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            // kube names the resource (plural) as the details' kind.
            "details": {
                "name": meta["name"],
                "group": res.group,
                "kind": res.plural,
                "uid": meta["uid"],
            },
        }),
    )
}

fn query_include(query: &Query) -> String {
    query.get("includeObject").unwrap_or("Metadata").to_string()
}

/// The selectors of a list or watch request.
pub struct Selectors {
    pub label: LabelSelector,
    pub field: FieldSelector,
}

impl Selectors {
    pub fn parse(res: &Resource, query: &Query) -> Result<Self, ApiError> {
        let label = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(format!("unable to parse labelSelector: {e}")))?;
        let field = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default(), res.kind)
            .map_err(|e| ApiError::bad_request(format!("unable to parse fieldSelector: {e}")))?;
        Ok(Self { label, field })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.label.matches_object(obj) && self.field.matches(obj)
    }
}

async fn selected(
    st: &ApiState,
    res: &Resource,
    ns: Option<&str>,
    query: &Query,
) -> Result<(Vec<Value>, i64), ApiError> {
    let sel = Selectors::parse(res, query)?;
    // metadata.name=x needs only one read, as kubectl delete's wait does.
    if let Some(name) = sel.field.exact("metadata.name")
        && (ns.is_some() || !res.namespaced)
    {
        let rev = st
            .registry
            .store
            .revision()
            .await
            .map_err(crate::registry::store_error)?;
        let items = match st.registry.get_json(res, ns, name).await? {
            Some((obj, _)) if sel.matches(&obj) => vec![obj],
            _ => Vec::new(),
        };
        return Ok((items, rev));
    }
    st.registry.list_json(res, ns, |o| sel.matches(o)).await
}

/// The autoscaling/v1 Scale view of a Deployment or ReplicaSet.
fn scale_of(obj: &Value) -> Value {
    // A ReplicationController's selector is a plain map of labels.
    let selector = if obj["kind"] == "ReplicationController" {
        json!({"matchLabels": obj["spec"]["selector"]})
    } else {
        obj["spec"]["selector"].clone()
    };
    let selector = weft_api::selector::LabelSelector::from_k8s(&selector)
        .map(|s| selector_string(&s))
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": obj["metadata"]["name"],
            "namespace": obj["metadata"]["namespace"],
            "uid": obj["metadata"]["uid"],
            "resourceVersion": obj["metadata"]["resourceVersion"],
            "creationTimestamp": obj["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

/// A label selector in its text form.
pub fn selector_string(sel: &LabelSelector) -> String {
    use weft_api::selector::Requirement;
    sel.0
        .iter()
        .map(|r| match r {
            Requirement::In(k, v) if v.len() == 1 => format!("{k}={}", v[0]),
            Requirement::In(k, v) => format!("{k} in ({})", v.join(",")),
            Requirement::NotIn(k, v) => format!("{k} notin ({})", v.join(",")),
            Requirement::Exists(k) => k.clone(),
            Requirement::DoesNotExist(k) => format!("!{k}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The user a request runs as, for the in-process callers' logs.
pub fn describe_user(user: &User) -> String {
    format!("{} ({})", user.name, user.groups.join(","))
}
