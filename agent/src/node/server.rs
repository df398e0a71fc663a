//! The agent's HTTPS endpoint (kubelet's port 10250), which the controller
//! proxies `pods/log`, `pods/exec` and node stats to:
//!
//! - `GET /containerLogs/{ns}/{pod}/{container}?follow&tailLines&previous&timestamps`
//! - `GET /exec/{ns}/{pod}/{container}?command=..&stdin&stdout&stderr` as a
//!   WebSocket speaking Kubernetes' `v5.channel.k8s.io` / `v4.channel.k8s.io`
//!   (one byte of channel, then data; the exit Status on channel 3)
//! - `GET /stats/summary`: CPU and memory of the node and each pod, from
//!   cgroups, shaped like kubelet's Summary API.
//!
//! Only the controller may call it: it presents this node's own token,
//! which only the controller and this agent know.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};
use axum::{
    Router,
    extract::{
        Path, Query, State,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{Node, stats::Stats};
use crate::sandbox::PodRecord;

/// The port kubelet serves on, which the agent takes too.
pub(super) const DEFAULT_PORT: u16 = 10250;

pub(super) struct Shared {
    pub(super) node: Arc<Node>,
    token: Option<String>,
    stats: Arc<Stats>,
}

/// The agent's serving certificate: self-signed, made at each start; the
/// controller trusts it by the SHA-256 the Node announces.
pub(super) struct ServingCert {
    cert_pem: String,
    key_pem: String,
    /// Hex SHA-256 of the certificate (DER).
    pub(super) sha256: String,
}

impl ServingCert {
    pub(super) fn new(node_name: &str, node_ip: std::net::Ipv4Addr) -> Result<Self> {
        use sha2::Digest as _;
        let c =
            rcgen::generate_simple_self_signed(vec![node_ip.to_string(), node_name.to_string()])
                .context("make the agent's serving certificate")?;
        let sha256 = sha2::Sha256::digest(c.cert.der().as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self {
            cert_pem: c.cert.pem(),
            key_pem: c.signing_key.serialize_pem(),
            sha256,
        })
    }
}

/// Serves until the process stops.
pub(super) async fn run(
    node: Arc<Node>,
    listener: std::net::TcpListener,
    cert: ServingCert,
    token: Option<String>,
    stats: Arc<Stats>,
) -> Result<()> {
    if token.is_none() {
        tracing::warn!(
            "the agent's kubeconfig has no bearer token, so its endpoint refuses every request (logs, exec and stats will not work)"
        );
    }
    let addr = listener.local_addr()?;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        cert.cert_pem.into_bytes(),
        cert.key_pem.into_bytes(),
    )
    .await?;
    let shared = Arc::new(Shared { node, token, stats });
    let app = Router::new()
        .route(
            "/containerLogs/{ns}/{pod}/{container}",
            get(super::logs::logs),
        )
        .route("/exec/{ns}/{pod}/{container}", get(exec))
        .route("/attach/{ns}/{pod}/{container}", get(attach))
        .route("/stats/summary", get(summary))
        .route("/lb/services", get(lb_services))
        .route("/lb/trace", get(lb_trace))
        .route("/dns/stats", get(dns_stats))
        .route("/policy/pods/{ns}/{pod}", get(policy_show))
        .route("/policy/trace", get(policy_trace))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(shared);
    tracing::info!(%addr, "serving logs, exec and stats");
    listener.set_nonblocking(true)?;
    axum_server::from_tcp_rustls(listener, tls)?
        .serve(app.into_make_service())
        .await
        .with_context(|| format!("serve on {addr}"))
}

/// Binds the endpoint's port before anything else: a second agent of the
/// same node stops here, before it touches the Node object.
pub(super) fn bind(node_ip: std::net::Ipv4Addr, port: u16) -> Result<std::net::TcpListener> {
    let addr = SocketAddr::from((node_ip, port));
    std::net::TcpListener::bind(addr)
        .with_context(|| format!("listen on {addr} (is an agent of this node already running?)"))
}

pub(super) fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()});
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub(super) fn authorized(s: &Shared, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match (&s.token, given) {
        (Some(t), Some(g))
            if t.len() == g.len()
                && t.bytes().zip(g.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0 =>
        {
            Ok(())
        }
        _ => Err(Box::new(status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
        ))),
    }
}

