//! A container's environment and command as kubelet makes them
//! (`makeEnvironmentVariables`): `envFrom` sources first, then `env` in
//! declaration order (a later name wins), each `value` with its `$(VAR)`
//! references to earlier variables expanded, each `valueFrom` resolved from
//! a ConfigMap, a Secret, the pod's own fields (the downward API) or its
//! resources; then `command` and `args` expanded with the result. A
//! missing object or key fails the start with kubelet's words
//! (`configmap "x" not found`, `couldn't find key k in ConfigMap ns/x`),
//! unless the reference is `optional`.
//!
//! The objects come from an [`ObjectSource`]: the agent's reads them from
//! the API (a node may read only what its pods reference).

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, ObjectFieldSelector, PersistentVolume, PersistentVolumeClaim,
    Pod, ResourceFieldSelector, Secret, Service,
};

/// Where a pod's ConfigMaps and Secrets are read from.
#[async_trait]
pub trait ObjectSource: Send + Sync {
    /// The ConfigMap, `None` when it does not exist; Err for any other
    /// failure (it is retried).
    async fn config_map(&self, ns: &str, name: &str) -> Result<Option<Arc<ConfigMap>>, String>;
    /// The Secret, as [`ObjectSource::config_map`].
    async fn secret(&self, ns: &str, name: &str) -> Result<Option<Arc<Secret>>, String>;
    /// The Services of namespace `ns` (for service links).
    async fn services(&self, ns: &str) -> Result<Vec<Arc<Service>>, String>;
    /// The PersistentVolumeClaim, as [`ObjectSource::config_map`].
    async fn claim(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<Arc<PersistentVolumeClaim>>, String> {
        let _ = (ns, name);
        Ok(None)
    }
    /// The PersistentVolume, as [`ObjectSource::config_map`].
    async fn volume(&self, name: &str) -> Result<Option<Arc<PersistentVolume>>, String> {
        let _ = name;
        Ok(None)
    }
    /// A token of the pod's service account `sa`, bound to the pod, for
    /// `audience` (the API's when None), lasting `seconds`: the same one
    /// until most of its life has passed (a projected
    /// `serviceAccountToken`).
    async fn service_account_token(
        &self,
        pod: &k8s_openapi::api::core::v1::Pod,
        sa: &str,
        audience: Option<&str>,
        seconds: i64,
    ) -> Result<String, String> {
        let _ = (pod, sa, audience, seconds);
        Err("this node issues no service account tokens".into())
    }
}

/// A source that has nothing (a sandbox without an API, in tests).
pub struct NoObjects;

#[async_trait]
impl ObjectSource for NoObjects {
    async fn config_map(&self, _: &str, _: &str) -> Result<Option<Arc<ConfigMap>>, String> {
        Ok(None)
    }
    async fn secret(&self, _: &str, _: &str) -> Result<Option<Arc<Secret>>, String> {
        Ok(None)
    }
    async fn services(&self, _: &str) -> Result<Vec<Arc<Service>>, String> {
        Ok(Vec::new())
    }
}

/// The environment Kubernetes gives a pod for each Service of its
/// namespace with a cluster IP (`enableServiceLinks`, on by default): the
/// `<NAME>_SERVICE_HOST`/`_SERVICE_PORT[_<PORT NAME>]` variables and the
/// Docker-link ones (`<NAME>_PORT`, `<NAME>_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]`).
#[must_use]
pub fn service_links(services: &[Arc<Service>]) -> Vec<(String, String)> {
    let mut sorted: Vec<&Service> = services.iter().map(AsRef::as_ref).collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut out = Vec::new();
    for svc in sorted {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let name = svc
            .metadata
            .name
            .as_deref()
            .unwrap_or_default()
            .to_ascii_uppercase()
            .replace('-', "_");
        out.push((format!("{name}_SERVICE_HOST"), ip.to_string()));
        out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for p in ports {
            if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!(
                        "{name}_SERVICE_PORT_{}",
                        pn.to_ascii_uppercase().replace('-', "_")
                    ),
                    p.port.to_string(),
                ));
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.clone().unwrap_or_else(|| "TCP".into())
        };
        out.push((
            format!("{name}_PORT"),
            format!(
                "{}://{ip}:{}",
                proto(first).to_ascii_lowercase(),
                first.port
            ),
        ));
        for p in ports {
            let pr = proto(p);
            let prefix = format!("{name}_PORT_{}_{}", p.port, pr.to_ascii_uppercase());
            out.push((
                prefix.clone(),
                format!("{}://{ip}:{}", pr.to_ascii_lowercase(), p.port),
            ));
            out.push((format!("{prefix}_PROTO"), pr.to_ascii_lowercase()));
            out.push((format!("{prefix}_PORT"), p.port.to_string()));
            out.push((format!("{prefix}_ADDR"), ip.to_string()));
        }
    }
    out
}

