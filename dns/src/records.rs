//! The cluster zone's answers, per the Kubernetes DNS-based service
//! discovery specification (schema 1.1.0), from an in-memory picture of
//! Services, their endpoints and pods. Pure logic: the server and the watch
//! that fills [`Zone`] live elsewhere.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use hickory_proto::rr::{
    Name, RData, Record, RecordType,
    rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT},
};

/// The schema version `dns-version.<zone>` answers.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// A Service as DNS sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// ClusterIPs of both families (empty for headless and ExternalName
    /// Services).
    pub cluster_ips: Vec<IpAddr>,
    /// `clusterIP: None`.
    pub headless: bool,
    /// `type: ExternalName`: the name it stands for.
    pub external_name: Option<String>,
    /// Ports: (name, protocol in lowercase, port).
    pub ports: Vec<(String, String, u16)>,
    /// Endpoints (headless Services answer with them).
    pub endpoints: Vec<EndpointInfo>,
}

/// One endpoint of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Its address.
    pub ip: IpAddr,
    /// `hostname` of the endpoint (from the pod's spec.hostname).
    pub hostname: Option<String>,
    /// Ready (only ready endpoints are published).
    pub ready: bool,
    /// Port numbers by port name (headless SRV targets).
    pub ports: BTreeMap<String, u16>,
}

/// What a query gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// NOERROR with these records.
    Records(Vec<Record>),
    /// NOERROR, no answer: the name exists without this type (or is an
    /// empty non-terminal). The zone's SOA goes in the authority section.
    NoData,
    /// The name does not exist. SOA in the authority section.
    NxDomain,
    /// Not synced with the API yet: say so, do not deny.
    ServFail,
    /// Not in the cluster zone: someone else's to answer.
    NotOurs,
}

/// The cluster zone: `cluster.local` by default.
#[derive(Clone, Debug)]
pub struct Zone {
    origin: Name,
    ttl: u32,
    /// Services and EndpointSlices are listed.
    synced: bool,
    /// Pods are listed.
    pods_synced: bool,
    /// Services by (namespace, name), lowercase.
    services: BTreeMap<(String, String), ServiceInfo>,
    /// Services per namespace (`<ns>.svc` exists while it has one).
    service_namespaces: HashMap<String, u32>,
    /// Reverse index for PTR: the Service names (and endpoint hostnames)
    /// an address stands for, as (namespace, service, hostname).
    service_addrs: HashMap<IpAddr, BTreeSet<(String, String, Option<String>)>>,
    /// Pods by `namespace/name`.
    pods: HashMap<String, PodInfo>,
    /// Namespaces of pod addresses, with how many pods hold each (a
    /// restarted pod may briefly share its address with the old one).
    pod_addrs: HashMap<Ipv4Addr, HashMap<String, u32>>,
    /// Namespaces of this node's pods by address.
    local_addrs: HashMap<Ipv4Addr, String>,
    /// Pods per namespace (`<ns>.pod` exists while it has one).
    pod_namespaces: HashMap<String, u32>,
    serial: u32,
}

/// A pod as DNS sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// Its namespace.
    pub namespace: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// It runs on this node: its queries may take the search-path
    /// shortcut, which needs the namespace of the asking address.
    pub local: bool,
}

fn count_up(m: &mut HashMap<String, u32>, k: &str) {
    *m.entry(k.to_string()).or_default() += 1;
}

