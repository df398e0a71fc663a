//! `weft controller`: opens the store, makes the PKI and tokens on first
//! start, writes the admin kubeconfig, creates the built-in namespaces, and
//! serves the API (with the scheduler and controllers beside it).

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use k8s_openapi::api::core::v1::Namespace;
use serde_json::json;

use crate::apiserver::{self, ApiState, auth::Tokens, tls};
use crate::cache::Cache;
use crate::controllers::{self, ControllersConfig, Ctx};
use crate::registry::Registry;
use crate::registry::Write;
use crate::store::{EncryptingStore, EtcdStore, SqliteOptions, SqliteStore, Store};

/// Where the controller keeps its state.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// The embedded store: one SQLite file in the data directory.
    Sqlite,
    /// An etcd v3 cluster.
    Etcd(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The address clients use (in the kubeconfig and the certificate).
    pub advertise: Option<IpAddr>,
    pub extra_sans: Vec<String>,
    pub store: StoreConfig,
    /// Where to write the admin kubeconfig (None: do not write one).
    pub kubeconfig: Option<PathBuf>,
    pub bookmark_every: Duration,
    pub controllers: ControllersConfig,
    /// Revisions of history kept for watches; older resourceVersions get 410.
    pub watch_history: i64,
    /// The largest object stored, encoded, in bytes (413 above it).
    pub max_object_size: usize,
    /// The EncryptionConfiguration file (`None`: the data directory's,
    /// made on first start).
    pub encryption_config: Option<PathBuf>,
    /// The Pod Security level enforced in namespaces without an `enforce`
    /// label.
    pub pod_security_default: crate::registry::pod_security::Level,
    /// The pod network (a /24 per node) and the Service network.
    pub cluster_cidr: ipnetwork::Ipv4Network,
    pub service_cidr: ipnetwork::Ipv4Network,
    /// Listening sockets inherited from the parent (file descriptors), served
    /// besides `listen`: how `weft lab` offers the API on the host's
    /// loopback while the controller lives in the lab's namespace.
    pub listen_fds: Vec<i32>,
}

impl ControllerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: "0.0.0.0:6443".parse().expect("valid"),
            advertise: None,
            extra_sans: Vec::new(),
            store: StoreConfig::Sqlite,
            kubeconfig: None,
            bookmark_every: Duration::from_secs(10),
            controllers: ControllersConfig::default(),
            listen_fds: Vec::new(),
            watch_history: 100_000,
            max_object_size: crate::registry::MAX_OBJECT,
            encryption_config: None,
            pod_security_default: crate::registry::pod_security::Level::Privileged,
            cluster_cidr: crate::ipam::CLUSTER_CIDR.parse().expect("valid"),
            service_cidr: crate::ipam::SERVICE_CIDR.parse().expect("valid"),
        }
    }

    /// The URL clients reach the API at.
    pub fn server_url(&self) -> String {
        let host = match self.advertise {
            Some(ip) => ip,
            None if self.listen.ip().is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            None => self.listen.ip(),
        };
        format!("https://{}", SocketAddr::new(host, self.listen.port()))
    }
}

/// The default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/weft";

/// `~/.weft/config`, where clients look for credentials by default.
pub fn default_kubeconfig_path() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".weft").join("config")
}

/// Prepares the data directory (root only) and returns the opened store.
pub async fn open_store(cfg: &ControllerConfig) -> Result<Arc<dyn Store>> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("create {}", cfg.data_dir.display()))?;
    std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700))?;
    let encryption = match &cfg.encryption_config {
        Some(path) => path.clone(),
        None => crate::store::encrypt::ensure_default(&cfg.data_dir)?,
    };
    let encryption = crate::store::encrypt::load(&encryption)?;
    let raw: Arc<dyn Store> = match &cfg.store {
        StoreConfig::Sqlite => {
            let path = cfg.data_dir.join("state.db");
            Arc::new(
                SqliteStore::open(&path, SqliteOptions::default())
                    .with_context(|| format!("open {}", path.display()))?,
            )
        }
        StoreConfig::Etcd(endpoints) => Arc::new(
            EtcdStore::connect(endpoints)
                .await
                .with_context(|| format!("connect to etcd at {}", endpoints.join(",")))?,
        ),
    };
    let store = EncryptingStore::new(raw, &encryption).context("the encryption configuration")?;
    let rewritten = store
        .rewrite_stale()
        .await
        .context("re-encrypt stored objects with the current key")?;
    tracing::info!(
        encrypted = ?store.resources(),
        rewritten,
        "encryption at rest"
    );
    Ok(Arc::new(store))
}

/// Writes a kubeconfig in kubectl's format, readable by its owner only.
pub fn write_kubeconfig(path: &Path, server: &str, ca_pem: &str, token: &str) -> Result<()> {
    write_kubeconfig_as(path, server, ca_pem, token, "weft-admin")
}