/// What the downward API and resource references read besides the pod.
#[derive(Clone, Copy, Debug)]
pub struct PodFacts {
    /// The pod's address (the node's with hostNetwork).
    pub pod_ip: Ipv4Addr,
    /// The node's address.
    pub host_ip: Ipv4Addr,
    /// The node's allocatable CPUs, in millicores (a limit's default).
    pub node_cpu_millis: u64,
    /// The node's allocatable memory, in bytes (a limit's default).
    pub node_memory: u64,
}

/// Expands `$(VAR)` references in `input` with `lookup`, as Kubernetes
/// does: `$$` is a literal `$`, a reference to an unknown variable and an
/// unclosed `$(` stay as written, a `$` before anything else is kept.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The value of a downward API field of the pod (`fieldRef`), for env and
/// for downwardAPI volumes. Err names what is not supported.
pub fn field_value(
    sel: &ObjectFieldSelector,
    pod: &Pod,
    facts: &PodFacts,
) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let path = sel.field_path.as_str();
    let map_entry = |m: Option<&BTreeMap<String, String>>, key: &str| {
        m.and_then(|m| m.get(key)).cloned().unwrap_or_default()
    };
    let quoted = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => map_lines(meta.labels.as_ref()),
        "metadata.annotations" => map_lines(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.to_string(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.to_string(),
        _ => {
            if let Some(k) = quoted("metadata.labels['") {
                map_entry(meta.labels.as_ref(), &k)
            } else if let Some(k) = quoted("metadata.annotations['") {
                map_entry(meta.annotations.as_ref(), &k)
            } else {
                return Err(format!("unsupported fieldPath {path:?}"));
            }
        }
    })
}