fn count_down(m: &mut HashMap<String, u32>, k: &str) {
    if let Some(n) = m.get_mut(k) {
        *n -= 1;
        if *n == 0 {
            m.remove(k);
        }
    }
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

impl Zone {
    /// An empty zone `origin` (e.g. "cluster.local") answering with `ttl`.
    ///
    /// # Errors
    /// When `origin` is not a domain name.
    pub fn new(origin: &str, ttl: u32) -> Result<Self, hickory_proto::ProtoError> {
        let mut origin = Name::from_ascii(origin)?.to_lowercase();
        origin.set_fqdn(true);
        Ok(Self {
            origin,
            ttl,
            synced: false,
            pods_synced: false,
            services: BTreeMap::new(),
            service_namespaces: HashMap::new(),
            service_addrs: HashMap::new(),
            pods: HashMap::new(),
            pod_addrs: HashMap::new(),
            pod_namespaces: HashMap::new(),
            local_addrs: HashMap::new(),
            serial: 1,
        })
    }

    /// Marks the Services as synced with the API. Until they and the pods
    /// are, cluster names answer SERVFAIL.
    pub fn set_synced(&mut self) {
        self.synced = true;
    }

    /// Marks the pods as synced with the API.
    pub fn set_pods_synced(&mut self) {
        self.pods_synced = true;
    }

    fn is_synced(&self) -> bool {
        self.synced && self.pods_synced
    }

    /// Sets or removes (`None`) a Service.
    pub fn set_service(&mut self, ns: &str, name: &str, svc: Option<ServiceInfo>) {
        let key = (lower(ns), lower(name));
        // Out with the old entries before the new ones go in: the reverse
        // index holds sets, and an entry both have must stay.
        if let Some(old) = self.services.remove(&key) {
            self.index_service(&key, &old, false);
        }
        if let Some(s) = svc {
            self.index_service(&key, &s, true);
            self.services.insert(key, s);
        }
        self.serial = self.serial.wrapping_add(1);
    }

    /// Adds (`add`) or removes a Service's entries in the indexes.
    fn index_service(&mut self, key: &(String, String), s: &ServiceInfo, add: bool) {
        let (ns, name) = key;
        if add {
            count_up(&mut self.service_namespaces, ns);
        } else {
            count_down(&mut self.service_namespaces, ns);
        }
        let named = s.cluster_ips.iter().map(|ip| (*ip, None)).chain(
            s.endpoints
                .iter()
                .filter(|e| e.ready && s.headless)
                .map(|e| (e.ip, Some(endpoint_host(e)))),
        );
        for (ip, host) in named {
            let entry = (ns.clone(), name.clone(), host);
            if add {
                self.service_addrs.entry(ip).or_default().insert(entry);
            } else if let Some(set) = self.service_addrs.get_mut(&ip) {
                set.remove(&entry);
                if set.is_empty() {
                    self.service_addrs.remove(&ip);
                }
            }
        }
    }

    /// Sets or removes (`None`) the pod `key` (`namespace/name`).
    pub fn set_pod(&mut self, key: &str, pod: Option<PodInfo>) {
        let pod = pod.map(|mut p| {
            p.namespace = lower(&p.namespace);
            p
        });
        if self.pods.get(key) == pod.as_ref() {
            return;
        }
        let old = match pod {
            Some(p) => {
                count_up(&mut self.pod_namespaces, &p.namespace);
                count_up(self.pod_addrs.entry(p.ip).or_default(), &p.namespace);
                if p.local {
                    self.local_addrs.insert(p.ip, p.namespace.clone());
                }
                self.pods.insert(key.to_string(), p)
            }
            None => self.pods.remove(key),
        };
        if let Some(old) = old {
            count_down(&mut self.pod_namespaces, &old.namespace);
            if let Some(m) = self.pod_addrs.get_mut(&old.ip) {
                count_down(m, &old.namespace);
                if m.is_empty() {
                    self.pod_addrs.remove(&old.ip);
                }
            }
            // Unless a newer local pod took the address meanwhile.
            let still = self
                .pods
                .get(key)
                .is_some_and(|p| p.local && p.ip == old.ip);
            if old.local && !still && self.local_addrs.get(&old.ip) == Some(&old.namespace) {
                self.local_addrs.remove(&old.ip);
            }
        }
        self.serial = self.serial.wrapping_add(1);
    }

    /// Keys of the pods the zone holds.
    pub fn pod_keys(&self) -> impl Iterator<Item = &String> {
        self.pods.keys()
    }

    /// The namespace of the local pod at `ip`, if one is there.
    #[must_use]
    pub fn local_pod_namespace(&self, ip: Ipv4Addr) -> Option<&str> {
        self.local_addrs.get(&ip).map(String::as_str)
    }

    /// The search-path shortcut: when this node's pod at `src` asks for
    /// `qname` under its first search domain (`<ns>.svc.<zone>`), the names
    /// its resolver would try next, in order: `<base>.svc.<zone>`,
    /// `<base>.<zone>`, then `<base>.` itself. `None` when the query does
    /// not come from a local pod or is not under its namespace.
    #[must_use]
    pub fn search_path(&self, src: Ipv4Addr, qname: &Name) -> Option<Vec<Name>> {
        let ns = self.local_pod_namespace(src)?;
        let first = self.name(&[ns, "svc"]);
        let lname = qname.to_lowercase();
        if !first.zone_of(&lname) || lname.num_labels() <= first.num_labels() {
            return None;
        }
        let keep = usize::from(lname.num_labels() - first.num_labels());
        let mut base = Name::from_labels(lname.iter().take(keep)).ok()?;
        base.set_fqdn(false);
        let svc = self.name(&["svc"]);
        let mut bare = base.clone();
        bare.set_fqdn(true);
        Some(vec![
            base.clone().append_domain(&svc).ok()?,
            base.append_domain(&self.origin).ok()?,
            bare,
        ])
    }

    /// How many Services and pods the zone holds.
    #[must_use]
    pub fn size(&self) -> (usize, usize) {
        (self.services.len(), self.pods.len())
    }

    /// The TTL of its answers.
    #[must_use]
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The zone's origin.
    #[must_use]
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// The SOA record of the zone (authority section of negative answers).
    #[must_use]
    pub fn soa(&self) -> Record {
        let ns = Name::from_ascii("ns.dns")
            .and_then(|n| n.append_domain(&self.origin))
            .unwrap_or_else(|_| self.origin.clone());
        let mbox = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(&self.origin))
            .unwrap_or_else(|_| self.origin.clone());
        Record::from_rdata(
            self.origin.clone(),
            self.ttl,
            RData::SOA(SOA::new(
                ns,
                mbox,
                self.serial,
                7200,
                1800,
                86_400,
                self.ttl,
            )),
        )
    }

    fn name(&self, labels: &[&str]) -> Name {
        let mut n =
            Name::from_labels(labels.iter().map(|l| l.as_bytes())).unwrap_or_else(|_| Name::root());
        n.set_fqdn(false);
        n.append_domain(&self.origin)
            .unwrap_or_else(|_| self.origin.clone())
    }

    fn rec(&self, name: &Name, rdata: RData) -> Record {
        Record::from_rdata(name.clone(), self.ttl, rdata)
    }

    /// The answer to `qname`/`qtype`. Names are compared case-insensitively;
    /// the records carry the name as asked.
    #[must_use]
    pub fn resolve(&self, qname: &Name, qtype: RecordType) -> Answer {
        let lname = qname.to_lowercase();
        if let Some(a) = self.reverse(&lname, qname, qtype) {
            return a;
        }
        if !self.origin.zone_of(&lname) {
            return Answer::NotOurs;
        }
        if !self.is_synced() {
            return Answer::ServFail;
        }
        let depth = usize::from(lname.num_labels() - self.origin.num_labels());
        let labels: Vec<String> = lname
            .iter()
            .take(depth)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        let found = |v: Vec<Record>| {
            if v.is_empty() {
                Answer::NoData
            } else {
                Answer::Records(v)
            }
        };
        match l.as_slice() {
            // The apex.
            [] => match qtype {
                RecordType::SOA => Answer::Records(vec![self.soa()]),
                _ => Answer::NoData,
            },
            ["dns-version"] => match qtype {
                RecordType::TXT => Answer::Records(vec![self.rec(
                    qname,
                    RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])),
                )]),
                _ => Answer::NoData,
            },
            // Empty non-terminals.
            ["svc"] | ["pod"] => Answer::NoData,
            [ns, "svc"] => {
                if self.service_namespaces.contains_key(*ns) {
                    Answer::NoData
                } else {
                    Answer::NxDomain
                }
            }
            [svc, ns, "svc"] => self.service(qname, ns, svc, qtype, found),
            [host, svc, ns, "svc"] => {
                let Some(s) = self.services.get(&(ns.to_string(), svc.to_string())) else {
                    return Answer::NxDomain;
                };
                if host.starts_with('_') {
                    // `_proto.svc.ns.svc`: an empty non-terminal of a named
                    // port's SRV name.
                    // Nothing exists below a headless Service's name while
                    // it has no ready endpoint.
                    let proto = host.trim_start_matches('_');
                    let exists = !s.headless || s.endpoints.iter().any(|e| e.ready);
                    return if exists && s.ports.iter().any(|(n, p, _)| !n.is_empty() && p == proto)
                    {
                        Answer::NoData
                    } else {
                        Answer::NxDomain
                    };
                }
                let ips: Vec<IpAddr> = s
                    .endpoints
                    .iter()
                    .filter(|e| e.ready && s.headless)
                    .filter(|e| endpoint_host(e) == *host)
                    .map(|e| e.ip)
                    .collect();
                if ips.is_empty() {
                    return Answer::NxDomain;
                }
                found(self.addresses(qname, &ips, qtype))
            }
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                self.srv(qname, ns, svc, &port[1..], &proto[1..], qtype, found)
            }
            [ns, "pod"] => {
                if self.pod_namespaces.contains_key(*ns) {
                    Answer::NoData
                } else {
                    Answer::NxDomain
                }
            }
            [dashed, ns, "pod"] => {
                let Some(ip) = dashed_ip(dashed) else {
                    return Answer::NxDomain;
                };
                if !self.pod_addrs.get(&ip).is_some_and(|m| m.contains_key(*ns)) {
                    return Answer::NxDomain;
                }
                found(self.addresses(qname, &[IpAddr::V4(ip)], qtype))
            }
            _ => Answer::NxDomain,
        }
    }

    fn service(
        &self,
        qname: &Name,
        ns: &str,
        svc: &str,
        qtype: RecordType,
        found: impl Fn(Vec<Record>) -> Answer,
    ) -> Answer {
        let Some(s) = self.services.get(&(ns.to_string(), svc.to_string())) else {
            return Answer::NxDomain;
        };
        if let Some(ext) = &s.external_name {
            let Ok(mut target) = Name::from_ascii(ext) else {
                return Answer::NxDomain;
            };
            target.set_fqdn(true);
            // A CNAME answers every type but itself asked for by name.
            return Answer::Records(vec![self.rec(qname, RData::CNAME(CNAME(target)))]);
        }
        let ips: Vec<IpAddr> = if s.headless {
            s.endpoints
                .iter()
                .filter(|e| e.ready)
                .map(|e| e.ip)
                .collect()
        } else {
            s.cluster_ips.clone()
        };
        // A headless Service without a ready endpoint has no name.
        if s.headless && ips.is_empty() {
            return Answer::NxDomain;
        }
        found(self.addresses(qname, &ips, qtype))
    }

    /// A records for the IPv4 addresses (qtype A) or AAAA records for the
    /// IPv6 ones (qtype AAAA); none for other types.
    fn addresses(&self, qname: &Name, ips: &[IpAddr], qtype: RecordType) -> Vec<Record> {
        ips.iter()
            .filter_map(|ip| match (ip, qtype) {
                (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(*v4))),
                (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(*v6))),
                _ => None,
            })
            .map(|r| self.rec(qname, r))
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn srv(
        &self,
        qname: &Name,
        ns: &str,
        svc: &str,
        port: &str,
        proto: &str,
        qtype: RecordType,
        found: impl Fn(Vec<Record>) -> Answer,
    ) -> Answer {
        let Some(s) = self.services.get(&(ns.to_string(), svc.to_string())) else {
            return Answer::NxDomain;
        };
        // Only named ports have SRV records.
        let Some((_, _, number)) = s
            .ports
            .iter()
            .find(|(n, p, _)| !n.is_empty() && n == port && p == proto)
        else {
            return Answer::NxDomain;
        };
        if qtype != RecordType::SRV {
            return Answer::NoData;
        }
        if !s.headless {
            let target = self.name(&[svc, ns, "svc"]);
            return found(vec![
                self.rec(qname, RData::SRV(SRV::new(0, 100, *number, target))),
            ]);
        }
        let ready: Vec<&EndpointInfo> = s.endpoints.iter().filter(|e| e.ready).collect();
        if ready.is_empty() {
            return Answer::NxDomain;
        }
        let weight = u16::try_from(100 / ready.len()).unwrap_or(1).max(1);
        found(
            ready
                .iter()
                .map(|e| {
                    let host = endpoint_host(e);
                    let target = self.name(&[&host, svc, ns, "svc"]);
                    let p = e.ports.get(port).copied().unwrap_or(*number);
                    self.rec(qname, RData::SRV(SRV::new(0, weight, p, target)))
                })
                .collect(),
        )
    }

    /// PTR answers under in-addr.arpa and ip6.arpa for Service and pod
    /// addresses.
    fn reverse(&self, lname: &Name, qname: &Name, qtype: RecordType) -> Option<Answer> {
        let ip = reverse_ip(lname)?;
        // Before sync the indexes are empty: an address of the cluster
        // would look like someone else's.
        if !self.is_synced() {
            return Some(Answer::ServFail);
        }
        let mut targets: Vec<Name> = Vec::new();
        if let Some(names) = self.service_addrs.get(&ip) {
            for (ns, name, host) in names {
                targets.push(match host {
                    Some(h) => self.name(&[h, name, ns, "svc"]),
                    None => self.name(&[name, ns, "svc"]),
                });
            }
        } else if let IpAddr::V4(v4) = ip
            && let Some(nss) = self.pod_addrs.get(&v4)
        {
            let d = dashed(v4);
            let mut nss: Vec<&String> = nss.keys().collect();
            nss.sort();
            for ns in nss {
                targets.push(self.name(&[&d, ns, "pod"]));
            }
        }
        if targets.is_empty() {
            // Not a cluster address: the upstream may know it.
            return None;
        }
        Some(if qtype == RecordType::PTR {
            Answer::Records(
                targets
                    .into_iter()
                    .map(|t| self.rec(qname, RData::PTR(PTR(t))))
                    .collect(),
            )
        } else {
            Answer::NoData
        })
    }
}

