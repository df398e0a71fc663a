//! A sample zone for tests, the fuzz target and the regression inputs, so
//! that they all exercise the same names.

use std::{collections::BTreeMap, net::Ipv4Addr};

use crate::records::{EndpointInfo, PodInfo, ServiceInfo, Zone};

/// `cluster.local` (TTL 5), not yet synced, with:
/// - `web.default`: ClusterIP 10.96.0.10, named port `http` (TCP 80) and an
///   unnamed UDP 53;
/// - `db.default`: headless; `db-0` at 10.244.1.5 (port `pg` 5432), an
///   endpoint without hostname at 10.244.2.6 (`pg` 5433), and `db-2` at
///   10.244.3.7, not ready;
/// - `empty.default`: headless without endpoints;
/// - `many.default`: headless with 60 endpoints 10.244.1.10-69, more than a
///   512-byte UDP answer holds;
/// - `search.ext`: ExternalName `www.example.org`; `alias.ext`: ExternalName
///   `web.default.svc.cluster.local`;
/// - pods `default/db-0` (10.244.1.5, another node's) and `team/client` at
///   `local_pod`, on this node.
#[must_use]
pub fn sample_zone(local_pod: Ipv4Addr) -> Zone {
    let mut z = Zone::new("cluster.local", 5).expect("a valid origin");
    z.set_service(
        "default",
        "web",
        Some(ServiceInfo {
            cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 10).into()],
            ports: vec![
                ("http".into(), "tcp".into(), 80),
                (String::new(), "udp".into(), 53),
            ],
            ..ServiceInfo::default()
        }),
    );
    let endpoint = |ip: [u8; 4], hostname: Option<&str>, ready, pg: Option<u16>| EndpointInfo {
        ip: Ipv4Addr::from(ip).into(),
        hostname: hostname.map(String::from),
        ready,
        ports: pg
            .map(|p| BTreeMap::from([("pg".into(), p)]))
            .unwrap_or_default(),
    };
    z.set_service(
        "default",
        "db",
        Some(ServiceInfo {
            headless: true,
            ports: vec![("pg".into(), "tcp".into(), 5432)],
            endpoints: vec![
                endpoint([10, 244, 1, 5], Some("db-0"), true, Some(5432)),
                endpoint([10, 244, 2, 6], None, true, Some(5433)),
                endpoint([10, 244, 3, 7], Some("db-2"), false, None),
            ],
            ..ServiceInfo::default()
        }),
    );
    z.set_service(
        "default",
        "empty",
        Some(ServiceInfo {
            headless: true,
            ..ServiceInfo::default()
        }),
    );
    z.set_service(
        "default",
        "many",
        Some(ServiceInfo {
            headless: true,
            endpoints: (0..60)
                .map(|i| endpoint([10, 244, 1, 10 + i], None, true, None))
                .collect(),
            ..ServiceInfo::default()
        }),
    );
    z.set_service(
        "ext",
        "search",
        Some(ServiceInfo {
            external_name: Some("www.example.org".into()),
            ..ServiceInfo::default()
        }),
    );
    z.set_service(
        "ext",
        "alias",
        Some(ServiceInfo {
            external_name: Some("web.default.svc.cluster.local".into()),
            ..ServiceInfo::default()
        }),
    );
    z.set_pod(
        "default/db-0",
        Some(PodInfo {
            namespace: "default".into(),
            ip: Ipv4Addr::new(10, 244, 1, 5),
            local: false,
        }),
    );
    z.set_pod(
        "team/client",
        Some(PodInfo {
            namespace: "team".into(),
            ip: local_pod,
            local: true,
        }),
    );
    z
}

/// A server handler on the synced [`sample_zone`], with no upstream and
/// the search-path shortcut on.
#[must_use]
pub fn sample_handler(local_pod: Ipv4Addr) -> crate::server::Handler {
    let mut z = sample_zone(local_pod);
    z.set_synced();
    z.set_pods_synced();
    crate::server::Handler::new(
        std::sync::Arc::new(std::sync::RwLock::new(z)),
        crate::server::Options {
            forwarder: None,
            search_shortcut: true,
        },
    )
}
