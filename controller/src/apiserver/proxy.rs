//! What the API server forwards to a node's agent, as kube-apiserver does
//! to kubelet: `pods/log` (streamed), `pods/exec` (a WebSocket relayed
//! frame by frame) and `nodes/{name}/proxy/...` (stats).
//!
//! The agent's serving certificate is self-signed; the agent publishes its
//! SHA-256 in its Node's `weft.dev/serving-cert-sha256` annotation (which
//! only that node's token can write), and the connection is refused unless
//! the certificate presented matches it. The controller authenticates with
//! the node's own token, which only it and the agent know.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::ws::{Message as AxMessage, WebSocketUpgrade},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::{SinkExt as _, StreamExt as _};
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use serde_json::Value;
use sha2::Digest as _;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};

use super::{ApiState, Query};
use k8s_openapi::api::core::v1::{Node, Pod};
use weft_api::error::ApiError;

/// The Node annotation holding the hex SHA-256 of the agent's certificate.
pub const CERT_ANNOTATION: &str = "weft.dev/serving-cert-sha256";

/// Accepts exactly the certificate whose SHA-256 is pinned.
#[derive(Debug)]
struct Pinned {
    sha256: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = hex_sha256(end_entity.as_ref());
        if got == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the node's certificate (sha256 {got}) is not the one its Node object announces"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn hex_sha256(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where and how to reach a node's agent.
struct Agent {
    node: String,
    base: String,
    token: String,
    tls: rustls::ClientConfig,
}

async fn agent(st: &ApiState, node: &str) -> Result<Agent, ApiError> {
    let obj: Node = st.registry.get(None, node).await?;
    let status = obj.status.as_ref();
    let ip = status
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.iter().find(|x| x.type_ == "InternalIP"))
        .map(|x| x.address.clone())
        .ok_or_else(|| ApiError::unavailable(format!("node {node} has no InternalIP")))?;
    let port = status
        .and_then(|s| s.daemon_endpoints.as_ref())
        .and_then(|d| d.kubelet_endpoint.as_ref())
        .map(|k| k.port)
        .filter(|p| *p > 0)
        .unwrap_or(10250);
    let sha256 = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CERT_ANNOTATION))
        .ok_or_else(|| {
            ApiError::unavailable(format!(
                "node {node} has not published its agent's certificate ({CERT_ANNOTATION})"
            ))
        })?
        .to_string();
    let token = st
        .tokens
        .existing_node_token(node)
        .ok_or_else(|| ApiError::unavailable(format!("node {node} has no token")))?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::internal(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { sha256, provider }))
        .with_no_client_auth();
    Ok(Agent {
        node: node.to_string(),
        base: format!("{ip}:{port}"),
        token,
        tls,
    })
}

/// The pod's node and the container a request is about (the only one
/// when the pod has one, else the `container` parameter is required).
async fn pod_target(
    st: &ApiState,
    ns: &str,
    name: &str,
    query: &Query,
) -> Result<(String, String), ApiError> {
    let pod: Pod = st.registry.get(Some(ns), name).await?;
    let spec = pod.spec.unwrap_or_default();
    let node = spec.node_name.filter(|n| !n.is_empty()).ok_or_else(|| {
        ApiError::bad_request(format!(
            "pod {name} is not scheduled to a node yet; it has no logs and nothing to exec in"
        ))
    })?;
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    let inits: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    let container = match query.get("container") {
        Some(c) if names.contains(&c) || inits.contains(&c) => c.to_string(),
        Some(c) if inits.is_empty() => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}; choose one of: {names:?}"
            )));
        }
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}; choose one of: {names:?} or one of the init containers: {inits:?}"
            )));
        }
        None if names.len() == 1 => names[0].to_string(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: {names:?}"
            )));
        }
    };
    Ok((node, container))
}

fn client(a: &Agent) -> Result<reqwest::Client, ApiError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(a.tls.clone())
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| ApiError::internal(e.to_string()))
}

fn unreachable(a: &Agent, e: &dyn std::fmt::Display) -> ApiError {
    ApiError::unavailable(format!(
        "cannot reach the agent of node {} at {}: {e}",
        a.node, a.base
    ))
}

/// Relays the agent's answer: its status and body, streamed.
async fn relay(a: &Agent, url: String) -> Result<Response, ApiError> {
    let resp = client(a)?
        .get(&url)
        .bearer_auth(&a.token)
        .send()
        .await
        .map_err(|e| unreachable(a, &error_chain(&e)))?;
    let code = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let ct = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/plain")
        .to_string();
    let body = Body::from_stream(resp.bytes_stream());
    Ok((code, [(header::CONTENT_TYPE, ct)], body).into_response())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let t = x.to_string();
        if !s.contains(&t) {
            s = format!("{s}: {t}");
        }
        src = x.source();
    }
    s
}

/// `GET .../pods/{name}/log`: the container's log from its node.
pub async fn pod_log(
    st: &ApiState,
    ns: &str,
    name: &str,
    query: &Query,
) -> Result<Response, ApiError> {
    // The numbers are checked here, so that a bad one gets a Status that
    // names it (the agent's own refusal would reach clients as text).
    for k in ["tailLines", "sinceSeconds", "limitBytes"] {
        if let Some(v) = query.get(k)
            && v.parse::<i64>().is_err()
        {
            return Err(ApiError::bad_request(format!(
                "{k}: invalid value {v:?}: must be an integer"
            )));
        }
    }
    let (node, container) = pod_target(st, ns, name, query).await?;
    let params = {
        let mut p = form_urlencoded::Serializer::new(String::new());
        for k in [
            "follow",
            "tailLines",
            "previous",
            "timestamps",
            "sinceSeconds",
            "sinceTime",
            "limitBytes",
        ] {
            if let Some(v) = query.get(k) {
                p.append_pair(k, v);
            }
        }
        p.finish()
    };
    let a = agent(st, &node).await?;
    let url = format!(
        "https://{}/containerLogs/{ns}/{name}/{container}?{params}",
        a.base
    );
    relay(&a, url).await
}