/// The address a reverse name (`d.c.b.a.in-addr.arpa.` or 32 nibbles
/// under `ip6.arpa.`) stands for.
fn reverse_ip(lname: &Name) -> Option<IpAddr> {
    let labels: Vec<&[u8]> = lname.iter().collect();
    match labels.as_slice() {
        [d, c, b, a, in_addr, arpa] if *in_addr == b"in-addr" && *arpa == b"arpa" => {
            let octet = |l: &[u8]| std::str::from_utf8(l).ok()?.parse::<u8>().ok();
            Some(IpAddr::V4(Ipv4Addr::new(
                octet(a)?,
                octet(b)?,
                octet(c)?,
                octet(d)?,
            )))
        }
        [nibbles @ .., ip6, arpa] if *ip6 == b"ip6" && *arpa == b"arpa" && nibbles.len() == 32 => {
            let mut v: u128 = 0;
            for n in nibbles.iter().rev() {
                let [h] = n else {
                    return None;
                };
                v = v << 4 | u128::from(char::from(*h).to_digit(16)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(v)))
        }
        _ => None,
    }
}

/// The name of a headless Service's endpoint under the Service: its
/// hostname, or else its address with dashes (`10-244-1-7`; for IPv6, as
/// CoreDNS does, the address with ':' as '-').
fn endpoint_host(e: &EndpointInfo) -> String {
    match (&e.hostname, e.ip) {
        (Some(h), _) => lower(h),
        (None, IpAddr::V4(v4)) => dashed(v4),
        (None, IpAddr::V6(v6)) => v6.to_string().replace(':', "-"),
    }
}