/// Writes a kubeconfig for `user` (its name in the file) with `token`.
pub fn write_kubeconfig_as(
    path: &Path,
    server: &str,
    ca_pem: &str,
    token: &str,
    user: &str,
) -> Result<()> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "weft", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "weft", "context": {"cluster": "weft", "user": user, "namespace": "default"}}],
        "current-context": "weft",
        "preferences": {},
    });
    let text = serde_norway::to_string(&doc)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::apiserver::tls::write_private(path, &text)?;
    Ok(())
}

/// Writes a kubeconfig for `user` authenticating with a client certificate.
pub fn write_cert_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<()> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "weft", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(cert_pem),
            "client-key-data": b64(key_pem),
        }}],
        "contexts": [{"name": "weft", "context": {"cluster": "weft", "user": user, "namespace": "default"}}],
        "current-context": "weft",
        "preferences": {},
    });
    let text = serde_norway::to_string(&doc)?;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    crate::apiserver::tls::write_private(path, &text)?;
    Ok(())
}

/// Creates the namespaces every cluster has.
pub async fn bootstrap(registry: &Registry) -> Result<()> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        if registry.find::<Namespace>(None, ns).await?.is_none() {
            let mut obj = Namespace::default();
            obj.metadata.name = Some(ns.to_string());
            match registry.create(None, obj).await {
                Ok(_) => {}
                Err(e) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    // The built-in local provisioner's class, the default, made at start
    // when it is missing (as single-binary distributions restore theirs).
    let name = "local-path";
    if registry
        .find::<k8s_openapi::api::storage::v1::StorageClass>(None, name)
        .await?
        .is_none()
    {
        let class: k8s_openapi::api::storage::v1::StorageClass =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "annotations": {
                    crate::registry::storage::DEFAULT_CLASS: "true"}},
                "provisioner": crate::registry::storage::LOCAL_DRIVER,
                "reclaimPolicy": "Delete",
                "volumeBindingMode": "WaitForFirstConsumer",
            }))?;
        match registry.create(None, class).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The default ClusterRoles and ClusterRoleBindings (`rbac::defaults`):
/// made when missing, and given back what they lack unless their
/// autoupdate annotation is "false", as kube-apiserver reconciles them.
async fn bootstrap_rbac(registry: &Registry) -> Result<()> {
    use crate::rbac::defaults;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let keep = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(defaults::AUTOUPDATE))
            .is_some_and(|v| v == "false")
    };
    for role in defaults::cluster_roles() {
        let name = role.metadata.name.clone().unwrap_or_default();
        match registry.create(None, role.clone()).await {
            Ok(_) => continue,
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        if role.aggregation_rule.is_some() {
            continue; // its rules are the aggregation controller's
        }
        let have = registry.get::<ClusterRole>(None, &name).await?;
        if keep(&have.metadata) {
            continue;
        }
        if let Some(rules) = defaults::with_missing_rules(
            have.rules.as_deref().unwrap_or_default(),
            role.rules.as_deref().unwrap_or_default(),
        ) {
            registry
                .modify::<ClusterRole>(None, &name, Write::Update, |mut r| {
                    r.rules = Some(rules.clone());
                    Ok(r)
                })
                .await?;
        }
    }
    for binding in defaults::cluster_role_bindings() {
        let name = binding.metadata.name.clone().unwrap_or_default();
        match registry.create(None, binding.clone()).await {
            Ok(_) => continue,
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        let have = registry.get::<ClusterRoleBinding>(None, &name).await?;
        let missing: Vec<_> = binding
            .subjects
            .iter()
            .flatten()
            .filter(|s| !have.subjects.iter().flatten().any(|h| h == *s))
            .cloned()
            .collect();
        if keep(&have.metadata) || missing.is_empty() {
            continue;
        }
        registry
            .modify::<ClusterRoleBinding>(None, &name, Write::Update, |mut b| {
                b.subjects
                    .get_or_insert_with(Vec::new)
                    .extend(missing.iter().cloned());
                Ok(b)
            })
            .await?;
    }
    Ok(())
}

/// The `kubernetes` Service's cluster IP: the first address of the Service
/// range, as kube-apiserver takes it (and names in its serving certificate).
fn api_service_ip(cfg: &ControllerConfig) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(cfg.service_cidr.network()) + 1)
}

