//! Services: type, ports and session affinity defaulted and checked; a
//! ClusterIP from the Service network (or "None" for headless Services, none
//! for ExternalName ones) and node ports for NodePort and LoadBalancer
//! Services, claimed in the transaction that writes the Service and freed
//! by the one deleting it.

use std::collections::HashSet;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Service, ServiceSpec, ServiceStatus};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use weft_api::error::{ApiError, Cause};
use weft_api::meta::dns_label_error;

use super::Registry;
use super::kind::{Kind, NameRule, kind_fields};
use super::validation::{check_labels, check_port, check_protocol, port_name_error};
use crate::ipam::{self, IpamError};
use crate::store::Txn;

fn ty(spec: Option<&ServiceSpec>) -> &str {
    spec.and_then(|s| s.type_.as_deref()).unwrap_or("ClusterIP")
}

fn wants_node_ports(svc: &Service) -> bool {
    matches!(ty(svc.spec.as_ref()), "NodePort" | "LoadBalancer")
}

/// The node ports a Service holds.
fn node_ports(svc: &Service) -> Vec<u16> {
    if !wants_node_ports(svc) {
        return Vec::new();
    }
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| p.node_port.and_then(|n| u16::try_from(n).ok()))
        .collect()
}

fn who(svc: &Service) -> Vec<u8> {
    ipam::owner(&weft_api::meta::key_of(svc), svc.metadata.uid.as_deref())
}

fn invalid(svc: &Service, cause: Cause) -> ApiError {
    ApiError::invalid(
        "Service",
        "",
        svc.metadata.name.as_deref().unwrap_or_default(),
        vec![cause],
    )
}

fn ipam_error(svc: &Service, field: &str, value: impl std::fmt::Display, e: IpamError) -> ApiError {
    match e {
        IpamError::Invalid(why) => invalid(svc, Cause::invalid(field, value, why)),
        IpamError::Exhausted(why) => ApiError::forbidden(why),
        IpamError::Store(e) => super::store_error(e),
    }
}

/// Claims the Service's ClusterIP (the one it asks for, or a free one).
async fn claim_cluster_ip(
    reg: &Registry,
    svc: &mut Service,
    txn: &mut Txn,
) -> Result<(), ApiError> {
    if ty(svc.spec.as_ref()) == "ExternalName" {
        if let Some(ip) = svc.spec.as_ref().and_then(requested_ip) {
            return Err(invalid(
                svc,
                Cause::invalid(
                    "spec.clusterIP",
                    json!(ip),
                    "must be empty for ExternalName services",
                ),
            ));
        }
        return Ok(());
    }
    let spec = svc.spec.get_or_insert_with(Default::default);
    let requested = requested_ip(spec);
    if requested.as_deref() == Some("None") {
        spec.cluster_ip = Some("None".into());
        spec.cluster_ips = Some(vec!["None".into()]);
        spec.ip_families = Some(vec!["IPv4".into()]);
        spec.ip_family_policy = Some("SingleStack".into());
        return Ok(());
    }
    let owner = who(svc);
    let ip = reg
        .ipam
        .claim_cluster_ip(reg.store.as_ref(), requested.as_deref(), &owner, txn)
        .await
        .map_err(|e| {
            ipam_error(
                svc,
                "spec.clusterIPs[0]",
                requested.as_deref().unwrap_or_default(),
                e,
            )
        })?;
    let spec = svc.spec.get_or_insert_with(Default::default);
    spec.cluster_ip = Some(ip.to_string());
    spec.cluster_ips = Some(vec![ip.to_string()]);
    spec.ip_families = Some(vec!["IPv4".into()]);
    spec.ip_family_policy = Some("SingleStack".into());
    Ok(())
}

/// The ClusterIP a Service asks for: `clusterIP`, or else the first of
/// `clusterIPs` (validation has made them agree when both are there).
fn requested_ip(spec: &ServiceSpec) -> Option<String> {
    spec.cluster_ip
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| spec.cluster_ips.as_ref()?.first().cloned())
        .filter(|s| !s.is_empty())
}

fn release_cluster_ip(reg: &Registry, svc: &Service, txn: &mut Txn) {
    if let Some(ip) = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) {
        reg.ipam.release_cluster_ip(ip, txn);
    }
}

