//! Container probes as kubelet runs them: exec (a command in the container,
//! success on exit 0), TCP (a connection to the pod's port) and HTTP (a GET
//! answered with a status from 200 to 399). TCP and HTTP probes leave from
//! the node's network namespace, as kubelet's do from the node.

use std::{net::Ipv4Addr, time::Duration};

use k8s_openapi::{
    api::core::v1::{Container, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::{netlink::netns, runtime::Runtime};

/// Kubernetes' defaults for probe timing.
pub use weft_api::pod::probe_defaults as defaults;

/// The outcome of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It passed.
    Success,
    /// It failed, and why.
    Failure(String),
}

/// Where a probe is aimed.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The container (for named ports and exec).
    pub container: &'a Container,
    /// Its runtime id.
    pub container_id: &'a str,
    /// The pod's IP.
    pub pod_ip: Ipv4Addr,
    /// The node's network namespace (`None`: the agent's own).
    pub node_netns: Option<&'a str>,
}

fn resolve_port(c: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port {p} is out of range")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("container has no port named {name:?}")),
    }
}

/// Runs one probe (blocking, bounded by the probe's `timeoutSeconds`).
#[must_use]
pub fn run(probe: &Probe, t: Target<'_>, runtime: &Runtime) -> Outcome {
    let timeout = Duration::from_secs(
        u64::try_from(probe.timeout_seconds.unwrap_or(defaults::TIMEOUT_S).max(1)).unwrap_or(1),
    );
    if let Some(exec) = &probe.exec {
        let cmd = exec.command.clone().unwrap_or_default();
        if cmd.is_empty() {
            return Outcome::Failure("exec probe without a command".into());
        }
        return match runtime.exec_capture(t.container_id, &cmd, timeout) {
            Ok((0, _)) => Outcome::Success,
            Ok((code, out)) => Outcome::Failure(format!("exit code {code}: {}", out.trim())),
            Err(e) => Outcome::Failure(e.to_string()),
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = match resolve_port(t.container, &tcp.port) {
            Ok(p) => p,
            Err(e) => return Outcome::Failure(e),
        };
        let addr = std::net::SocketAddr::new(t.pod_ip.into(), port);
        return match netns::run_in(t.node_netns, move || {
            std::net::TcpStream::connect_timeout(&addr, timeout)
        }) {
            Ok(Ok(_)) => Outcome::Success,
            Ok(Err(e)) => Outcome::Failure(format!("connect {addr}: {e}")),
            Err(e) => Outcome::Failure(e.to_string()),
        };
    }
    if let Some(http) = &probe.http_get {
        let port = match resolve_port(t.container, &http.port) {
            Ok(p) => p,
            Err(e) => return Outcome::Failure(e),
        };
        if http.scheme.as_deref().is_some_and(|s| s != "HTTP") {
            return Outcome::Failure("only scheme HTTP is supported".into());
        }
        let host = http.host.clone().unwrap_or_else(|| t.pod_ip.to_string());
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let url = format!(
            "http://{host}:{port}{}{path}",
            if path.starts_with('/') { "" } else { "/" }
        );
        let headers: Vec<(String, String)> = http
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        let res = netns::run_in(t.node_netns, move || -> Result<u16, String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let client = reqwest::Client::builder()
                    .timeout(timeout)
                    .no_proxy()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| e.to_string())?;
                let mut req = client.get(&url).header("User-Agent", "weft-probe/1");
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                let resp = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
                Ok(resp.status().as_u16())
            })
        });
        return match res {
            Ok(Ok(code)) if (200..400).contains(&code) => Outcome::Success,
            Ok(Ok(code)) => Outcome::Failure(format!("HTTP status {code}")),
            Ok(Err(e)) => Outcome::Failure(e),
            Err(e) => Outcome::Failure(e.to_string()),
        };
    }
    Outcome::Failure("probe has no exec, tcpSocket or httpGet handler".into())
}

/// Runs a lifecycle hook (postStart, preStop) as kubelet does: an exec in
/// the container, an HTTP GET (any 2xx or 3xx passes), or a sleep;
/// blocking, bounded by `timeout`. `tcpSocket` is not a hook (the API
/// refuses it).
#[must_use]
pub fn run_hook(
    hook: &k8s_openapi::api::core::v1::LifecycleHandler,
    t: Target<'_>,
    runtime: &Runtime,
    timeout: Duration,
) -> Outcome {
    if let Some(s) = &hook.sleep {
        let secs = u64::try_from(s.seconds.max(0)).unwrap_or(0);
        std::thread::sleep(Duration::from_secs(secs).min(timeout));
        return Outcome::Success;
    }
    if hook.exec.is_none() && hook.http_get.is_none() {
        return Outcome::Failure("the hook has no exec, httpGet or sleep action".into());
    }
    let probe = Probe {
        exec: hook.exec.clone(),
        http_get: hook.http_get.clone(),
        timeout_seconds: Some(i32::try_from(timeout.as_secs().max(1)).unwrap_or(i32::MAX)),
        ..Probe::default()
    };
    run(&probe, t, runtime)
}
