//! The files a pod gets from its node: /etc/resolv.conf per its DNS
//! policy, and its host name.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;

/// The pod's host name: its name cut to 63 characters (the kernel takes
/// 64), without a trailing '-' or '.', as kubelet does.
/// A pod's /etc/resolv.conf, per its `dnsPolicy` and `dnsConfig`:
/// ClusterFirst (the default) names the node's DNS with the cluster search
/// list and `ndots:5`; Default takes the host's (`host`, its resolv.conf
/// text); None starts empty. `dnsConfig` then adds nameservers and search
/// domains, and sets options (a later value of a name wins).
#[must_use]
pub fn resolv_conf(pod: &Pod, ns: &str, cluster_dns: Ipv4Addr, host: &str) -> String {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let policy = match spec.and_then(|s| s.dns_policy.as_deref()) {
        None | Some("ClusterFirst") if host_network => "Default",
        None => "ClusterFirst",
        Some(p) => p,
    };
    let mut servers: Vec<String> = Vec::new();
    let mut search: Vec<String> = Vec::new();
    let mut options: Vec<(String, Option<String>)> = Vec::new();
    let set_option =
        |options: &mut Vec<(String, Option<String>)>, n: &str, v: Option<String>| match options
            .iter_mut()
            .find(|(k, _)| k == n)
        {
            Some(o) => o.1 = v,
            None => options.push((n.to_string(), v)),
        };
    match policy {
        "ClusterFirst" | "ClusterFirstWithHostNet" => {
            servers.push(cluster_dns.to_string());
            search.extend([
                format!("{ns}.svc.cluster.local"),
                "svc.cluster.local".into(),
                "cluster.local".into(),
            ]);
            set_option(&mut options, "ndots", Some("5".into()));
        }
        "Default" => {
            for line in host.lines() {
                let mut w = line.split_whitespace();
                match w.next() {
                    Some("nameserver") => servers.extend(w.next().map(String::from)),
                    Some("search" | "domain") => search = w.map(String::from).collect(),
                    Some("options") => {
                        for o in w {
                            let (n, v) = o.split_once(':').map_or((o, None), |(n, v)| (n, Some(v)));
                            set_option(&mut options, n, v.map(String::from));
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    if let Some(c) = spec.and_then(|s| s.dns_config.as_ref()) {
        for s in c.nameservers.iter().flatten() {
            if !servers.contains(s) {
                servers.push(s.clone());
            }
        }
        for s in c.searches.iter().flatten() {
            if !search.contains(s) {
                search.push(s.clone());
            }
        }
        for o in c.options.iter().flatten() {
            if let Some(n) = &o.name {
                set_option(&mut options, n, o.value.clone());
            }
        }
    }
    let mut out = String::new();
    for s in &servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        let opts: Vec<String> = options
            .iter()
            .map(|(n, v)| v.as_ref().map_or_else(|| n.clone(), |v| format!("{n}:{v}")))
            .collect();
        out.push_str(&format!("options {}\n", opts.join(" ")));
    }
    out
}

/// The pod's host name: its name cut to 63 characters (the kernel takes
/// 64), without a trailing '-' or '.', as kubelet does.
pub(super) fn hostname_of(name: &str) -> String {
    let cut = &name[..name.len().min(63)];
    cut.trim_end_matches(['-', '.']).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn resolv_conf_follows_dns_policy_and_config() {
        let pod = |policy: Option<&str>, config: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "team"},
                "spec": {"containers": [], "dnsPolicy": policy, "dnsConfig": config},
            }))
            .expect("pod")
        };
        let dns = Ipv4Addr::new(10, 244, 1, 1);
        let host = "nameserver 192.0.2.53\nsearch example.org\noptions timeout:2 rotate\n";
        assert_eq!(
            resolv_conf(&pod(None, serde_json::Value::Null), "team", dns, host),
            "nameserver 10.244.1.1\nsearch team.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        );
        assert_eq!(
            resolv_conf(
                &pod(Some("Default"), serde_json::Value::Null),
                "team",
                dns,
                host
            ),
            "nameserver 192.0.2.53\nsearch example.org\noptions timeout:2 rotate\n"
        );
        let config = serde_json::json!({
            "nameservers": ["192.0.2.1"],
            "searches": ["corp.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}],
        });
        assert_eq!(
            resolv_conf(&pod(Some("None"), config.clone()), "team", dns, host),
            "nameserver 192.0.2.1\nsearch corp.example\noptions ndots:2 edns0\n"
        );
        assert_eq!(
            resolv_conf(&pod(Some("ClusterFirst"), config), "team", dns, host),
            "nameserver 10.244.1.1\nnameserver 192.0.2.1\nsearch team.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:2 edns0\n"
        );
    }

    #[test]
    fn host_names_are_cut_as_kubelet_cuts_them() {
        assert_eq!(hostname_of("web-1"), "web-1");
        let long = format!("{}-{}", "a".repeat(62), "b".repeat(10));
        assert_eq!(hostname_of(&long), "a".repeat(62));
        assert_eq!(hostname_of(&long).len(), 62);
    }
}