/// Gives every port of a NodePort or LoadBalancer Service a node port (the
/// one it asks for, the one it had, or a free one), and frees those `old`
/// held that it no longer uses.
async fn claim_node_ports(
    reg: &Registry,
    old: Option<&Service>,
    svc: &mut Service,
    txn: &mut Txn,
) -> Result<(), ApiError> {
    let held: Vec<u16> = old.map(node_ports).unwrap_or_default();
    if !wants_node_ports(svc) {
        for p in svc
            .spec
            .as_mut()
            .and_then(|s| s.ports.as_mut())
            .into_iter()
            .flatten()
        {
            p.node_port = None;
        }
        for port in held {
            reg.ipam.release_node_port(port, txn);
        }
        return Ok(());
    }
    let old_ports: Vec<(i32, String, u16)> = old
        .filter(|o| wants_node_ports(o))
        .and_then(|o| o.spec.as_ref())
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.port,
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                u16::try_from(p.node_port?).ok()?,
            ))
        })
        .collect();
    let count = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map_or(0, Vec::len);
    let mut used: HashSet<u16> = HashSet::new();
    for i in 0..count {
        let port = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .expect("counted")[i]
            .clone();
        let proto = port.protocol.as_deref().unwrap_or("TCP");
        let wanted = match port.node_port {
            Some(p) => Some(p as u16),
            None => old_ports
                .iter()
                .find(|(n, pr, _)| *n == port.port && pr == proto)
                .map(|(_, _, np)| *np),
        };
        let chosen = match wanted {
            Some(p) if held.contains(&p) => p,
            Some(p) => {
                if used.contains(&p)
                    || reg
                        .ipam
                        .node_port_taken(reg.store.as_ref(), p)
                        .await
                        .map_err(super::store_error)?
                {
                    return Err(invalid(
                        svc,
                        Cause::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            p,
                            "provided port is already allocated",
                        ),
                    ));
                }
                p
            }
            None => {
                let avoid: HashSet<u16> = used.iter().chain(held.iter()).copied().collect();
                reg.ipam
                    .free_node_port(reg.store.as_ref(), &avoid)
                    .await
                    .map_err(|e| ipam_error(svc, "spec.ports", i, e))?
            }
        };
        used.insert(chosen);
        svc.spec
            .as_mut()
            .and_then(|s| s.ports.as_mut())
            .expect("counted")[i]
            .node_port = Some(i32::from(chosen));
    }
    let owner = who(svc);
    for p in &used {
        if !held.contains(p) {
            reg.ipam.claim_node_port(*p, &owner, txn);
        }
    }
    for p in held {
        if !used.contains(&p) {
            reg.ipam.release_node_port(p, txn);
        }
    }
    Ok(())
}

#[async_trait]
impl Kind for Service {
    kind_fields!(spec: ServiceSpec, status: ServiceStatus);

    const NAME: NameRule = NameRule::Label1035;

    fn prepare_for_create(&mut self) {
        self.status = None;
    }

