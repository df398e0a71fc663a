//! Who is asking (bearer tokens) and what they may do.
//!
//! Tokens live in `tokens.csv` in the data directory, in kube-apiserver's
//! static token file format (`token,user,uid,"group1,group2"`): an admin
//! token for the CLI (group system:masters) and one token per node for its
//! agent (user `system:node:<name>`, group system:nodes). The file is re-read
//! when it changes, so adding a node needs no restart.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use weft_api::ApiError;

pub use crate::identity::{AUTHENTICATED, User};

pub const ADMIN_USER: &str = "weft-admin";

pub struct Tokens {
    path: PathBuf,
    state: Mutex<(Option<SystemTime>, HashMap<String, User>)>,
}

fn new_token() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{a}{b}")
}

fn parse(text: &str) -> HashMap<String, User> {
    let mut out = HashMap::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let mut fields = line.splitn(4, ',');
        let (Some(token), Some(user)) = (fields.next(), fields.next()) else {
            continue;
        };
        let uid = fields.next().unwrap_or_default().trim().to_string();
        let mut groups: Vec<String> = fields
            .next()
            .map(|g| {
                g.trim_matches('"')
                    .split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.to_string());
        }
        out.insert(
            token.to_string(),
            User {
                name: user.to_string(),
                uid,
                groups,
            },
        );
    }
    out
}

impl Tokens {
    /// Opens the token file in `dir`, creating it with an admin token.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("tokens.csv");
        if !path.exists() {
            let line = format!(
                "{},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n",
                new_token()
            );
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(line.as_bytes())?;
            f.sync_all()?;
        }
        let tokens = Tokens {
            path,
            state: Mutex::new((None, HashMap::new())),
        };
        tokens.reload();
        Ok(tokens)
    }

    fn reload(&self) {
        let mtime = fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if (state.0 != mtime || mtime.is_none())
            && let Ok(text) = fs::read_to_string(&self.path)
        {
            state.1 = parse(&text);
            state.0 = mtime;
        }
    }

    /// The admin token (for the kubeconfig).
    pub fn admin_token(&self) -> Option<String> {
        self.reload();
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .1
            .iter()
            .find(|(_, u)| u.name == ADMIN_USER)
            .map(|(t, _)| t.clone())
    }

    /// The token of `node`'s agent, if it has one.
    pub fn existing_node_token(&self, node: &str) -> Option<String> {
        self.reload();
        let user = format!("system:node:{node}");
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .1
            .iter()
            .find(|(_, u)| u.name == user)
            .map(|(t, _)| t.clone())
    }

    /// The token of `node`'s agent, created when it has none.
    pub fn node_token(&self, node: &str) -> anyhow::Result<String> {
        if let Some(e) = weft_api::meta::dns_subdomain_error(node) {
            anyhow::bail!("invalid node name {node:?}: {e}");
        }
        self.reload();
        let user = format!("system:node:{node}");
        {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((t, _)) = state.1.iter().find(|(_, u)| u.name == user) {
                return Ok(t.clone());
            }
        }
        let token = new_token();
        let mut f = fs::OpenOptions::new()
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        f.write_all(format!("{token},{user},{user},\"system:nodes\"\n").as_bytes())?;
        f.sync_all()?;
        drop(f);
        self.reload();
        Ok(token)
    }

    /// The user a bearer token of the file belongs to.
    pub fn authenticate(&self, header: Option<&str>) -> Result<User, ApiError> {
        let token = bearer(header).ok_or_else(ApiError::unauthorized)?;
        self.find(token).ok_or_else(ApiError::unauthorized)
    }

    /// The user of `token` in the file, reading it again once when the
    /// token is not there (it may have been added since).
    pub fn find(&self, token: &str) -> Option<User> {
        if let Some(user) = self.lookup(token) {
            return Some(user);
        }
        self.reload();
        self.lookup(token)
    }

    fn lookup(&self, token: &str) -> Option<User> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Compare in constant time per candidate, so timing leaks nothing.
        let mut found = None;
        for (t, user) in &state.1 {
            if t.len() == token.len()
                && t.bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
            {
                found = Some(user.clone());
            }
        }
        found
    }
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    header
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// What the request does, for authorization (RBAC's view of it).
pub type Attributes<'a> = crate::rbac::Request<'a>;

/// The outcome of authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Allowed only if the pod is bound to this node (the handler checks).
    IfPodOnNode(String),
    /// Allowed only if a pod bound to this node references the object (a
    /// ConfigMap, Secret or PersistentVolumeClaim it reads; the handler
    /// checks), as kube's node authorizer allows.
    IfReferencedOnNode(String),
    Deny(String),
}