/// The record of pod `ns/name` on this node and the runtime id of its
/// container `container`.
pub(super) fn find(
    s: &Shared,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<(PodRecord, String), Box<Response>> {
    let rec = s
        .node
        .sandbox
        .records()
        .unwrap_or_default()
        .into_iter()
        .find(|r| r.namespace == ns && r.name == pod)
        .ok_or_else(|| {
            Box::new(status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!(
                    "pod {ns}/{pod} is not running on node {}",
                    s.node.cfg.node_name
                ),
            ))
        })?;
    let id = rec
        .all_containers()
        .find(|(n, _)| n == container)
        .map(|(_, id)| id.clone())
        .ok_or_else(|| {
            let names: Vec<&str> = rec.all_containers().map(|(n, _)| n.as_str()).collect();
            Box::new(status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!(
                    "container {container} is not valid for pod {pod}; choose one of: {names:?}"
                ),
            ))
        })?;
    Ok((rec, id))
}

pub(super) fn truthy(v: Option<&String>) -> bool {
    v.is_some_and(|v| v == "true" || v == "1")
}

/// What the node's load-balancer maps hold (`weft lb show`).
async fn lb_services(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return *r;
    }
    let snap = s.node.lb.lock().expect("balancer lock").snapshot();
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&snap).unwrap_or_default(),
    )
        .into_response()
}

/// The DNS server's counters since the agent started.
async fn dns_stats(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return *r;
    }
    let stats = s.node.dns_stats.lock().expect("dns stats lock").clone();
    let Some(stats) = stats else {
        return (StatusCode::SERVICE_UNAVAILABLE, "DNS is not served\n").into_response();
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&weft_api::debug::dns::DnsStats {
            ratelimited: s.node.sandbox.dns_rate_limited(),
            ..crate::dns::stats_view(&stats)
        })
        .unwrap_or_default(),
    )
        .into_response()
}

/// `weft policy show`: a local pod's policies, rules and counters.
async fn policy_show(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((ns, pod)): Path<(String, String)>,
) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return *r;
    }
    let key = format!("{ns}/{pod}");
    let view = {
        let st = s.node.policy.lock().expect("policy lock");
        st.engine.show(&key, &s.node.cfg.node_name, &st.maps)
    };
    match view {
        Some(mut v) => {
            // What its veth dropped as forged (anti-spoofing).
            let rec = s
                .node
                .sandbox
                .records()
                .unwrap_or_default()
                .into_iter()
                .find(|r| r.namespace == ns && r.name == pod);
            if let Some(r) = rec
                && let Ok(c) = s.node.sandbox.spoofed(&r.uid).await
            {
                v.spoofed = weft_api::debug::policy::Spoofed {
                    mac: c.mac,
                    ip: c.ip,
                    arp: c.arp,
                    other: c.other,
                };
            }
            (
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::to_string(&v).unwrap_or_default(),
            )
                .into_response()
        }
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pod {key} has no address on node {}", s.node.cfg.node_name),
        ),
    }
}

/// The query of `/policy/trace`.
#[derive(serde::Deserialize)]
struct PolicyTraceQuery {
    /// The local pod, `namespace/name`.
    pod: String,
    /// The other end's address.
    peer: std::net::Ipv4Addr,
    /// `ingress` (peer to pod) or `egress` (pod to peer).
    dir: String,
    proto: String,
    /// Destination port.
    port: u16,
}

/// `weft policy trace`: one direction's verdict, from this node's maps.
async fn policy_trace(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<PolicyTraceQuery>,
) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return *r;
    }
    let bad = |m: String| status(StatusCode::BAD_REQUEST, "BadRequest", &m);
    let proto = match q.proto.to_ascii_uppercase().as_str() {
        "TCP" => weft_common::PROTO_TCP,
        "UDP" => weft_common::PROTO_UDP,
        "SCTP" => crate::policy::model::PROTO_SCTP,
        other => return bad(format!("protocol {other:?}: TCP, UDP or SCTP")),
    };
    let dir = match q.dir.as_str() {
        "ingress" => weft_common::DIR_INGRESS,
        "egress" => weft_common::DIR_EGRESS,
        other => return bad(format!("direction {other:?}: ingress or egress")),
    };
    let st = s.node.policy.lock().expect("policy lock");
    match st.engine.trace(
        &st.maps,
        &q.pod,
        &s.node.cfg.node_name,
        crate::policy::view::TraceFlow {
            peer: q.peer,
            dir,
            proto,
            port: q.port,
        },
    ) {
        Some(j) => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&j).unwrap_or_default(),
        )
            .into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "pod {} has no address on node {}",
                q.pod, s.node.cfg.node_name
            ),
        ),
    }
}

