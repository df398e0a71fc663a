//! Forwarding of names outside the cluster zone to the node's upstream
//! resolvers, with caching: hickory-resolver does the asking, retrying,
//! TCP fallback and the TTL-bounded positive and negative cache.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use hickory_proto::{
    op::ResponseCode,
    rr::{Name, Record, RecordType},
};
use hickory_resolver::{
    Resolver,
    config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    net::{DnsError, NetError, runtime::TokioRuntimeProvider},
};

/// Where the upstream resolvers come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstreams {
    /// The `nameserver` lines of a resolv.conf (the host's by default).
    ResolvConf(std::path::PathBuf),
    /// These addresses (port 53 unless given).
    Servers(Vec<SocketAddr>),
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::ResolvConf("/etc/resolv.conf".into())
    }
}

/// Parses `IP` or `IP:PORT` (port 53 by default).
///
/// # Errors
/// When it is neither.
pub fn parse_upstream(s: &str) -> Result<SocketAddr> {
    let sa = match s.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, 53),
        Err(_) => s
            .parse::<SocketAddr>()
            .with_context(|| format!("{s:?} is not an upstream resolver (IP or IP:PORT)"))?,
    };
    if sa.ip().is_unspecified() || sa.ip().is_multicast() || sa.port() == 0 {
        bail!("{s:?} cannot be asked: give a resolver's own address and a port other than 0");
    }
    Ok(sa)
}

/// The answer of the upstream, as the server relays it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forwarded {
    /// NOERROR, NXDOMAIN or SERVFAIL (what failed to get an answer).
    pub code: ResponseCode,
    /// The answer section (CNAME chains included).
    pub answers: Vec<Record>,
    /// The authority section of negative answers (the SOA).
    pub authority: Vec<Record>,
}

/// Asks the upstream resolvers, through a cache.
#[derive(Clone)]
pub struct Forwarder {
    resolver: Resolver<TokioRuntimeProvider>,
    servers: Vec<SocketAddr>,
    /// Lookups in flight: each may hold a socket, so a flood of names that
    /// miss the cache must not take the agent's descriptors.
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

/// Entries kept in the cache (each a whole answer).
pub const DEFAULT_CACHE_SIZE: u64 = 10_000;

/// Upstream lookups in flight at most (CoreDNS's forward plugin has the
/// same default); beyond it, SERVFAIL at once.
pub const MAX_IN_FLIGHT: usize = 1_000;

impl Forwarder {
    /// A forwarder to `upstreams`, caching up to `cache_size` answers.
    ///
    /// # Errors
    /// When the resolv.conf cannot be read or names no server.
    pub fn new(upstreams: &Upstreams, cache_size: u64) -> Result<Self> {
        let servers = match upstreams {
            Upstreams::Servers(s) => s.clone(),
            Upstreams::ResolvConf(path) => resolv_conf_servers(path)?,
        };
        if servers.is_empty() {
            bail!("no upstream resolver configured");
        }
        let name_servers = servers
            .iter()
            .map(|sa| {
                let mut c = NameServerConfig::udp_and_tcp(sa.ip());
                for conn in &mut c.connections {
                    conn.port = sa.port();
                }
                c
            })
            .collect();
        let config = ResolverConfig::from_parts(None, Vec::new(), name_servers);
        let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.cache_size = cache_size;
        // The names come fully qualified from the client; /etc/hosts is the
        // host's, not the pods'.
        opts.ndots = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.preserve_intermediates = true;
        // An unreachable upstream must give SERVFAIL before the client's
        // own resolver gives up (glibc: 5 s), not a timeout.
        opts.timeout = Duration::from_secs(1);
        opts.attempts = 2;
        opts.try_tcp_on_error = true;
        let resolver = builder.build().context("the upstream resolver")?;
        Ok(Self {
            resolver,
            servers,
            in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        })
    }

    /// The upstream servers.
    #[must_use]
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Resolves `name`/`qtype` upstream (or from the cache). `None` when
    /// [`MAX_IN_FLIGHT`] lookups are already under way.
    pub async fn lookup(&self, name: &Name, qtype: RecordType) -> Option<Forwarded> {
        let _permit = self.in_flight.clone().try_acquire_owned().ok()?;
        Some(self.lookup_now(name, qtype).await)
    }

    async fn lookup_now(&self, name: &Name, qtype: RecordType) -> Forwarded {
        let mut fqdn = name.clone();
        fqdn.set_fqdn(true);
        match self.resolver.lookup(fqdn, qtype).await {
            Ok(l) => Forwarded {
                code: ResponseCode::NoError,
                answers: l.answers().to_vec(),
                authority: Vec::new(),
            },
            Err(NetError::Dns(DnsError::NoRecordsFound(nr))) => Forwarded {
                code: if nr.response_code == ResponseCode::NXDomain {
                    ResponseCode::NXDomain
                } else {
                    ResponseCode::NoError
                },
                answers: Vec::new(),
                authority: nr
                    .soa
                    .map(|s| vec![(*s).into_record_of_rdata()])
                    .unwrap_or_default(),
            },
            Err(e) => {
                tracing::debug!(%name, ?qtype, error = %e, "upstream lookup failed");
                Forwarded {
                    code: ResponseCode::ServFail,
                    answers: Vec::new(),
                    authority: Vec::new(),
                }
            }
        }
    }
}

/// The `nameserver` addresses of the resolv.conf at `path`.
fn resolv_conf_servers(path: &Path) -> Result<Vec<SocketAddr>> {
    let text = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let (config, _opts) = hickory_resolver::system_conf::parse_resolv_conf(&text)
        .with_context(|| format!("parse {}", path.display()))?;
    let mut out: Vec<SocketAddr> = Vec::new();
    for ns in config.name_servers() {
        let port = ns.connections.first().map_or(53, |c| c.port);
        let sa = SocketAddr::new(ns.ip, port);
        if !out.contains(&sa) {
            out.push(sa);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_addresses() {
        assert_eq!(
            parse_upstream("192.0.2.1").expect("ip"),
            "192.0.2.1:53".parse::<SocketAddr>().expect("sa")
        );
        assert_eq!(
            parse_upstream("192.0.2.1:5353").expect("ip:port"),
            "192.0.2.1:5353".parse::<SocketAddr>().expect("sa")
        );
        assert!(parse_upstream("resolver.example").is_err());
        assert!(parse_upstream("0.0.0.0").is_err());
        assert!(parse_upstream("192.0.2.1:0").is_err());
    }

    #[test]
    fn resolv_conf_nameservers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("resolv.conf");
        std::fs::write(
            &p,
            "search example.org\nnameserver 192.0.2.53\nnameserver 192.0.2.54\noptions ndots:2\n",
        )
        .expect("write");
        assert_eq!(
            resolv_conf_servers(&p).expect("parse"),
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().expect("sa"),
                "192.0.2.54:53".parse().expect("sa")
            ]
        );
        std::fs::write(&p, "search example.org\n").expect("write");
        assert!(Forwarder::new(&Upstreams::ResolvConf(p), 10).is_err());
    }
}
