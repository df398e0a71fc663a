//! Node networking through rtnetlink: namespaces, the node bridge, pod veths,
//! host-gw routes and VXLAN. No `ip` commands are run.
//!
//! Each verb is named after what the node needs and is idempotent: running it
//! twice converges to the same state. This module knows nothing of pods or
//! the API; the sandbox module decides what to ask for.

pub mod netns;

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
};

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressMessage},
    link::{InfoData, InfoVeth, LinkAttribute, LinkInfo, LinkMessage},
    neighbour::NeighbourFlags,
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol},
};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
};

/// Linux's limit on interface names, without the trailing NUL.
pub const IFNAMSIZ_MAX: usize = 15;

/// Routing protocol number that marks routes Weft owns (`ip route show proto 77`),
/// so that a route sync removes only its own routes.
pub const WEFT_ROUTE_PROTO: u8 = 77;

/// Default UDP port for VXLAN (IANA).
pub const VXLAN_PORT: u16 = 4789;

/// Errors of the netlink module. Each says what failed on what.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    /// A name the kernel or this module would refuse.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The offending name.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Something that must not exist yet already does.
    #[error("{what} {name:?} already exists")]
    AlreadyExists {
        /// Kind of object.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// Something that must exist does not.
    #[error("{what} {name:?} not found")]
    NotFound {
        /// Kind of object.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// An existing interface has the name but is not what we need.
    #[error("interface {name:?} exists but is a {found}, not a {wanted}")]
    WrongKind {
        /// Interface name.
        name: String,
        /// Kind found.
        found: String,
        /// Kind wanted.
        wanted: &'static str,
    },
    /// A netlink request failed.
    #[error("netlink: {op}: {source}")]
    Netlink {
        /// What was being done.
        op: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// A system call failed.
    #[error("{op}: {source}")]
    Sys {
        /// What was being done.
        op: &'static str,
        /// errno.
        #[source]
        source: nix::errno::Errno,
    },
    /// File I/O failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A helper thread that switched namespace panicked.
    #[error("a namespace helper thread panicked")]
    ThreadPanicked,
}

impl NetlinkError {
    pub(crate) fn sys(op: &'static str, source: nix::errno::Errno) -> Self {
        Self::Sys { op, source }
    }
    pub(crate) fn io(op: &'static str, source: std::io::Error) -> Self {
        Self::Io { op, source }
    }
    fn nl(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        Self::Netlink {
            op: op.into(),
            source,
        }
    }
}

/// The errno of a netlink error reply, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// Checks an interface name against IFNAMSIZ and the kernel's rules.
///
/// # Errors
/// [`NetlinkError::InvalidName`] with the reason.
pub fn check_ifname(name: &str) -> Result<(), NetlinkError> {
    let reason = if name.is_empty() {
        Some("interface names cannot be empty")
    } else if name.len() > IFNAMSIZ_MAX {
        Some("interface names are at most 15 bytes (IFNAMSIZ)")
    } else if name == "." || name == ".." {
        Some("interface names cannot be . or ..")
    } else if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || !b.is_ascii_graphic())
    {
        Some("interface names cannot contain '/', ':' or whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetlinkError::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// What we learn of an existing link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfoSummary {
    /// ifindex.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Kind ("veth", "bridge", "vxlan"; empty for physical or loopback).
    pub kind: String,
    /// Index of the bridge it is enslaved to, if any.
    pub controller: Option<u32>,
    /// MTU.
    pub mtu: u32,
    /// MAC address.
    pub mac: Vec<u8>,
    /// Packets received and sent, from the kernel's 64-bit counters.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
}

fn summarize(msg: &LinkMessage) -> LinkInfoSummary {
    let mut s = LinkInfoSummary {
        index: msg.header.index,
        name: String::new(),
        kind: String::new(),
        controller: None,
        mtu: 0,
        mac: Vec::new(),
        rx_packets: 0,
        tx_packets: 0,
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => s.name.clone_from(n),
            LinkAttribute::Mtu(m) => s.mtu = *m,
            LinkAttribute::Controller(c) => s.controller = Some(*c),
            LinkAttribute::Address(m) => s.mac.clone_from(m),
            LinkAttribute::Stats64(st) => {
                s.rx_packets = st.rx_packets;
                s.tx_packets = st.tx_packets;
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        s.kind = k.to_string();
                    }
                }
            }
            _ => {}
        }
    }
    s
}