/// `GET /api/v1/nodes/{name}/proxy/{path}?{query}`: a read of the node's
/// agent (its stats, its load-balancer maps), the query passed on as given.
pub async fn node_proxy(
    st: &ApiState,
    node: &str,
    path: &str,
    query: &str,
) -> Result<Response, ApiError> {
    let a = agent(st, node).await?;
    let q = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    relay(&a, format!("https://{}/{path}{q}", a.base)).await
}

/// What would make an exec fail before any protocol is spoken: no such pod
/// or container, an agent that cannot be reached.
pub async fn exec_precheck(
    st: &ApiState,
    ns: &str,
    name: &str,
    query: &Query,
) -> Result<(), ApiError> {
    let (node, _) = pod_target(st, ns, name, query).await?;
    let a = agent(st, &node).await?;
    match tokio::time::timeout(
        std::time::Duration::from_secs(3),
        tokio::net::TcpStream::connect(&a.base),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unreachable(&a, &e)),
        Err(_) => Err(unreachable(&a, &"timed out")),
    }
}

/// `pods/{name}/exec` (or `attach`) over a WebSocket: the client's socket
/// is relayed frame by frame to one opened to the agent, in both directions.
#[allow(clippy::too_many_arguments)]
pub async fn pod_exec(
    st: &ApiState,
    sub: &str,
    ns: &str,
    name: &str,
    raw_query: &str,
    query: &Query,
    protocols: Vec<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // Everything but `container` goes through unchanged (command is repeated).
    let rest: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            form_urlencoded::parse(raw_query.as_bytes()).filter(|(k, _)| k != "container"),
        )
        .finish();
    let (node, container) = pod_target(st, ns, name, query).await?;
    let a = agent(st, &node).await?;
    let url = format!("wss://{}/{sub}/{ns}/{name}/{container}?{rest}", a.base);
    let mut req = url
        .into_client_request()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    req.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {}", a.token)
            .parse()
            .map_err(|_| ApiError::internal("token header"))?,
    );
    if !protocols.is_empty() {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            protocols
                .join(", ")
                .parse()
                .map_err(|_| ApiError::bad_request("bad Sec-WebSocket-Protocol"))?,
        );
    }
    let tcp = tokio::net::TcpStream::connect(&a.base)
        .await
        .map_err(|e| unreachable(&a, &e))?;
    let domain = ServerName::try_from("agent").expect("a valid name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(a.tls.clone()))
        .connect(domain, tcp)
        .await
        .map_err(|e| unreachable(&a, &e))?;
    let (upstream, resp) = match tokio_tungstenite::client_async(req, tls).await {
        Ok(x) => x,
        Err(tungstenite::Error::Http(r)) => {
            // The agent refused (no such container, bad command): pass its
            // Status on.
            let code = r.status().as_u16();
            let body: Value = r
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or_default();
            return Err(ApiError::from_status(code, &body));
        }
        Err(e) => return Err(unreachable(&a, &e)),
    };
    let chosen = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let ws = match &chosen {
        Some(p) => ws.protocols([p.clone()]),
        None => ws,
    };
    Ok(ws.on_upgrade(move |client| async move {
        let (mut up_tx, mut up_rx) = upstream.split();
        let (mut cl_tx, mut cl_rx) = client.split();
        let to_agent = async {
            while let Some(Ok(m)) = cl_rx.next().await {
                let m = match m {
                    AxMessage::Binary(b) => tungstenite::Message::Binary(b),
                    AxMessage::Text(t) => tungstenite::Message::Text(t.as_str().into()),
                    AxMessage::Ping(p) => tungstenite::Message::Ping(p),
                    AxMessage::Pong(p) => tungstenite::Message::Pong(p),
                    AxMessage::Close(_) => break,
                };
                if up_tx.send(m).await.is_err() {
                    break;
                }
            }
            let _ = up_tx.close().await;
        };
        let to_client = async {
            while let Some(Ok(m)) = up_rx.next().await {
                let m = match m {
                    tungstenite::Message::Binary(b) => AxMessage::Binary(b),
                    tungstenite::Message::Text(t) => AxMessage::Text(t.as_str().into()),
                    tungstenite::Message::Ping(p) => AxMessage::Ping(p),
                    tungstenite::Message::Pong(p) => AxMessage::Pong(p),
                    tungstenite::Message::Close(frame) => {
                        // Passed on with its code: kubectl reads a close
                        // without one as an error.
                        let code = frame.as_ref().map_or(1000, |f| u16::from(f.code));
                        let _ = cl_tx
                            .send(AxMessage::Close(Some(axum::extract::ws::CloseFrame {
                                code,
                                reason: "".into(),
                            })))
                            .await;
                        break;
                    }
                    tungstenite::Message::Frame(_) => continue,
                };
                if cl_tx.send(m).await.is_err() {
                    break;
                }
            }
            let _ = cl_tx.close().await;
        };
        // The session ends when the agent closes (after the exit Status).
        tokio::select! {
            () = to_client => {}
            () = async { to_agent.await; std::future::pending::<()>().await } => {}
        }
    }))
}

/// The subprotocols in a `Sec-WebSocket-Protocol` request header.
pub fn offered_protocols(headers: &axum::http::HeaderMap) -> Vec<String> {
    headers
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}
