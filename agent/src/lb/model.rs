//! What the load-balancer is asked to do, in its own terms: frontends (a
//! Service port at one address, or a node port) with their backends, as
//! [`super::sync`] reads them from Services and EndpointSlices and the
//! [`super::Balancer`] installs them.

use std::net::Ipv4Addr;

use weft_common as common;
use weft_common::ServiceKey;

pub use weft_api::debug::lb::Scope;

pub use weft_common::PROTO_SCTP;

/// One backend of a frontend, as the API describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendSpec {
    /// Pod address.
    pub addr: Ipv4Addr,
    /// Target port.
    pub port: u16,
    /// Ready (takes new connections) or only terminating (keeps its own).
    pub ready: bool,
}

/// A frontend as the API describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendSpec {
    /// Address (ignored for NodePorts).
    pub addr: Ipv4Addr,
    /// Port (the node port for NodePorts).
    pub port: u16,
    /// 6 (TCP) or 17 (UDP).
    pub proto: u8,
    /// ClusterIP or NodePort.
    pub scope: Scope,
    /// The Service port's name ("" when unnamed).
    pub port_name: String,
    /// ClientIP session affinity timeout, seconds.
    pub affinity: Option<u32>,
    /// Backends, ready and terminating.
    pub backends: Vec<BackendSpec>,
}

impl FrontendSpec {
    /// The map key.
    #[must_use]
    pub fn key(&self) -> ServiceKey {
        let nodeport = self.scope == Scope::NodePort;
        ServiceKey {
            addr: if nodeport {
                0
            } else {
                u32::from_ne_bytes(self.addr.octets())
            },
            port: self.port.to_be(),
            proto: self.proto,
            scope: if nodeport {
                common::SCOPE_NODEPORT
            } else {
                common::SCOPE_CLUSTER
            },
        }
    }
}

/// Maglev table sizes: primes, each about twice the one before. A frontend
/// gets the smallest one with at least 100 slots per ready backend, so that
/// backends' shares stay within about 1% of each other, as the Maglev paper
/// recommends, without giving a two-backend service 16 381 slots.
const TABLE_SIZES: [u32; 9] = [251, 509, 1021, 2039, 4093, 8191, 16_381, 32_749, 65_521];

/// The Maglev table size for `n` ready backends.
#[must_use]
pub fn table_size(n: usize) -> u32 {
    let want = (n as u64).saturating_mul(100);
    TABLE_SIZES
        .iter()
        .copied()
        .find(|&s| u64::from(s) >= want)
        .unwrap_or(TABLE_SIZES[TABLE_SIZES.len() - 1])
}

/// An IPv4 address as the maps hold it (network order in a native u32).
pub(crate) fn ip(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
}

/// A protocol's name, as `weft lb` prints it.
pub(crate) fn proto_name(p: u8) -> &'static str {
    match p {
        common::PROTO_UDP => "UDP",
        common::PROTO_TCP => "TCP",
        PROTO_SCTP => "SCTP",
        _ => "?",
    }
}

/// `namespace/name 10.96.0.10:53/UDP`, or `... nodeport 30080/TCP`.
pub(crate) fn describe(service: &str, f: &FrontendSpec) -> String {
    describe_key(service, &f.key())
}

/// As [`describe`], from the map key.
pub(crate) fn describe_key(service: &str, k: &ServiceKey) -> String {
    let port = u16::from_be(k.port);
    if k.scope == common::SCOPE_NODEPORT {
        format!("{service} nodeport {port}/{}", proto_name(k.proto))
    } else {
        format!("{service} {}:{port}/{}", ip(k.addr), proto_name(k.proto))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::maglev;

    #[test]
    fn table_sizes_give_each_backend_a_hundred_slots() {
        assert_eq!(table_size(1), 251);
        assert_eq!(table_size(3), 509);
        assert_eq!(table_size(10), 1021);
        assert_eq!(table_size(100), 16_381);
        assert_eq!(table_size(1000), 65_521);
        for n in [1, 2, 3, 10, 50, 163, 164, 400, 655] {
            let s = table_size(n);
            assert!(
                maglev::table(
                    &(0..n as u32)
                        .map(|i| maglev::Backend {
                            id: i + 1,
                            key: format!("10.0.{}.{}:80", i / 256, i % 256)
                        })
                        .collect::<Vec<_>>(),
                    s
                )
                .is_ok()
            );
            assert!(u64::from(s) >= 100 * n as u64);
        }
    }
}