/// A namespace joined to a bridge by a veth pair: a pod on its node's
/// bridge, or a lab node on the lab's underlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethAttachment {
    /// Host-side veth name (≤ 15 bytes), derived from the pod UID by the caller.
    pub host_veth: String,
    /// The inner network namespace (must exist); its end is named `eth0`.
    pub netns: String,
    /// Bridge the host side joins.
    pub bridge: String,
    /// The inner address with the block's prefix length (e.g. 10.244.1.5/24).
    pub address: Ipv4Network,
    /// Default gateway, usually the bridge's address.
    pub gateway: Option<Ipv4Addr>,
    /// MTU of both veth ends.
    pub mtu: u32,
}

/// A host-gw or VXLAN route to another node's pod block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRoute {
    /// The other node's pod block.
    pub block: Ipv4Network,
    /// Next hop: the other node's address (host-gw) or its VTEP address (VXLAN).
    pub via: Ipv4Addr,
}

/// One remote VXLAN tunnel endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanPeer {
    /// The remote node's underlay address (the outer destination).
    pub node_ip: Ipv4Addr,
    /// The remote node's pod block, routed through the tunnel.
    pub block: Ipv4Network,
}

/// The VTEP MAC Weft gives a node: derived from its underlay address, so that
/// peers can program FDB and neighbour entries without exchanging it.
#[must_use]
pub fn vtep_mac(node_ip: Ipv4Addr) -> [u8; 6] {
    let o = node_ip.octets();
    // 0x02: locally administered, unicast.
    [0x02, 0x57, o[0], o[1], o[2], o[3]]
}

/// The MAC address of a bridge holding `gateway`: fixed and derived from
/// the address, so that it never moves. A bridge without a MAC of its own
/// takes the lowest of its ports', so a new pod whose veth sorts first
/// would change the gateway's MAC under every other pod, and their traffic
/// to the gateway (DNS, probes' replies) would go to the old MAC until
/// their neighbour entries expire, for up to half a minute.
#[must_use]
pub fn bridge_mac(gateway: Ipv4Addr) -> [u8; 6] {
    let o = gateway.octets();
    // 0x02: locally administered, unicast; 0x77 keeps it apart from VTEPs.
    [0x02, 0x77, o[0], o[1], o[2], o[3]]
}

/// The address a node's VTEP holds: its block's network address (as /32).
#[must_use]
pub fn vtep_addr(block: Ipv4Network) -> Ipv4Addr {
    block.network()
}

/// A netlink connection bound to one network namespace.
///
/// The socket is opened by a thread that joined the namespace, and keeps
/// talking to that namespace for its whole life.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
    netns: Option<String>,
}

impl Netlink {
    /// Opens a connection in the named namespace (`None`: the caller's).
    /// Needs a tokio runtime: the connection task is spawned on it.
    ///
    /// # Errors
    /// When the namespace cannot be joined or the socket opened.
    pub fn open(netns: Option<&str>) -> Result<Self, NetlinkError> {
        let rt = tokio::runtime::Handle::current();
        let rt2 = rt.clone();
        let (conn, handle, _) = netns::run_in(netns, move || {
            // The socket registers with the reactor when created.
            let _guard = rt2.enter();
            rtnetlink::new_connection()
        })?
        .map_err(|e| NetlinkError::io("open netlink socket", e))?;
        rt.spawn(conn);
        Ok(Self {
            handle,
            netns: netns.map(str::to_string),
        })
    }