/// The API's own Service, `kubernetes` in `default` (the first address of
/// the service range, port 443), and its Endpoints and EndpointSlice
/// pointing at this controller, as kube-apiserver publishes itself: what
/// in-cluster clients reach through KUBERNETES_SERVICE_HOST/PORT, load-
/// balanced by the agents like any Service. Needs an address pods can
/// reach (`--advertise-address`, or a specific `--listen` address).
async fn publish_api_service(registry: &Registry, cfg: &ControllerConfig) -> Result<()> {
    use k8s_openapi::api::core::v1::{Endpoints, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let ip = match cfg.advertise {
        Some(ip) => ip,
        None if !cfg.listen.ip().is_unspecified() => cfg.listen.ip(),
        None => {
            tracing::info!(
                "no --advertise-address: the kubernetes Service is not published (pods cannot reach the API)"
            );
            return Ok(());
        }
    };
    let port = cfg.listen.port();
    let cluster_ip = api_service_ip(cfg);
    if registry
        .find::<Service>(Some("default"), "kubernetes")
        .await?
        .is_none()
    {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "kubernetes", "namespace": "default",
                "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": cluster_ip.to_string(),
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
                "sessionAffinity": "None"},
        }))?;
        match registry.create(Some("default"), svc).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let endpoints: Endpoints = serde_json::from_value(json!({
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": ip.to_string()}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
    }))?;
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": if ip.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    }))?;
    match registry
        .find::<Endpoints>(Some("default"), "kubernetes")
        .await?
    {
        None => match registry.create(Some("default"), endpoints).await {
            Ok(_) | Err(weft_api::ApiError { code: 409, .. }) => {}
            Err(e) => return Err(e.into()),
        },
        Some((have, _)) if have.subsets != endpoints.subsets => {
            registry
                .modify::<Endpoints>(Some("default"), "kubernetes", Write::Update, |mut e| {
                    e.subsets = endpoints.subsets.clone();
                    Ok(e)
                })
                .await?;
        }
        Some(_) => {}
    }
    match registry
        .find::<EndpointSlice>(Some("default"), "kubernetes")
        .await?
    {
        None => match registry.create(Some("default"), slice).await {
            Ok(_) | Err(weft_api::ApiError { code: 409, .. }) => {}
            Err(e) => return Err(e.into()),
        },
        Some((have, _)) if have.endpoints != slice.endpoints || have.ports != slice.ports => {
            registry
                .modify::<EndpointSlice>(Some("default"), "kubernetes", Write::Update, |mut s| {
                    s.endpoints = slice.endpoints.clone();
                    s.ports = slice.ports.clone();
                    Ok(s)
                })
                .await?;
        }
        Some(_) => {}
    }
    Ok(())
}

/// A started controller: its API state and address, for tests and `run`.
pub struct Started {
    pub state: Arc<ApiState>,
    pub pki: tls::Pki,
    pub admin_token: String,
    pub listener: std::net::TcpListener,
    pub cache: Arc<Cache>,
}

/// Everything before serving: store, PKI, tokens, kubeconfig, namespaces.
pub async fn start(cfg: &ControllerConfig) -> Result<Started> {
    let ipam =
        crate::ipam::Ipam::new(cfg.cluster_cidr, cfg.service_cidr).map_err(anyhow::Error::msg)?;
    let store = open_store(cfg).await?;
    let mut sans = cfg.extra_sans.clone();
    if let Some(ip) = cfg.advertise {
        sans.push(ip.to_string());
    }
    // Pods reach the API at the `kubernetes` Service's address and check
    // that the certificate names it.
    sans.push(api_service_ip(cfg).to_string());
    if !cfg.listen.ip().is_unspecified() {
        sans.push(cfg.listen.ip().to_string());
    }
    let pki = tls::ensure_pki(&cfg.data_dir, &sans)
        .context("prepare the cluster CA and serving certificate")?;
    let tokens = Arc::new(Tokens::open(&cfg.data_dir).context("prepare the token file")?);
    let admin_token = tokens
        .admin_token()
        .context("the token file has no admin token")?;
    let mut registry = Registry::new(store, ipam);
    registry.max_object = cfg.max_object_size;
    registry.pod_security_default = cfg.pod_security_default;
    registry.root_ca = Some(pki.ca_pem.as_str().into());
    bootstrap(&registry)
        .await
        .context("create the built-in namespaces")?;
    bootstrap_rbac(&registry)
        .await
        .context("create the default roles and bindings")?;
    publish_api_service(&registry, cfg)
        .await
        .context("publish the kubernetes Service")?;
    let listener = std::net::TcpListener::bind(cfg.listen)
        .with_context(|| format!("listen on {}", cfg.listen))?;
    if let Some(path) = &cfg.kubeconfig {
        write_kubeconfig(path, &cfg.server_url(), &pki.ca_pem, &admin_token)
            .with_context(|| format!("write the admin kubeconfig to {}", path.display()))?;
    }
    // The scheduler and controllers work from a cache of every object.
    let cache = Cache::new();
    cache
        .start(registry.store.clone())
        .await
        .context("load the controllers' cache")?;
    let mut registry = registry;
    registry.namespaces = Some(cache.clone());
    controllers::start_all(&Ctx {
        reg: registry.clone(),
        cache: cache.clone(),
        cfg: controllers::ControllersConfig {
            ca_pem: Some(pki.ca_pem.clone()),
            ..cfg.controllers.clone()
        },
    });
    let hub = crate::apiserver::hub::WatchHub::start(registry.store.clone())
        .await
        .context("start the watch hub")?;
    spawn_compactor(registry.store.clone(), hub.clone(), cfg.watch_history);
    let state = Arc::new(ApiState {
        rbac: crate::rbac::Authorizer::start(cache.clone()),
        sa_tokens: Arc::new(
            crate::apiserver::satoken::Issuer::open(&cfg.data_dir)
                .context("prepare the service account token key")?,
        ),
        cache: cache.clone(),
        registry,
        hub,
        tokens,
        bookmark_every: cfg.bookmark_every,
        metrics: Default::default(),
        heartbeats: heartbeat_runtime()?,
        bulk: crate::apiserver::Bulk::new(bulk_runtime()?),
    });
    spawn_heap_trimmer();
    Ok(Started {
        state,
        pki,
        admin_token,
        listener,
        cache,
    })
}