/// The query of `/lb/trace`.
#[derive(serde::Deserialize)]
struct TraceQuery {
    src: std::net::Ipv4Addr,
    sport: Option<u16>,
    dst: std::net::Ipv4Addr,
    port: u16,
    proto: String,
}

/// Which backend a flow goes to and why (`weft lb trace`).
async fn lb_trace(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<TraceQuery>,
) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return *r;
    }
    let proto = match q.proto.to_ascii_uppercase().as_str() {
        "TCP" => weft_common::PROTO_TCP,
        "UDP" => weft_common::PROTO_UDP,
        other => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("protocol {other:?}: TCP or UDP"),
            );
        }
    };
    let t = s
        .node
        .lb
        .lock()
        .expect("balancer lock")
        .trace(q.src, q.sport, q.dst, q.port, proto);
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&t).unwrap_or_default(),
    )
        .into_response()
}

async fn summary(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return *r;
    }
    let records = s.node.sandbox.records().unwrap_or_default();
    let body = s
        .stats
        .summary(&s.node.cfg.node_name, &s.node.sandbox, &records);
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&body).unwrap_or_default(),
    )
        .into_response()
}

/// What an exec or attach asks for: the container and its streams.
struct Streams {
    id: String,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

/// The checks exec and attach share: who asks, which running container,
/// and streams that fit together (a terminal has one output, as kubelet
/// says).
fn streams_of(
    s: &Shared,
    headers: &HeaderMap,
    (ns, pod, container): (&str, &str, &str),
    q: &[(String, String)],
    verb: &str,
) -> Result<Streams, Box<Response>> {
    authorized(s, headers)?;
    let (rec, id) = find(s, ns, pod, container)?;
    if rec.released {
        return Err(Box::new(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("cannot {verb} a container in a completed pod: {ns}/{pod} has finished"),
        )));
    }
    let flag = |k: &str| q.iter().any(|(n, v)| n == k && truthy(Some(v)));
    let tty = flag("tty");
    if tty && flag("stderr") {
        return Err(Box::new(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "tty and stderr cannot both be true",
        )));
    }
    Ok(Streams {
        id,
        stdin: flag("stdin"),
        stdout: flag("stdout") || !flag("stderr"),
        stderr: flag("stderr"),
        tty,
    })
}

/// Whether a session speaks v5.channel.k8s.io (it can close stdin).
fn is_v5(socket: &WebSocket) -> bool {
    socket
        .protocol()
        .is_some_and(|p| p.as_bytes() == b"v5.channel.k8s.io")
}

/// A client's message as bytes: clients that send stdin as text frames
/// (the Python client on v4.channel.k8s.io) mean the same bytes.
fn as_binary(m: Message) -> Message {
    match m {
        Message::Text(t) => {
            Message::Binary(axum::body::Bytes::copy_from_slice(t.as_str().as_bytes()))
        }
        other => other,
    }
}

async fn exec(
    State(s): State<Arc<Shared>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let st = match streams_of(&s, &headers, (&ns, &pod, &container), &q, "exec into") {
        Ok(st) => st,
        Err(r) => return *r,
    };
    let argv: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if argv.is_empty() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "you must specify at least 1 command",
        );
    }
    let cmd = match s.node.sandbox.runtime().exec_command(&st.id, &argv, st.tty) {
        Ok(c) => c,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
    };
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| async move {
            let v5 = is_v5(&socket);
            let done = if st.tty {
                pump_tty(socket, cmd, argv, st.stdin, v5).await
            } else {
                pump(socket, cmd, argv, st.stdin, st.stdout, st.stderr, v5).await
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "exec session failed");
            }
        })
}

/// Attaches to a running container's own streams (`kubectl attach`): what
/// it writes from now on, and, for a container with `stdin: true`, its
/// stdin or terminal (see `runtime::attach`).
async fn attach(
    State(s): State<Arc<Shared>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let st = match streams_of(&s, &headers, (&ns, &pod, &container), &q, "attach to") {
        Ok(st) => st,
        Err(r) => return *r,
    };
    let bundle = s.node.sandbox.runtime().bundle_dir(&st.id);
    let conn = match tokio::task::spawn_blocking(move || {
        let c = crate::runtime::attach::connect(&bundle)?;
        c.set_nonblocking(true)?;
        tokio::net::UnixStream::from_std(c)
    })
    .await
    {
        Ok(Ok(c)) => c,
        _ => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("container {container} is not running"),
            );
        }
    };
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| async move {
            let v5 = is_v5(&socket);
            relay_attach(socket, conn, st.stdin, st.stdout, st.stderr, v5).await;
        })
}