    /// The namespace this connection acts on (`None`: the agent's own).
    #[must_use]
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// The link of that name, if any.
    ///
    /// # Errors
    /// On netlink failures other than "no such device".
    pub async fn link(&self, name: &str) -> Result<Option<LinkInfoSummary>, NetlinkError> {
        check_ifname(name)?;
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(summarize(&m))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(NetlinkError::nl(format!("get link {name}"), e)),
        }
    }

    /// All links in the namespace.
    ///
    /// # Errors
    /// On netlink failure.
    pub async fn links(&self) -> Result<Vec<LinkInfoSummary>, NetlinkError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::nl("list links", e))?;
        Ok(msgs.iter().map(summarize).collect())
    }

    async fn require_link(&self, name: &str) -> Result<LinkInfoSummary, NetlinkError> {
        self.link(name)
            .await?
            .ok_or_else(|| NetlinkError::NotFound {
                what: "interface",
                name: name.to_string(),
            })
    }

    /// Sets a link up.
    ///
    /// # Errors
    /// On netlink failure.
    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| NetlinkError::nl(format!("set link {index} up"), e))
    }

    /// Deletes a link by name; a missing link is not an error.
    ///
    /// # Errors
    /// On netlink failure.
    pub async fn delete_link(&self, name: &str) -> Result<(), NetlinkError> {
        let Some(l) = self.link(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(l.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(NetlinkError::nl(format!("delete link {name}"), e)),
        }
    }

    /// The address messages of link `index`.
    async fn link_addresses(&self, index: u32) -> Result<Vec<AddressMessage>, NetlinkError> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::nl("list addresses", e))
    }

    /// Ensures `addr` is on the link (idempotent).
    ///
    /// # Errors
    /// On netlink failure.
    pub async fn ensure_address(&self, index: u32, addr: Ipv4Network) -> Result<(), NetlinkError> {
        let have = self.link_addresses(index).await?;
        let present = have.iter().any(|m| {
            m.header.prefix_len == addr.prefix()
                && m.attributes.iter().any(
                    |a| matches!(a, AddressAttribute::Local(IpAddr::V4(ip)) if *ip == addr.ip()),
                )
        });
        if present {
            return Ok(());
        }
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(addr.ip()), addr.prefix())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(NetlinkError::nl(format!("add address {addr}"), e)),
        }
    }

    /// Removes every IPv4 address of interface `index` but `keep` (a node
    /// bridge whose block changed must not keep routing the old one).
    /// Returns the removed ones.
    ///
    /// # Errors
    /// On netlink failure.
    pub async fn remove_other_addresses(
        &self,
        index: u32,
        keep: Ipv4Network,
    ) -> Result<Vec<Ipv4Network>, NetlinkError> {
        let have = self.link_addresses(index).await?;
        let mut removed = Vec::new();
        for m in have {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let Some(ip) = ip else { continue };
            if ip == keep.ip() && m.header.prefix_len == keep.prefix() {
                continue;
            }
            let Ok(net) = Ipv4Network::new(ip, m.header.prefix_len) else {
                continue;
            };
            match self.handle.address().del(m).execute().await {
                Ok(()) => removed.push(net),
                Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
                Err(e) => return Err(NetlinkError::nl(format!("delete address {net}"), e)),
            }
        }
        Ok(removed)
    }

    /// Ensures a bridge `name` exists, is up, has `gateway` (e.g.
    /// 10.244.1.1/24), `mtu` and the fixed MAC of [`bridge_mac`]. Returns
    /// its ifindex.
    ///
    /// # Errors
    /// [`NetlinkError::WrongKind`] if a non-bridge holds the name.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Network,
        mtu: u32,
    ) -> Result<u32, NetlinkError> {
        check_ifname(name)?;
        let mac = bridge_mac(gateway.ip());
        let link = match self.link(name).await? {
            Some(l) => l,
            None => {
                let res = self
                    .handle
                    .link()
                    .add(LinkBridge::new(name).mtu(mtu).address(mac.to_vec()).build())
                    .execute()
                    .await;
                match res {
                    Ok(()) => {}
                    Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                    Err(e) => return Err(NetlinkError::nl(format!("add bridge {name}"), e)),
                }
                self.require_link(name).await?
            }
        };
        if link.kind != "bridge" {
            return Err(NetlinkError::WrongKind {
                name: name.to_string(),
                found: link.kind,
                wanted: "bridge",
            });
        }
        if link.mac != mac {
            // Setting it also tells the bridge to stop following its ports.
            self.handle
                .link()
                .set(
                    LinkUnspec::new_with_index(link.index)
                        .address(mac.to_vec())
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| NetlinkError::nl(format!("set the MAC of bridge {name}"), e))?;
        }
        self.ensure_address(link.index, gateway).await?;
        self.set_up(link.index).await?;
        Ok(link.index)
    }

    /// Creates the pod's veth pair: the host side `host_veth` on `bridge`,
    /// the pod side as `eth0` inside the pod's namespace with its address,
    /// MTU, loopback up and a default route via the gateway. Idempotent: an
    /// attachment interrupted half-way is completed.
    ///
    /// # Errors
    /// On bad names, a missing namespace or bridge, or netlink failure.
    pub async fn attach_veth(&self, att: &VethAttachment) -> Result<u32, NetlinkError> {
        check_ifname(&att.host_veth)?;
        let bridge = self.require_link(&att.bridge).await?;
        let ns_file = netns::open(&att.netns)?;
        let pod = Netlink::open(Some(&att.netns))?;

        let host = match self.link(&att.host_veth).await? {
            Some(l) if l.kind == "veth" => l,
            Some(l) => {
                return Err(NetlinkError::WrongKind {
                    name: att.host_veth.clone(),
                    found: l.kind,
                    wanted: "veth",
                });
            }
            None => {
                // A pod-side eth0 left from an interrupted attempt has lost its
                // peer only if the host side is gone; then it is already gone too
                // (deleting one end deletes both). Create both ends at once, the
                // peer directly inside the pod namespace, so no temporary name
                // ever appears on the node.
                let peer = LinkMessageBuilder::<LinkUnspec>::new()
                    .name("eth0")
                    .mtu(att.mtu)
                    .setns_by_fd(ns_file.as_raw_fd())
                    .build();
                let msg = LinkVeth::new(&att.host_veth, "eth0")
                    .mtu(att.mtu)
                    .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                    .build();
                match self.handle.link().add(msg).execute().await {
                    Ok(()) => {}
                    Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                    Err(e) => {
                        return Err(NetlinkError::nl(
                            format!("add veth {} <-> {}:eth0", att.host_veth, att.netns),
                            e,
                        ));
                    }
                }
                self.require_link(&att.host_veth).await?
            }
        };
        if host.controller != Some(bridge.index) {
            self.handle
                .link()
                .set(
                    LinkUnspec::new_with_index(host.index)
                        .controller(bridge.index)
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| NetlinkError::nl(format!("attach {} to bridge", att.host_veth), e))?;
        }
        self.set_up(host.index).await?;

        // Inside the pod.
        let lo = pod.require_link("lo").await?;
        pod.set_up(lo.index).await?;
        let eth0 = pod.require_link("eth0").await?;
        pod.ensure_address(eth0.index, att.address).await?;
        pod.set_up(eth0.index).await?;
        if let Some(gw) = att.gateway {
            let default = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .output_interface(eth0.index)
                .build();
            pod.add_route_idempotent(default, "default route").await?;
        }
        Ok(host.index)
    }

    /// Removes a pod's veth pair (both ends go together). Idempotent.
    ///
    /// # Errors
    /// On netlink failure.
    pub async fn detach_veth(&self, host_veth: &str) -> Result<(), NetlinkError> {
        check_ifname(host_veth)?;
        self.delete_link(host_veth).await
    }

    async fn add_route_idempotent(
        &self,
        msg: RouteMessage,
        what: &str,
    ) -> Result<(), NetlinkError> {
        match self.handle.route().add(msg).replace().execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(NetlinkError::nl(format!("add {what}"), e)),
        }
    }

    /// Weft-owned IPv4 routes in the main table: (destination, next hop).
    ///
    /// # Errors
    /// On netlink failure.
    pub async fn weft_routes(&self) -> Result<Vec<(RouteMessage, BlockRoute)>, NetlinkError> {
        let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(filter)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::nl("list routes", e))?;
        let mut out = Vec::new();
        for m in msgs {
            if m.header.protocol != RouteProtocol::Other(WEFT_ROUTE_PROTO) {
                continue;
            }
            let mut dst = None;
            let mut via = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => via = Some(*ip),
                    _ => {}
                }
            }
            if let (Some(dst), Some(via)) = (dst, via)
                && let Ok(block) = Ipv4Network::new(dst, m.header.destination_prefix_length)
            {
                out.push((m, BlockRoute { block, via }));
            }
        }
        Ok(out)
    }

    /// Makes the Weft-owned routes exactly `desired`: adds the missing ones,
    /// replaces changed next hops and removes the rest. `dev` names the
    /// interface the routes leave by (the uplink for host-gw, the VXLAN
    /// device for overlay); VXLAN next hops are on-link.
    ///
    /// # Errors
    /// On netlink failure.
    pub async fn sync_routes(
        &self,
        desired: &[BlockRoute],
        dev: &str,
        onlink: bool,
    ) -> Result<(), NetlinkError> {
        let out_if = self.require_link(dev).await?;
        let have = self.weft_routes().await?;
        let want: HashSet<BlockRoute> = desired.iter().copied().collect();
        for r in desired {
            if have.iter().any(|(_, h)| h == r) {
                continue;
            }
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(r.block.network(), r.block.prefix())
                .gateway(r.via)
                .output_interface(out_if.index)
                .protocol(RouteProtocol::Other(WEFT_ROUTE_PROTO));
            if onlink {
                b = b.onlink();
            }
            self.add_route_idempotent(b.build(), &format!("route {} via {}", r.block, r.via))
                .await?;
        }
        for (msg, r) in have {
            let replaced_in_place = want.iter().any(|w| w.block == r.block);
            if want.contains(&r) || replaced_in_place {
                continue;
            }
            match self.handle.route().del(msg).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::ESRCH) => {}
                Err(e) => {
                    return Err(NetlinkError::nl(format!("delete route {}", r.block), e));
                }
            }
        }
        Ok(())
    }

    /// Ensures the node's VXLAN device `name` (VNI `vni`, outer source
    /// `local` on `uplink`, no learning) holds the node's VTEP address and
    /// MAC, and that every peer has a neighbour entry (VTEP address → VTEP
    /// MAC) and an FDB entry (VTEP MAC → node address). Stale peers are
    /// removed. Routes to the peers' blocks go through [`Self::sync_routes`].
    ///
    /// # Errors
    /// On netlink failure or a wrong-kind device of that name.
    pub async fn ensure_vxlan(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        own_block: Ipv4Network,
        uplink: &str,
        peers: &[VxlanPeer],
    ) -> Result<u32, NetlinkError> {
        check_ifname(name)?;
        let up = self.require_link(uplink).await?;
        let mac = vtep_mac(local);
        let dev = match self.link(name).await? {
            Some(l) => l,
            None => {
                let msg = LinkVxlan::new(name, vni)
                    .dev(up.index)
                    .local(local)
                    .port(VXLAN_PORT)
                    .learning(false)
                    .address(mac.to_vec())
                    .mtu(up.mtu.saturating_sub(50).max(576))
                    .build();
                match self.handle.link().add(msg).execute().await {
                    Ok(()) => {}
                    Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                    Err(e) => return Err(NetlinkError::nl(format!("add vxlan {name}"), e)),
                }
                self.require_link(name).await?
            }
        };
        if dev.kind != "vxlan" {
            return Err(NetlinkError::WrongKind {
                name: name.to_string(),
                found: dev.kind,
                wanted: "vxlan",
            });
        }
        self.ensure_address(
            dev.index,
            Ipv4Network::new(vtep_addr(own_block), 32).expect("/32 is valid"),
        )
        .await?;
        self.set_up(dev.index).await?;
        for p in peers {
            let pmac = vtep_mac(p.node_ip);
            self.handle
                .neighbours()
                .add(dev.index, IpAddr::V4(vtep_addr(p.block)))
                .link_layer_address(&pmac)
                .replace()
                .execute()
                .await
                .map_err(|e| NetlinkError::nl(format!("add neighbour for {}", p.node_ip), e))?;
            self.handle
                .neighbours()
                .add_bridge(dev.index, &pmac)
                .destination(IpAddr::V4(p.node_ip))
                .flags(NeighbourFlags::Own)
                .replace()
                .execute()
                .await
                .map_err(|e| NetlinkError::nl(format!("add fdb entry for {}", p.node_ip), e))?;
        }
        // Remove neighbour/FDB entries of peers that left.
        let keep_macs: HashSet<[u8; 6]> = peers.iter().map(|p| vtep_mac(p.node_ip)).collect();
        let neigh: Vec<_> = self
            .handle
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::nl("list neighbours", e))?;
        for n in neigh {
            if n.header.ifindex != dev.index {
                continue;
            }
            let lla = n.attributes.iter().find_map(|a| match a {
                netlink_packet_route::neighbour::NeighbourAttribute::LinkLayerAddress(l) => {
                    <[u8; 6]>::try_from(l.as_slice()).ok()
                }
                _ => None,
            });
            let ours = matches!(lla, Some(m) if m[0] == 0x02 && m[1] == 0x57);
            if let Some(m) = lla
                && ours
                && !keep_macs.contains(&m)
                && matches!(n.header.family, AddressFamily::Inet | AddressFamily::Bridge)
            {
                let _ = self.handle.neighbours().del(n).execute().await;
            }
        }
        Ok(dev.index)
    }

    /// Lists addresses (IPv4) on the named link inside this namespace.
    ///
    /// # Errors
    /// On netlink failure or a missing link.
    pub async fn addresses(&self, name: &str) -> Result<Vec<Ipv4Network>, NetlinkError> {
        let l = self.require_link(name).await?;
        let msgs = self.link_addresses(l.index).await?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip))
                    | AddressAttribute::Address(IpAddr::V4(ip)) => {
                        Ipv4Network::new(*ip, m.header.prefix_len).ok()
                    }
                    _ => None,
                })
            })
            .collect())
    }

    /// Sets up `lo` (a new namespace has it down).
    ///
    /// # Errors
    /// On netlink failure.
    pub async fn loopback_up(&self) -> Result<(), NetlinkError> {
        let lo = self.require_link("lo").await?;
        self.set_up(lo.index).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_limits() {
        assert!(check_ifname("weft0").is_ok());
        assert!(check_ifname("abcdefghijklmno").is_ok()); // 15
        let e = check_ifname("abcdefghijklmnop").unwrap_err(); // 16
        assert!(e.to_string().contains("IFNAMSIZ"), "{e}");
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("a b").is_err());
    }

    #[test]
    fn bridge_macs_are_local_unicast_and_apart_from_vteps() {
        let gw = Ipv4Addr::new(10, 244, 1, 1);
        let m = bridge_mac(gw);
        assert_eq!(m[0] & 0x01, 0, "unicast");
        assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        assert_ne!(m, vtep_mac(gw));
        assert_ne!(m, bridge_mac(Ipv4Addr::new(10, 244, 2, 1)));
    }

    #[test]
    fn vtep_mac_is_local_unicast_and_unique() {
        let a = vtep_mac(Ipv4Addr::new(192, 0, 2, 11));
        let b = vtep_mac(Ipv4Addr::new(192, 0, 2, 12));
        assert_eq!(a[0] & 0x01, 0, "unicast");
        assert_eq!(a[0] & 0x02, 0x02, "locally administered");
        assert_ne!(a, b);
    }
}