    fn default_fields(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.type_.get_or_insert_with(|| "ClusterIP".into());
        spec.session_affinity.get_or_insert_with(|| "None".into());
        if spec.type_.as_deref() != Some("ExternalName") {
            spec.internal_traffic_policy
                .get_or_insert_with(|| "Cluster".into());
        }
        for port in spec.ports.iter_mut().flatten() {
            port.protocol.get_or_insert_with(|| "TCP".into());
            if port.target_port.is_none() {
                port.target_port = Some(IntOrString::Int(port.port));
            }
        }
    }

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        let empty = ServiceSpec::default();
        let spec = self.spec.as_ref().unwrap_or(&empty);
        let ty = ty(Some(spec));
        let types = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
        if !types.contains(&ty) {
            out.push(Cause::not_supported("spec.type", ty, &types));
        }
        let ports = spec.ports.as_deref().unwrap_or_default();
        let headless = spec.cluster_ip.as_deref() == Some("None");
        if ports.is_empty() && ty != "ExternalName" && !headless {
            out.push(Cause::required("spec.ports"));
        }
        if ty == "ExternalName" && spec.external_name.as_deref().is_none_or(str::is_empty) {
            out.push(Cause::required("spec.externalName"));
        }
        let mut names = HashSet::new();
        for (i, p) in ports.iter().enumerate() {
            check_port(&mut out, format!("spec.ports[{i}].port"), Some(p.port));
            check_protocol(
                &mut out,
                format!("spec.ports[{i}].protocol"),
                p.protocol.as_deref(),
            );
            match p.name.as_deref() {
                Some(n) if !n.is_empty() => {
                    if let Some(e) = dns_label_error(n) {
                        out.push(Cause::invalid(format!("spec.ports[{i}].name"), n, e));
                    }
                    if !names.insert(n.to_string()) {
                        out.push(Cause::duplicate(format!("spec.ports[{i}].name"), n));
                    }
                }
                _ if ports.len() > 1 => out.push(Cause::required(format!("spec.ports[{i}].name"))),
                _ => {}
            }
            match &p.target_port {
                Some(IntOrString::Int(t)) if !(1..=65535).contains(t) => out.push(Cause::invalid(
                    format!("spec.ports[{i}].targetPort"),
                    t,
                    "must be between 1 and 65535, inclusive",
                )),
                // A named targetPort is a container port's name.
                Some(IntOrString::String(t)) => {
                    if let Some(e) = port_name_error(t) {
                        out.push(Cause::invalid(format!("spec.ports[{i}].targetPort"), t, e));
                    }
                }
                _ => {}
            }
            if let Some(np) = p.node_port
                && !(30000..=32767).contains(&np)
            {
                out.push(Cause::invalid(
                    format!("spec.ports[{i}].nodePort"),
                    np,
                    "provided port is not in the valid range. The range of valid ports is 30000-32767",
                ));
            }
        }
        if let Some(a) = spec.session_affinity.as_deref()
            && !["None", "ClientIP"].contains(&a)
        {
            out.push(Cause::not_supported(
                "spec.sessionAffinity",
                a,
                &["None", "ClientIP"],
            ));
        }
        let timeout = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds);
        if let Some(t) = timeout
            && !(1..=86_400).contains(&t)
        {
            out.push(Cause::invalid(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                t,
                "must be greater than 0 and less than 86400",
            ));
        }
        check_labels(&mut out, "spec.selector", spec.selector.as_ref());
        // Single-stack IPv4: one ClusterIP, the same in both fields.
        let ips = spec.cluster_ips.as_deref().unwrap_or_default();
        if ips.len() > 1 {
            out.push(Cause::invalid(
                "spec.clusterIPs",
                json!(ips),
                "may only hold one value: Services here are single-stack IPv4",
            ));
        }
        if let (Some(first), Some(ip)) = (ips.first(), spec.cluster_ip.as_deref())
            && !ip.is_empty()
            && first != ip
        {
            out.push(Cause::invalid(
                "spec.clusterIPs[0]",
                json!(first),
                "must be the same as spec.clusterIP",
            ));
        }
        for (i, f) in spec.ip_families.iter().flatten().enumerate() {
            if f != "IPv4" {
                out.push(Cause::not_supported(
                    format!("spec.ipFamilies[{i}]"),
                    f,
                    &["IPv4"],
                ));
            }
        }
        // PreferDualStack is single-stack on a single-stack cluster, as in
        // Kubernetes; RequireDualStack cannot be met.
        let policies = ["SingleStack", "PreferDualStack"];
        if let Some(p) = spec.ip_family_policy.as_deref()
            && !policies.contains(&p)
        {
            out.push(Cause::not_supported("spec.ipFamilyPolicy", p, &policies));
        }
        out
    }

    fn validate_update(&self, old: &Self) -> Vec<Cause> {
        // Either field may be left out (the update keeps the address), but
        // neither may name another: that would take another Service's.
        let ip = |s: &Service| s.spec.as_ref().and_then(requested_ip);
        match (ip(old), ip(self)) {
            (Some(old_ip), Some(new_ip)) if old_ip != new_ip => vec![Cause::invalid(
                "spec.clusterIP",
                new_ip,
                "field is immutable",
            )],
            _ => Vec::new(),
        }
    }

    async fn on_create(&mut self, reg: &Registry, txn: &mut Txn) -> Result<(), ApiError> {
        claim_cluster_ip(reg, self, txn).await?;
        claim_node_ports(reg, None, self, txn).await
    }

    async fn on_update(
        &mut self,
        old: &Self,
        reg: &Registry,
        txn: &mut Txn,
    ) -> Result<(), ApiError> {
        let old_type = ty(old.spec.as_ref()).to_string();
        let external = ty(self.spec.as_ref()) == "ExternalName";
        let old_spec = old.spec.clone().unwrap_or_default();
        let old_ip = old_spec.cluster_ip.clone().unwrap_or_default();
        let spec = self.spec.get_or_insert_with(Default::default);
        // An update that leaves the ClusterIP out keeps the one it had.
        if !external && spec.cluster_ip.as_deref().is_none_or(str::is_empty) && !old_ip.is_empty() {
            spec.cluster_ip = old_spec.cluster_ip.clone();
            spec.cluster_ips = old_spec.cluster_ips.clone();
            spec.ip_families = old_spec.ip_families.clone();
            spec.ip_family_policy = old_spec.ip_family_policy.clone();
        }
        // So does one that leaves out (or empties) clusterIPs alone.
        if !external && spec.cluster_ips.as_deref().is_none_or(<[String]>::is_empty) {
            spec.cluster_ips = old_spec.cluster_ips.clone();
        }
        if external && old_type != "ExternalName" {
            release_cluster_ip(reg, old, txn);
            spec.cluster_ip = None;
            spec.cluster_ips = None;
        } else if !external && old_type == "ExternalName" {
            claim_cluster_ip(reg, self, txn).await?;
        }
        claim_node_ports(reg, Some(old), self, txn).await
    }

    fn on_delete(&self, reg: &Registry, txn: &mut Txn) {
        release_cluster_ip(reg, self, txn);
        for port in node_ports(self) {
            reg.ipam.release_node_port(port, txn);
        }
    }
}