/// Relays an attach session between the client's socket and the shim's.
async fn relay_attach(
    mut socket: WebSocket,
    conn: tokio::net::UnixStream,
    want_stdin: bool,
    want_stdout: bool,
    want_stderr: bool,
    v5: bool,
) {
    use crate::runtime::attach;
    let (mut from_shim, mut to_shim) = conn.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(32);
    let reader = tokio::spawn(async move {
        let mut head = [0u8; 5];
        while from_shim.read_exact(&mut head).await.is_ok() {
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if len > attach::MAX_FRAME {
                break;
            }
            let mut data = vec![0u8; len];
            if from_shim.read_exact(&mut data).await.is_err()
                || tx.send((head[0], data)).await.is_err()
            {
                break;
            }
        }
    });
    let frame = |chan: u8, data: &[u8]| {
        let mut f = Vec::with_capacity(data.len() + 5);
        f.push(chan);
        f.extend_from_slice(&u32::try_from(data.len()).unwrap_or(0).to_be_bytes());
        f.extend_from_slice(data);
        f
    };
    let ended_by_container = loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some((chan, data)) => {
                    let wanted = (chan == attach::STDOUT && want_stdout) || (chan == attach::STDERR && want_stderr);
                    if !wanted {
                        continue;
                    }
                    let mut msg = Vec::with_capacity(data.len() + 1);
                    msg.push(chan);
                    msg.extend_from_slice(&data);
                    if socket.send(Message::Binary(msg.into())).await.is_err() {
                        break false;
                    }
                }
                None => break true,
            },
            msg = socket.recv() => match msg.map(|m| m.map(as_binary)) {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => {
                    let f = match b[0] {
                        0 if want_stdin => frame(attach::STDIN, &b[1..]),
                        4 => frame(attach::RESIZE, &b[1..]),
                        255 if v5 && want_stdin && b.get(1) == Some(&0) => frame(attach::CLOSE_STDIN, &[]),
                        _ => continue,
                    };
                    if to_shim.write_all(&f).await.is_err() {
                        break true;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break false,
                _ => {}
            },
        }
    };
    reader.abort();
    if ended_by_container {
        // The container exited: kubelet ends an attach with Success.
        send_status(&mut socket, &json!({"metadata": {}, "status": "Success"})).await;
    }
}