/// `10.244.1.7` as `10-244-1-7`.
#[must_use]
pub fn dashed(ip: Ipv4Addr) -> String {
    ip.octets()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("-")
}

fn dashed_ip(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<u8> = s
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [a, b, c, d] = parts[..] else {
        return None;
    };
    let ip = Ipv4Addr::new(a, b, c, d);
    // One name per address: `010-244-...` is not `10-244-...`.
    (dashed(ip) == s).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Zone {
        let mut z = crate::testing::sample_zone(Ipv4Addr::new(10, 244, 1, 2));
        z.set_synced();
        z.set_pods_synced();
        z
    }

    fn q(z: &Zone, name: &str, t: RecordType) -> Answer {
        z.resolve(&Name::from_ascii(name).expect("name"), t)
    }

    fn addrs(a: &Answer) -> Vec<String> {
        match a {
            Answer::Records(rs) => {
                let mut v: Vec<String> = rs.iter().map(|r| r.data.to_string()).collect();
                v.sort();
                v
            }
            other => vec![format!("{other:?}")],
        }
    }

    #[test]
    fn cluster_ip_services_and_case() {
        let z = zone();
        assert_eq!(
            addrs(&q(&z, "web.default.svc.cluster.local.", RecordType::A)),
            ["10.96.0.10"]
        );
        assert_eq!(
            addrs(&q(&z, "WEB.Default.SVC.cluster.LOCAL.", RecordType::A)),
            ["10.96.0.10"]
        );
        assert_eq!(
            q(&z, "web.default.svc.cluster.local.", RecordType::AAAA),
            Answer::NoData
        );
        assert_eq!(
            q(&z, "nope.default.svc.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(
            q(&z, "web.other.svc.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn headless_services_answer_ready_endpoints() {
        let z = zone();
        assert_eq!(
            addrs(&q(&z, "db.default.svc.cluster.local.", RecordType::A)),
            ["10.244.1.5", "10.244.2.6"]
        );
        assert_eq!(
            addrs(&q(&z, "db-0.db.default.svc.cluster.local.", RecordType::A)),
            ["10.244.1.5"]
        );
        // Not ready: not published.
        assert_eq!(
            q(&z, "db-2.db.default.svc.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(
            q(&z, "empty.default.svc.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn srv_only_for_named_ports() {
        let z = zone();
        let a = q(
            &z,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(addrs(&a), ["0 100 80 web.default.svc.cluster.local."]);
        assert_eq!(
            q(
                &z,
                "_dns._udp.web.default.svc.cluster.local.",
                RecordType::SRV
            ),
            Answer::NxDomain,
            "unnamed ports have no SRV"
        );
        let a = q(
            &z,
            "_pg._tcp.db.default.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(
            addrs(&a),
            [
                "0 50 5432 db-0.db.default.svc.cluster.local.",
                "0 50 5433 10-244-2-6.db.default.svc.cluster.local."
            ]
        );
        assert_eq!(
            q(&z, "_tcp.web.default.svc.cluster.local.", RecordType::A),
            Answer::NoData
        );
    }

    #[test]
    fn pods_ptr_external_names_version_and_empty_non_terminals() {
        let z = zone();
        assert_eq!(
            addrs(&q(
                &z,
                "10-244-1-5.default.pod.cluster.local.",
                RecordType::A
            )),
            ["10.244.1.5"]
        );
        assert_eq!(
            q(&z, "10-244-9-9.default.pod.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(
            addrs(&q(&z, "10.0.96.10.in-addr.arpa.", RecordType::PTR)),
            ["web.default.svc.cluster.local."]
        );
        assert_eq!(
            addrs(&q(&z, "5.1.244.10.in-addr.arpa.", RecordType::PTR)),
            ["db-0.db.default.svc.cluster.local."]
        );
        assert_eq!(
            q(&z, "1.1.1.1.in-addr.arpa.", RecordType::PTR),
            Answer::NotOurs
        );
        assert_eq!(
            addrs(&q(&z, "search.ext.svc.cluster.local.", RecordType::A)),
            ["www.example.org."]
        );
        assert_eq!(
            addrs(&q(&z, "dns-version.cluster.local.", RecordType::TXT)),
            ["1.1.0"]
        );
        assert_eq!(q(&z, "svc.cluster.local.", RecordType::A), Answer::NoData);
        assert_eq!(
            q(&z, "default.svc.cluster.local.", RecordType::A),
            Answer::NoData
        );
        assert_eq!(
            q(&z, "nons.svc.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(q(&z, "example.org.", RecordType::A), Answer::NotOurs);
        assert!(matches!(
            q(&z, "cluster.local.", RecordType::SOA),
            Answer::Records(_)
        ));
    }

    #[test]
    fn ipv6_addresses_answer_aaaa_and_ip6_arpa() {
        let mut z = zone();
        let v6: Ipv6Addr = "fd00:10:96::a".parse().expect("v6");
        z.set_service(
            "default",
            "dual",
            Some(ServiceInfo {
                cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 20).into(), v6.into()],
                ..ServiceInfo::default()
            }),
        );
        z.set_service(
            "default",
            "six",
            Some(ServiceInfo {
                headless: true,
                ports: vec![("http".into(), "tcp".into(), 80)],
                endpoints: vec![EndpointInfo {
                    ip: "fd00:244::5".parse().expect("v6"),
                    hostname: None,
                    ready: true,
                    ports: BTreeMap::new(),
                }],
                ..ServiceInfo::default()
            }),
        );
        assert_eq!(
            addrs(&q(&z, "dual.default.svc.cluster.local.", RecordType::A)),
            ["10.96.0.20"]
        );
        assert_eq!(
            addrs(&q(&z, "dual.default.svc.cluster.local.", RecordType::AAAA)),
            ["fd00:10:96::a"]
        );
        // IPv4-only names have no AAAA; IPv6-only headless ones no A.
        assert_eq!(
            q(&z, "six.default.svc.cluster.local.", RecordType::A),
            Answer::NoData
        );
        assert_eq!(
            addrs(&q(&z, "six.default.svc.cluster.local.", RecordType::AAAA)),
            ["fd00:244::5"]
        );
        assert_eq!(
            addrs(&q(
                &z,
                "_http._tcp.six.default.svc.cluster.local.",
                RecordType::SRV
            )),
            ["0 100 80 fd00-244--5.six.default.svc.cluster.local."]
        );
        let arpa = "a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.";
        assert_eq!(
            addrs(&q(&z, arpa, RecordType::PTR)),
            ["dual.default.svc.cluster.local."]
        );
    }

    #[test]
    fn updates_keep_reverse_records_and_endpoint_names_resolve() {
        let mut z = zone();
        // The same Service set again (every watch event does that).
        let web = z.services[&("default".into(), "web".into())].clone();
        z.set_service("default", "web", Some(web));
        assert_eq!(
            addrs(&q(&z, "10.0.96.10.in-addr.arpa.", RecordType::PTR)),
            ["web.default.svc.cluster.local."]
        );
        // A headless endpoint without hostname is named by its address,
        // the name SRV points at, and its PTR says so.
        assert_eq!(
            addrs(&q(
                &z,
                "10-244-2-6.db.default.svc.cluster.local.",
                RecordType::A
            )),
            ["10.244.2.6"]
        );
        assert_eq!(
            addrs(&q(&z, "6.2.244.10.in-addr.arpa.", RecordType::PTR)),
            ["10-244-2-6.db.default.svc.cluster.local."]
        );
        // One name per address.
        assert_eq!(
            q(&z, "010-244-1-5.default.pod.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
        // Nothing below a headless name that does not exist.
        assert_eq!(
            q(&z, "empty.default.svc.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(
            q(&z, "_tcp.empty.default.svc.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
        // Removal takes the reverse records with it.
        z.set_service("default", "web", None);
        assert_eq!(
            q(&z, "10.0.96.10.in-addr.arpa.", RecordType::PTR),
            Answer::NotOurs
        );
    }

    #[test]
    fn servfail_until_synced() {
        let z = Zone::new("cluster.local", 5).expect("zone");
        assert_eq!(
            q(&z, "web.default.svc.cluster.local.", RecordType::A),
            Answer::ServFail
        );
        assert_eq!(q(&z, "example.org.", RecordType::A), Answer::NotOurs);
        assert_eq!(
            q(&z, "10.0.96.10.in-addr.arpa.", RecordType::PTR),
            Answer::ServFail
        );
    }
}