/// A runtime of one thread for node heartbeats (see `apiserver::handle`):
/// the operating system shares the cores with it whatever the main runtime's
/// queue holds.
fn heartbeat_runtime() -> Result<tokio::runtime::Handle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("weft-heartbeats")
        .build()
        .context("start the heartbeat runtime")?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("weft-heartbeats".into())
        .spawn(move || rt.block_on(std::future::pending::<()>()))
        .context("start the heartbeat thread")?;
    Ok(handle)
}

/// A runtime for LISTs (see `apiserver::Bulk`): as many threads as cores,
/// at a lower CPU priority (nice 10) than the threads that serve
/// connections, heartbeats and writes, so that reading and encoding large
/// collections takes the cores only when nothing else wants them (what API
/// Priority and Fairness' priority levels do for kube-apiserver).
fn bulk_runtime() -> Result<tokio::runtime::Handle> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        )
        .enable_all()
        .thread_name("weft-bulk")
        .on_thread_start(|| {
            // The calling thread only (Linux applies it per thread). A
            // failure leaves the thread at the process' priority.
            // SAFETY: setpriority has no memory effects.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, 10);
            }
        })
        .build()
        .context("start the bulk runtime")?;
    let handle = rt.handle().clone();
    // The runtime lives as long as the process: its handle is what the API
    // uses.
    std::mem::forget(rt);
    Ok(handle)
}

/// Gives free heap memory back to the system when much of it is free: after
/// a burst (thousands of watchers, a large list) glibc keeps freed memory in
/// its arenas; `malloc_trim` returns it (measured by the controller bench:
/// RSS back to within the target of idle after the watchers close).
fn spawn_heap_trimmer() {
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let (_, free, _) = crate::apiserver::metrics::heap();
            if free > 32 * 1024 * 1024 {
                tokio::task::spawn_blocking(crate::apiserver::metrics::trim_heap);
            }
        }
    });
}

/// Trims the store's history to the last `keep` revisions now and then (as
/// kube-apiserver compacts etcd), so it does not grow without bound.
fn spawn_compactor(store: Arc<dyn Store>, hub: Arc<crate::apiserver::hub::WatchHub>, keep: i64) {
    tokio::spawn(async move {
        let mut done = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let Ok(rev) = store.revision().await else {
                continue;
            };
            let target = rev - keep.max(1);
            if target > done {
                match store.compact(target).await {
                    Ok(()) => {
                        hub.compacted(target);
                        done = target;
                    }
                    Err(e) => tracing::warn!("compacting the store to {target}: {e}"),
                }
            }
        }
    });
}

/// Runs the controller until the process is stopped.
pub async fn run(cfg: ControllerConfig) -> Result<()> {
    let started = start(&cfg).await?;
    tracing::info!(
        listen = %cfg.listen,
        store = started.state.registry.store.backend(),
        data_dir = %cfg.data_dir.display(),
        "weft controller serving at {}",
        cfg.server_url()
    );
    let mut listeners = vec![started.listener];
    for fd in &cfg.listen_fds {
        use std::os::fd::FromRawFd as _;
        // SAFETY: the parent passed this descriptor for us to own; it is
        // checked to be a listening TCP socket below.
        let l = unsafe { std::net::TcpListener::from_raw_fd(*fd) };
        let addr = l
            .local_addr()
            .with_context(|| format!("--listen-fd {fd} is not a listening TCP socket"))?;
        tracing::info!(%addr, fd, "also serving on an inherited socket");
        listeners.push(l);
    }
    apiserver::serve(started.state, listeners, &started.pki).await
}