/// A map as the downward API writes it: `key="value"` lines, sorted, with
/// the value quoted as Go's `%q` does.
fn map_lines(m: Option<&BTreeMap<String, String>>) -> String {
    m.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of a resource reference (`resourceFieldRef`) of container
/// `c`: its limit (the node's allocatable when it has none) or request,
/// divided by the divisor and rounded up, as kubelet does.
pub fn resource_value(
    sel: &ResourceFieldSelector,
    c: &Container,
    facts: &PodFacts,
) -> Result<String, String> {
    let res = c.resources.as_ref();
    let get = |which: &str, name: &str| {
        let m = if which == "limits" {
            res.and_then(|r| r.limits.as_ref())
        } else {
            res.and_then(|r| r.requests.as_ref())
        };
        m.and_then(|m| m.get(name)).map(|q| q.0.clone())
    };
    let (which, name) = sel
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource {:?}", sel.resource))?;
    // Millis (for cpu) or units (bytes), from a quantity.
    let millis =
        |q: &str| weft_api::quantity::parse(q).ok_or_else(|| format!("{q:?} is not a quantity"));
    // The default divisor is 1 (a core, a byte): 1000 in millis.
    let divisor = match &sel.divisor {
        Some(d) => millis(&d.0)?,
        None => 1000,
    };
    if divisor <= 0 {
        return Err("divisor must be positive".into());
    }
    let value: i128 = match (which, name) {
        ("limits" | "requests", "cpu") => {
            let q = get(which, "cpu").or_else(|| {
                (which == "requests")
                    .then(|| get("limits", "cpu"))
                    .flatten()
            });
            match q {
                Some(q) => millis(&q)?,
                None if which == "limits" => i128::from(facts.node_cpu_millis),
                None => 0,
            }
        }
        ("limits" | "requests", "memory" | "ephemeral-storage") => {
            let q = get(which, name)
                .or_else(|| (which == "requests").then(|| get("limits", name)).flatten());
            match q {
                Some(q) => millis(&q)?,
                None if which == "limits" && name == "memory" => {
                    i128::from(facts.node_memory) * 1000
                }
                None => 0,
            }
        }
        _ => return Err(format!("unsupported resource {:?}", sel.resource)),
    };
    // Rounded up, as kubelet's ExtractContainerResourceValue does.
    let n = (value + divisor - 1) / divisor;
    Ok(n.to_string())
}

/// Why a container's environment cannot be made.
pub type EnvError = String;

/// The container with its environment resolved (every `env` entry a plain
/// value, `envFrom` folded in, in order) and its command and args
/// expanded.
pub async fn resolve(
    c: &Container,
    pod: &Pod,
    facts: &PodFacts,
    source: &dyn ObjectSource,
) -> Result<Container, EnvError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let enabled = pod.spec.as_ref().and_then(|s| s.enable_service_links) != Some(false);
    let mut services = if enabled {
        source.services(ns).await?
    } else {
        Vec::new()
    };
    // The API's own Service (default/kubernetes) is every pod's, whatever
    // its namespace and enableServiceLinks, as kubelet gives it: that is
    // how in-cluster clients find the API (KUBERNETES_SERVICE_HOST/PORT).
    if ns != "default" || !enabled {
        services.extend(
            source
                .services("default")
                .await?
                .into_iter()
                .filter(|s| s.metadata.name.as_deref() == Some("kubernetes")),
        );
    }
    let links = service_links(&services);
    // In declaration order, with an index by name: a ConfigMap of many
    // keys costs linear time, not quadratic.
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut set = |vars: &mut Vec<(String, String)>, k: String, v: String| match index.get(&k) {
        Some(&i) => vars[i].1 = v,
        None => {
            index.insert(k.clone(), vars.len());
            vars.push((k, v));
        }
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match source.config_map(ns, &r.name).await? {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        set(&mut vars, format!("{prefix}{k}"), v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("configmap \"{}\" not found", r.name)),
            }
        }
        if let Some(r) = &from.secret_ref {
            match source.secret(ns, &r.name).await? {
                Some(s) => {
                    for (k, v) in s.data.iter().flatten() {
                        set(
                            &mut vars,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("secret \"{}\" not found", r.name)),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) if !v.is_empty() => {
                let known: std::collections::HashMap<&str, &str> = links
                    .iter()
                    .chain(vars.iter())
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                expand(v, |name| known.get(name).map(|v| (*v).to_string()))
            }
            (_, Some(from)) => {
                if let Some(sel) = &from.field_ref {
                    field_value(sel, pod, facts)?
                } else if let Some(sel) = &from.resource_field_ref {
                    resource_value(sel, c, facts)?
                } else if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    match source.config_map(ns, &r.name).await? {
                        Some(cm) => match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                            Some(v) => v.clone(),
                            None if optional => continue,
                            None => {
                                return Err(format!(
                                    "couldn't find key {} in ConfigMap {ns}/{}",
                                    r.key, r.name
                                ));
                            }
                        },
                        None if optional => continue,
                        None => return Err(format!("configmap \"{}\" not found", r.name)),
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional == Some(true);
                    match source.secret(ns, &r.name).await? {
                        Some(s) => match s.data.as_ref().and_then(|d| d.get(&r.key)) {
                            Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                            None if optional => continue,
                            None => {
                                return Err(format!(
                                    "couldn't find key {} in Secret {ns}/{}",
                                    r.key, r.name
                                ));
                            }
                        },
                        None if optional => continue,
                        None => return Err(format!("secret \"{}\" not found", r.name)),
                    }
                } else {
                    String::new()
                }
            }
            _ => String::new(),
        };
        set(&mut vars, e.name.clone(), value);
    }
    // The service links the container does not define itself come after.
    let defined: std::collections::HashSet<String> = vars.iter().map(|(k, _)| k.clone()).collect();
    for (k, v) in links {
        if !defined.contains(&k) {
            vars.push((k, v));
        }
    }
    let table: std::collections::HashMap<&str, &str> =
        vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let lookup = |name: &str| table.get(name).map(|v| (*v).to_string());
    let mut out = c.clone();
    out.command = c
        .command
        .as_ref()
        .map(|v| v.iter().map(|a| expand(a, lookup)).collect());
    out.args = c
        .args
        .as_ref()
        .map(|v| v.iter().map(|a| expand(a, lookup)).collect());
    out.env_from = None;
    out.env = Some(
        vars.iter()
            .filter(|(k, _)| !k.is_empty() && !k.contains('='))
            .map(|(k, v)| EnvVar {
                name: k.clone(),
                value: Some(v.clone()),
                value_from: None,
            })
            .collect(),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVarSource,
        ResourceRequirements, SecretKeySelector,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "A" => Some("1".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_follows_kubernetes() {
        assert_eq!(expand("x$(A)y", lookup), "x1y");
        assert_eq!(expand("$(B)", lookup), "$(B)");
        assert_eq!(expand("$$(A)", lookup), "$(A)");
        assert_eq!(expand("$$$(A)", lookup), "$1");
        assert_eq!(expand("$(A", lookup), "$(A");
        assert_eq!(expand("$A $", lookup), "$A $");
        assert_eq!(expand("a$(EMPTY)b", lookup), "ab");
        assert_eq!(expand("$()", lookup), "$()");
    }

    struct Objects;

    #[async_trait]
    impl ObjectSource for Objects {
        async fn config_map(&self, _: &str, name: &str) -> Result<Option<Arc<ConfigMap>>, String> {
            Ok((name == "cm").then(|| {
                Arc::new(ConfigMap {
                    data: Some(
                        [
                            ("color".to_string(), "blue".to_string()),
                            ("k".into(), "v".into()),
                        ]
                        .into(),
                    ),
                    ..ConfigMap::default()
                })
            }))
        }
        async fn services(&self, _: &str) -> Result<Vec<Arc<Service>>, String> {
            Ok(Vec::new())
        }
        async fn secret(&self, _: &str, name: &str) -> Result<Option<Arc<Secret>>, String> {
            Ok((name == "s").then(|| {
                Arc::new(Secret {
                    data: Some([("pw".to_string(), ByteString(b"hunter2".to_vec()))].into()),
                    ..Secret::default()
                })
            }))
        }
    }

    fn facts() -> PodFacts {
        PodFacts {
            pod_ip: Ipv4Addr::new(10, 244, 1, 5),
            host_ip: Ipv4Addr::new(10, 0, 0, 1),
            node_cpu_millis: 2000,
            node_memory: 1 << 30,
        }
    }

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    fn from(name: &str, src: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(src),
        }
    }

    #[tokio::test]
    async fn env_is_resolved_in_order() {
        let c = Container {
            name: "c".into(),
            command: Some(vec!["echo".into(), "$(GREETING) $(COLOR)".into()]),
            env_from: Some(vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "cm".into(),
                    optional: None,
                }),
                prefix: Some("CM_".into()),
                secret_ref: None,
            }]),
            env: Some(vec![
                from(
                    "COLOR",
                    EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "cm".into(),
                            key: "color".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                var("GREETING", "hi $(COLOR) $(LATER)"),
                var("LATER", "x"),
                from(
                    "PW",
                    EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "s".into(),
                            key: "pw".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                from(
                    "IP",
                    EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "status.podIP".into(),
                            api_version: None,
                        }),
                        ..Default::default()
                    },
                ),
                from(
                    "MEM",
                    EnvVarSource {
                        resource_field_ref: Some(ResourceFieldSelector {
                            resource: "limits.memory".into(),
                            divisor: Some(Quantity("1Mi".into())),
                            container_name: None,
                        }),
                        ..Default::default()
                    },
                ),
                from(
                    "CPU",
                    EnvVarSource {
                        resource_field_ref: Some(ResourceFieldSelector {
                            resource: "requests.cpu".into(),
                            divisor: None,
                            container_name: None,
                        }),
                        ..Default::default()
                    },
                ),
            ]),
            resources: Some(ResourceRequirements {
                requests: Some([("cpu".to_string(), Quantity("250m".into()))].into()),
                ..Default::default()
            }),
            ..Container::default()
        };
        let pod = Pod::default();
        let out = resolve(&c, &pod, &facts(), &Objects)
            .await
            .expect("resolves");
        let env: Vec<(String, String)> = out
            .env
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.value.unwrap()))
            .collect();
        let want: Vec<(String, String)> = [
            ("CM_color", "blue"),
            ("CM_k", "v"),
            ("COLOR", "blue"),
            ("GREETING", "hi blue $(LATER)"),
            ("LATER", "x"),
            ("PW", "hunter2"),
            ("IP", "10.244.1.5"),
            ("MEM", "1024"),
            ("CPU", "1"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(env, want);
        assert_eq!(out.command.unwrap(), ["echo", "hi blue $(LATER) blue"]);
    }

    #[test]
    fn service_links_follow_kubelet() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "redis-main"},
            "spec": {"clusterIP": "10.96.0.7", "ports": [
                {"name": "db", "port": 6379, "protocol": "TCP"},
                {"port": 53, "protocol": "UDP"}]}
        }))
        .unwrap();
        let headless: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}
        }))
        .unwrap();
        let env: std::collections::BTreeMap<String, String> =
            service_links(&[Arc::new(svc), Arc::new(headless)])
                .into_iter()
                .collect();
        assert_eq!(env["REDIS_MAIN_SERVICE_HOST"], "10.96.0.7");
        assert_eq!(env["REDIS_MAIN_SERVICE_PORT"], "6379");
        assert_eq!(env["REDIS_MAIN_SERVICE_PORT_DB"], "6379");
        assert_eq!(env["REDIS_MAIN_PORT"], "tcp://10.96.0.7:6379");
        assert_eq!(env["REDIS_MAIN_PORT_53_UDP"], "udp://10.96.0.7:53");
        assert_eq!(env["REDIS_MAIN_PORT_53_UDP_PROTO"], "udp");
        assert_eq!(env["REDIS_MAIN_PORT_6379_TCP_ADDR"], "10.96.0.7");
        assert!(!env.keys().any(|k| k.starts_with("H_")), "headless: none");
    }

    #[tokio::test]
    async fn missing_references_fail_as_kubelet_says_unless_optional() {
        let key = |name: &str, key: &str, optional: Option<bool>| Container {
            env: Some(vec![from(
                "X",
                EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: name.into(),
                        key: key.into(),
                        optional,
                    }),
                    ..Default::default()
                },
            )]),
            ..Container::default()
        };
        let mut pod = Pod::default();
        pod.metadata.namespace = Some("ns".into());
        let f = facts();
        let err = resolve(&key("nope", "color", None), &pod, &f, &Objects).await;
        assert_eq!(err.unwrap_err(), "configmap \"nope\" not found");
        let err = resolve(&key("cm", "nope", None), &pod, &f, &Objects).await;
        assert_eq!(
            err.unwrap_err(),
            "couldn't find key nope in ConfigMap ns/cm"
        );
        let ok = resolve(&key("cm", "nope", Some(true)), &pod, &f, &Objects)
            .await
            .expect("optional");
        assert_eq!(ok.env.unwrap(), vec![]);
        let ok = resolve(&key("nope", "x", Some(true)), &pod, &f, &Objects)
            .await
            .expect("optional");
        assert_eq!(ok.env.unwrap(), vec![]);
    }
}