fn is_read(verb: &str) -> bool {
    matches!(verb, "get" | "list" | "watch")
}

/// Admins may do anything. A node's agent may read what it serves from
/// (nodes, pods, services, endpoints and slices, namespaces, network
/// policies, node Leases), change its own Node and Lease, write Events, and
/// change the status of (or delete) pods bound to it; what it writes is
/// admitted by the registry's NodeRestriction rules (`Kind::admit_node`).
pub fn authorize(user: &User, a: &Attributes<'_>) -> Decision {
    if user.is_admin() {
        return Decision::Allow;
    }
    if let Some(path) = a.path {
        return Decision::Deny(format!(
            "User \"{}\" cannot {} path \"{path}\"",
            user.name, a.verb
        ));
    }
    if let Some(node) = user.node() {
        if is_read(a.verb) && a.subresource.is_none_or(|s| s == "status") {
            // What the agent reads (it is kubelet, kube-proxy, the CNI
            // plugin, the NetworkPolicy agent and the DNS server in one), as
            // kube's node authorizer and the roles of those parts allow;
            // not workloads' controllers, nor Events.
            let readable = match (a.group, a.resource) {
                (
                    "",
                    "nodes" | "pods" | "services" | "endpoints" | "namespaces"
                    | "persistentvolumes",
                )
                | ("discovery.k8s.io", "endpointslices")
                | ("networking.k8s.io", "networkpolicies") => true,
                ("coordination.k8s.io", "leases") => a.namespace == Some("kube-node-lease"),
                _ => false,
            };
            if readable {
                return Decision::Allow;
            }
            if a.verb == "get"
                && a.subresource.is_none()
                && a.group.is_empty()
                && matches!(
                    a.resource,
                    "configmaps" | "secrets" | "persistentvolumeclaims"
                )
            {
                return Decision::IfReferencedOnNode(node.to_string());
            }
        }
        let own = a.name == Some(node);
        let allowed = match (a.group, a.resource, a.subresource) {
            ("", "nodes", None | Some("status")) => {
                (own && a.verb != "delete") || (a.verb == "create" && a.name.is_none())
            }
            ("coordination.k8s.io", "leases", None) => {
                a.namespace == Some("kube-node-lease")
                    && (own || (a.verb == "create" && a.name.is_none()))
                    && a.verb != "delete"
            }
            ("", "events", None) | ("events.k8s.io", "events", None) => {
                matches!(a.verb, "create" | "patch" | "update")
            }
            ("", "pods", Some("status")) if matches!(a.verb, "update" | "patch") => {
                return Decision::IfPodOnNode(node.to_string());
            }
            ("", "pods", None) if a.verb == "delete" => {
                return Decision::IfPodOnNode(node.to_string());
            }
            // Tokens for its pods' accounts, bound to those pods: the
            // TokenRequest handler checks the pod is bound to this node.
            ("", "serviceaccounts", Some("token")) => a.verb == "create",
            _ => false,
        };
        if allowed {
            return Decision::Allow;
        }
    }
    if let Some(node) = user.node()
        && matches!(a.resource, "nodes" | "leases")
        && !is_read(a.verb)
        && let Some(name) = a.name.filter(|n| *n != node)
    {
        let kind = if a.resource == "nodes" {
            "node"
        } else {
            "lease"
        };
        return Decision::Deny(format!(
            "User \"{}\" cannot {} resource \"{}\": node \"{node}\" may only change its own {kind}, not \"{name}\"",
            user.name, a.verb, a.resource
        ));
    }
    let what = match a.subresource {
        Some(sub) => format!("{}/{sub}", a.resource),
        None => a.resource.to_string(),
    };
    let scope = match a.namespace {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => " at the cluster scope".to_string(),
    };
    Decision::Deny(format!(
        "User \"{}\" cannot {} resource \"{what}\" in API group \"{}\"{scope}",
        user.name, a.verb, a.group
    ))
}

/// A node may create or update only its own Node and Lease objects: the
/// name in the body must be its own (the URL has no name on create).
pub fn check_body_name(user: &User, resource: &str, body_name: &str) -> Result<(), ApiError> {
    if let Some(node) = user.node()
        && (resource == "nodes" || resource == "leases")
        && body_name != node
    {
        return Err(ApiError::forbidden(format!(
            "node \"{node}\" may only create or change its own {resource}, not \"{body_name}\""
        )));
    }
    Ok(())
}