/// The exit Status a session ends with (channel 3), as kubelet writes it.
fn exit_status(argv: &[String], code: i32) -> serde_json::Value {
    if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({"metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {argv:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
    }
}

/// Sends the exit Status and a normal closure (1000: clients such as
/// kubectl treat a close without a code as an error).
async fn finish(socket: &mut WebSocket, argv: &[String], code: i32) {
    send_status(socket, &exit_status(argv, code)).await;
}

/// Sends `status` on channel 3, then a normal closure.
async fn send_status(socket: &mut WebSocket, status: &serde_json::Value) {
    let mut frame = vec![3u8];
    frame.extend_from_slice(status.to_string().as_bytes());
    let _ = socket.send(Message::Binary(frame.into())).await;
    let _ = socket
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
}

/// Runs the command on a terminal (`kubectl exec -it`): `runc exec --tty`
/// gets a pseudo-terminal the agent holds as its controlling terminal;
/// runc sets it raw, makes the container's own terminal and copies
/// between the two. The socket's channel 0 is typed on the terminal,
/// channel 1 is what it shows, channel 4 resizes it (runc follows the
/// size through SIGWINCH), channel 3 ends with the exit Status.
async fn pump_tty(
    mut socket: WebSocket,
    cmd: std::process::Command,
    argv: Vec<String>,
    want_stdin: bool,
    v5: bool,
) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::process::CommandExt as _;
    use std::process::Stdio;
    let size = libc::winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).context("open a pseudo-terminal")?;
    let mut cmd = cmd;
    cmd.stdin(Stdio::from(pty.slave.try_clone()?))
        .stdout(Stdio::from(pty.slave.try_clone()?))
        .stderr(Stdio::from(pty.slave));
    // SAFETY: between fork and exec, only async-signal-safe calls: a new
    // session whose controlling terminal is the pseudo-terminal (runc
    // gets SIGWINCH when it is resized).
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().context("run runc exec --tty")?;
    // The terminal's other end must be the child's alone, or reading ours
    // never ends.
    drop(cmd);
    let master = pty.master;
    let raw = master.as_raw_fd();
    let mut reader = tokio::fs::File::from_std(std::fs::File::from(master.try_clone()?));
    let mut writer = want_stdin.then(|| tokio::fs::File::from_std(std::fs::File::from(master)));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(32);
    let read = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        // EIO once the child and runc are gone: the end.
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 || tx.send(buf[..n].to_vec()).await.is_err() {
                break;
            }
        }
    });
    let mut output_open = true;
    let code = loop {
        tokio::select! {
            out = rx.recv(), if output_open => match out {
                Some(data) => {
                    let mut frame = Vec::with_capacity(data.len() + 1);
                    frame.push(1u8);
                    frame.extend_from_slice(&data);
                    if socket.send(Message::Binary(frame.into())).await.is_err() {
                        let _ = child.kill().await;
                        return Ok(());
                    }
                }
                None => output_open = false,
            },
            msg = socket.recv() => match msg.map(|m| m.map(as_binary)) {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => match b[0] {
                    0 => {
                        if let Some(w) = writer.as_mut()
                            && (w.write_all(&b[1..]).await.is_err() || w.flush().await.is_err())
                        {
                            writer = None;
                        }
                    }
                    4 => {
                        if let Some(ws) = crate::runtime::attach::window_size(&b[1..]) {
                            // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
                            unsafe {
                                libc::ioctl(raw, libc::TIOCSWINSZ, &ws);
                            }
                        }
                    }
                    // v5: the client closed its stdin; on a terminal that is
                    // an end of file typed (^D).
                    255 if v5 && b.get(1) == Some(&0) => {
                        if let Some(mut w) = writer.take() {
                            let _ = w.write_all(&[4]).await;
                            let _ = w.flush().await;
                        }
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    let _ = child.kill().await;
                    return Ok(());
                }
                _ => {}
            },
            st = child.wait(), if !output_open => {
                break st.ok().and_then(|s| s.code()).unwrap_or(137);
            }
        }
    };
    let _ = read.await;
    finish(&mut socket, &argv, code).await;
    Ok(())
}

/// Runs the command and relays its streams over the socket: stdin from
/// channel 0, stdout to 1, stderr to 2, and finally the exit Status on 3.
async fn pump(
    mut socket: WebSocket,
    cmd: std::process::Command,
    argv: Vec<String>,
    want_stdin: bool,
    want_stdout: bool,
    want_stderr: bool,
    v5: bool,
) -> Result<()> {
    use std::process::Stdio;
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(if want_stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(if want_stdout {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stderr(if want_stderr {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .kill_on_drop(true);
    let mut child = cmd.spawn().context("run runc exec")?;
    let mut stdin = child.stdin.take();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(32);
    let mut readers = Vec::new();
    for (chan, r) in [
        (
            1u8,
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ),
        (
            2u8,
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ),
    ] {
        if let Some(mut r) = r {
            let tx = tx.clone();
            readers.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tx.send((chan, buf[..n].to_vec())).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }));
        }
    }
    drop(tx);
    let mut outputs_open = true;
    let code = loop {
        tokio::select! {
            out = rx.recv(), if outputs_open => match out {
                Some((chan, data)) => {
                    let mut frame = Vec::with_capacity(data.len() + 1);
                    frame.push(chan);
                    frame.extend_from_slice(&data);
                    if socket.send(Message::Binary(frame.into())).await.is_err() {
                        let _ = child.kill().await;
                        return Ok(());
                    }
                }
                None => outputs_open = false,
            },
            msg = socket.recv() => match msg.map(|m| m.map(as_binary)) {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => match b[0] {
                    0 => {
                        if let Some(i) = stdin.as_mut()
                            && i.write_all(&b[1..]).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                    // v5: the client closed its stdin.
                    255 if v5 && b.get(1) == Some(&0) => stdin = None,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    let _ = child.kill().await;
                    return Ok(());
                }
                _ => {}
            },
            st = child.wait(), if !outputs_open => {
                break st.ok().and_then(|s| s.code()).unwrap_or(137);
            }
        }
    };
    for r in readers {
        let _ = r.await;
    }
    finish(&mut socket, &argv, code).await;
    Ok(())
}
