//! What a Service's fields mean, where more than one component needs to
//! know: its cluster addresses.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::ServiceSpec;

/// A Service's ClusterIPs of both families, in order and without repeats
/// (none for headless Services: "None" is no address).
#[must_use]
pub fn cluster_addrs(spec: &ServiceSpec) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    let all = spec
        .cluster_ips
        .clone()
        .unwrap_or_else(|| spec.cluster_ip.clone().into_iter().collect());
    for ip in all.iter().filter_map(|a| a.parse().ok()) {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_both_families_and_none_for_headless() {
        let spec = ServiceSpec {
            cluster_ip: Some("10.96.0.10".into()),
            cluster_ips: Some(vec![
                "10.96.0.10".into(),
                "fd00::a".into(),
                "10.96.0.10".into(),
            ]),
            ..ServiceSpec::default()
        };
        let addrs: Vec<String> = cluster_addrs(&spec)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(addrs, ["10.96.0.10", "fd00::a"]);
        let headless = ServiceSpec {
            cluster_ip: Some("None".into()),
            ..ServiceSpec::default()
        };
        assert!(cluster_addrs(&headless).is_empty());
    }
}
