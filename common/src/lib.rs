//! Map layouts shared by the eBPF programs (`weft-ebpf`) and the agent.
//!
//! Every type here is `#[repr(C)]`, `Copy`, and free of padding surprises, so the
//! kernel side and the userspace side agree byte for byte. Nothing else lives
//! here: no logic, no allocation (`no_std`).
#![no_std]

/// Per-interface traffic counters kept by the `weft_count` tc programs.
///
/// Keyed by the host-side interface index of a pod's veth. "ingress" and
/// "egress" are from the pod's point of view: packets the pod sent enter the
/// host on the veth's ingress hook, so they count as the pod's `tx`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfCounters {
    /// Packets sent by the pod.
    pub tx_packets: u64,
    /// Bytes sent by the pod.
    pub tx_bytes: u64,
    /// Packets delivered to the pod.
    pub rx_packets: u64,
    /// Bytes delivered to the pod.
    pub rx_bytes: u64,
}

#[cfg(feature = "user")]
// SAFETY: plain old data, repr(C), every bit pattern valid.
unsafe impl aya::Pod for IfCounters {}

/// Name of the per-CPU hash map holding [`IfCounters`] keyed by ifindex (`u32`).
pub const IF_COUNTERS_MAP: &str = "WEFT_IF_COUNTERS";
/// Maximum number of interfaces the counters map tracks per node.
pub const IF_COUNTERS_MAX: u32 = 4096;

// ---------------------------------------------------------------------------
// Anti-spoofing: what a pod may send as (the `weft_from_pod` program).

/// A pod's own addresses, keyed in [`POD_ADDRS_MAP`] by the ifindex of its
/// veth's host side: a frame from the pod must carry this source MAC, an
/// IPv4 packet this source address, an ARP message both as its sender.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodAddr {
    /// IPv4 address, network order.
    pub ip: u32,
    /// The MAC of the pod's eth0.
    pub mac: [u8; 6],
    /// Padding (zero).
    pub pad: [u8; 2],
}

#[cfg(feature = "user")]
// SAFETY: plain old data, repr(C), every bit pattern valid.
unsafe impl aya::Pod for PodAddr {}

/// Frames a pod sent with addresses not its own, dropped, by what was
/// forged; per CPU, keyed in [`SPOOFED_MAP`] by the host veth's ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoofCounters {
    /// A source MAC not the pod's.
    pub mac: u64,
    /// An IPv4 source address not the pod's.
    pub ip: u64,
    /// An ARP message whose sender is not the pod.
    pub arp: u64,
    /// Neither IPv4 nor ARP (IPv6, neighbour discovery, VLAN tags...).
    pub other: u64,
}

#[cfg(feature = "user")]
// SAFETY: plain old data, repr(C), every bit pattern valid.
unsafe impl aya::Pod for SpoofCounters {}

/// A pod's DNS token bucket (UDP to port 53), keyed in [`DNS_BUCKETS_MAP`]
/// by the host veth's ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsBucket {
    /// Tokens left, in thousandths of a query.
    pub milli_tokens: u64,
    /// When it was last filled (bpf_ktime_get_ns).
    pub last_ns: u64,
    /// Queries dropped for want of a token.
    pub dropped: u64,
}

#[cfg(feature = "user")]
// SAFETY: plain old data, repr(C), every bit pattern valid.
unsafe impl aya::Pod for DnsBucket {}

/// The DNS rate limit, index 0 of [`DNS_LIMIT_MAP`]: queries per second
/// per pod and the burst; a rate of 0 turns it off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsLimit {
    /// Queries per second a pod may send.
    pub rate: u32,
    /// Queries it may send at once after a quiet while.
    pub burst: u32,
}

#[cfg(feature = "user")]
// SAFETY: plain old data, repr(C), every bit pattern valid.
unsafe impl aya::Pod for DnsLimit {}

/// Name of the hash map of [`DnsBucket`] by ifindex (`u32`).
pub const DNS_BUCKETS_MAP: &str = "WEFT_DNS_BUCKETS";
/// Name of the one-entry array holding the [`DnsLimit`].
pub const DNS_LIMIT_MAP: &str = "WEFT_DNS_LIMIT";

/// Name of the hash map of [`PodAddr`] by host veth ifindex (`u32`).
pub const POD_ADDRS_MAP: &str = "WEFT_POD_ADDRS";
/// Name of the per-CPU hash map of [`SpoofCounters`] by ifindex (`u32`).
pub const SPOOFED_MAP: &str = "WEFT_SPOOFED";
/// Pod veths a node guards (as many as it counts).
pub const POD_ADDRS_MAX: u32 = IF_COUNTERS_MAX;

// ---------------------------------------------------------------------------
// Service load-balancing (the `weft_lb_*` programs).
//
// Addresses and ports are kept in network byte order, as the programs read
// them from packets and socket contexts; the agent converts.

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IP protocol number of SCTP (judged by NetworkPolicy, not load-balanced).
pub const PROTO_SCTP: u8 = 132;

/// A frontend: a ClusterIP (or external IP) with a port, or a NodePort.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// VIP, or 0 for a NodePort (any of the node's addresses).
    pub addr: u32,
    /// Port, network order.
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`SCOPE_CLUSTER`] or [`SCOPE_NODEPORT`].
    pub scope: u8,
}

/// Frontend reached at a VIP.
pub const SCOPE_CLUSTER: u8 = 0;
/// Frontend reached at a node address and a node port.
pub const SCOPE_NODEPORT: u8 = 1;

/// `ServiceEntry::flags`: ClientIP session affinity.
pub const SVC_AFFINITY: u16 = 1;

/// What a frontend leads to: its Maglev table, a range of [`LB_MAGLEV_MAP`].
///
/// The agent writes a new table into a free range and then replaces this
/// entry in one map update, so a program sees either the old or the new
/// table, never a half-written one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Index into the per-service counters; unique per frontend.
    pub id: u32,
    /// Backends that take new connections (0: refuse them).
    pub active: u16,
    /// `SVC_*` flags.
    pub flags: u16,
    /// Session affinity timeout, seconds.
    pub affinity_timeout: u32,
    /// First slot of the Maglev table in [`LB_MAGLEV_MAP`].
    pub table_offset: u32,
    /// Number of slots (a prime; 0 when `active` is 0).
    pub table_size: u32,
}

/// A backend, indexed by its id in [`LB_BACKENDS_MAP`] (id 0 is never used).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Pod address (0: the slot is free).
    pub addr: u32,
    /// Target port, network order.
    pub port: u16,
    /// [`BACKEND_ACTIVE`] or [`BACKEND_TERMINATING`].
    pub state: u8,
    /// Padding.
    pub pad: u8,
}

/// Takes new connections.
pub const BACKEND_ACTIVE: u8 = 1;
/// Keeps its established connections, takes no new ones.
pub const BACKEND_TERMINATING: u8 = 2;

/// A connection-tracking key: one direction of a flow, as seen in packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Source address.
    pub saddr: u32,
    /// Destination address.
    pub daddr: u32,
    /// Source port, network order.
    pub sport: u16,
    /// Destination port, network order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`CT_FORWARD`] (client to frontend) or [`CT_REPLY`] (backend to client).
    pub dir: u8,
    /// Padding.
    pub pad: u16,
}

/// Client to frontend, before translation.
pub const CT_FORWARD: u8 = 0;
/// Backend to client, before reverse translation.
pub const CT_REPLY: u8 = 1;

/// `CtEntry::flags`: the client is its own backend; its source was
/// rewritten to the frontend address so that the reply comes back here.
pub const CT_HAIRPIN: u8 = 1;
/// `CtEntry::flags`: NodePort traffic sent on to another node with the
/// node's address as source.
pub const CT_SNAT: u8 = 2;
/// `CtEntry::flags`: a NodePort flow (its replies leave by the uplink).
pub const CT_NODEPORT: u8 = 4;
/// `CtEntry::flags`: a FIN or RST was seen; the entry's SNAT port may be
/// given to a new flow once the flow has been quiet for a moment.
pub const CT_CLOSING: u8 = 8;

/// A tracked flow. For [`CT_FORWARD`] the backend it was given; for
/// [`CT_REPLY`] the addresses to restore.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// Backend id (forward entries).
    pub backend: u32,
    /// Backend address when chosen: a reused id does not inherit the flow.
    pub backend_addr: u32,
    /// Frontend address (reply: the source to put back).
    pub front_addr: u32,
    /// Client address (reply: the destination to put back).
    pub client_addr: u32,
    /// Frontend port, network order.
    pub front_port: u16,
    /// Client port, network order.
    pub client_port: u16,
    /// Backend port, network order (forward entries).
    pub backend_port: u16,
    /// Source port given to a [`CT_SNAT`] flow, network order.
    pub nat_port: u16,
    /// `CT_*` flags.
    pub flags: u8,
    /// Padding.
    pub pad: [u8; 3],
    /// Service counters index.
    pub service: u32,
    /// Last packet, `bpf_ktime_get_ns` (monotonic, boot-based).
    pub last_seen: u64,
}

/// Session affinity: which backend a client was last given for a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// Service id.
    pub service: u32,
    /// Padding.
    pub pad: u32,
    /// The client: its IPv4 address from packets, or its network
    /// namespace cookie on the socket path (all of a pod's sockets share it).
    pub client: u64,
}

/// The affinity's backend and when it was last used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityEntry {
    /// Backend id.
    pub backend: u32,
    /// Backend address when chosen.
    pub backend_addr: u32,
    /// `bpf_ktime_get_ns` of the last use.
    pub last_used: u64,
}

/// Socket-level translation, for replies (`recvmsg`, `getpeername`) and for
/// unconnected UDP sockets that send to a VIP again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// Socket cookie.
    pub cookie: u64,
    /// Forward: the frontend address. Reply: the backend address.
    pub addr: u32,
    /// Forward: frontend port. Reply: backend port. Network order.
    pub port: u16,
    /// [`CT_FORWARD`] or [`CT_REPLY`].
    pub dir: u8,
    /// Padding.
    pub pad: u8,
}

/// The other side of a [`SockKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockEntry {
    /// Forward: the backend address. Reply: the frontend address.
    pub addr: u32,
    /// Port, network order.
    pub port: u16,
    /// Padding.
    pub pad: u16,
    /// Backend id (forward entries).
    pub backend: u32,
}

/// Per-service counters (per CPU; the agent sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCounters {
    /// Packets translated by the tc programs.
    pub packets: u64,
    /// Bytes translated by the tc programs.
    pub bytes: u64,
    /// New connections (tc flows and translated sockets).
    pub connections: u64,
    /// Connections refused because no backend was ready.
    pub refused: u64,
    /// NodePort connections dropped: no free source port towards their
    /// backend on another node.
    pub dropped: u64,
}

/// Node facts the programs need, in [`LB_CONFIG_MAP`] slot 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbConfig {
    /// The node's address on the uplink (NodePort, SNAT).
    pub node_addr: u32,
    /// Ifindex of the uplink.
    pub uplink_ifindex: u32,
    /// First port used for NodePort SNAT, host order.
    pub snat_port_min: u16,
    /// Last port used for NodePort SNAT, host order.
    pub snat_port_max: u16,
    /// The node's pod block (network address): backends in it are local.
    pub block_addr: u32,
    /// The block's netmask, network order.
    pub block_mask: u32,
    /// Padding.
    pub pad: u32,
    /// Cookie of the node's network namespace (0: unknown): sockets there
    /// have no pod veth behind them.
    pub node_netns: u64,
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY (all): plain old data, repr(C), explicit padding, every bit
    // pattern valid.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceEntry {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityEntry {}
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for SockEntry {}
    unsafe impl aya::Pod for ServiceCounters {}
    unsafe impl aya::Pod for LbConfig {}
}

/// Frontends: [`ServiceKey`] → [`ServiceEntry`] (hash).
pub const LB_SERVICES_MAP: &str = "WEFT_LB_SERVICES";
/// Backends by id: array of [`Backend`].
pub const LB_BACKENDS_MAP: &str = "WEFT_LB_BACKENDS";
/// All Maglev tables, back to back: array of backend ids (`u32`), mmapable.
pub const LB_MAGLEV_MAP: &str = "WEFT_LB_MAGLEV";
/// Connection tracking: [`CtKey`] → [`CtEntry`] (LRU hash).
pub const LB_CT_MAP: &str = "WEFT_LB_CT";

/// What the programs did to the connection-tracking map, per CPU (index 0
/// of [`LB_CT_STATS_MAP`]): entries made and removed. The LRU map evicts
/// silently when full; what is neither removed nor present was evicted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtStats {
    /// Entries made (not ones updated in place).
    pub inserted: u64,
    /// Entries the programs removed.
    pub removed: u64,
}

#[cfg(feature = "user")]
// SAFETY: plain old data, repr(C), every bit pattern valid.
unsafe impl aya::Pod for CtStats {}

/// Name of the per-CPU one-entry array of [`CtStats`].
pub const LB_CT_STATS_MAP: &str = "WEFT_LB_CT_STATS";
/// Session affinity: [`AffinityKey`] → [`AffinityEntry`] (LRU hash).
pub const LB_AFFINITY_MAP: &str = "WEFT_LB_AFFINITY";
/// Socket translations: [`SockKey`] → [`SockEntry`] (LRU hash).
pub const LB_SOCK_MAP: &str = "WEFT_LB_SOCK";
/// Per-service counters: per-CPU array of [`ServiceCounters`] by service id.
pub const LB_COUNTERS_MAP: &str = "WEFT_LB_COUNTERS";
/// Node facts: array of one [`LbConfig`].
pub const LB_CONFIG_MAP: &str = "WEFT_LB_CONFIG";

/// Default sizes; the agent's flags change them.
pub const LB_SERVICES_MAX: u32 = 65_536;
/// Default number of backends.
pub const LB_BACKENDS_MAX: u32 = 65_536;
/// Default number of Maglev slots over all services: 2 Mi slots, 16 MiB
/// (the kernel keeps array elements 8-byte aligned).
pub const LB_MAGLEV_MAX: u32 = 2 * 1024 * 1024;
/// Default connection-tracking entries.
pub const LB_CT_MAX: u32 = 262_144;
/// Default affinity entries.
pub const LB_AFFINITY_MAX: u32 = 65_536;
/// Default socket translation entries.
pub const LB_SOCK_MAX: u32 = 262_144;

/// Mixes a flow's addresses and ports into the Maglev slot hash. Shared by
/// the tc programs and `weft lb trace`, which must agree on every slot.
#[inline(always)]
#[must_use]
pub fn flow_hash(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    let h = mix64((u64::from(saddr) << 32) | u64::from(daddr));
    let h = mix64(h ^ (u64::from(sport) << 24 | u64::from(dport) << 8 | u64::from(proto)));
    (h ^ (h >> 32)) as u32
}

/// The Maglev slot hash of a socket on the connect-time path: its cookie is
/// unique per socket, so sockets spread like flows do.
#[inline(always)]
#[must_use]
pub fn cookie_hash(cookie: u64) -> u32 {
    let h = mix64(cookie);
    (h ^ (h >> 32)) as u32
}

/// A 64-bit finalizer (splitmix64's): every input bit moves every output bit.
#[inline(always)]
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------
// NetworkPolicy (the policy part of the pod programs).
//
// A peer's identity is a number: the same for every pod with the same
// namespace, labels and named ports; one per prefix of the ipBlocks in use;
// a few reserved ones below. A local pod's rules are entries of one LPM
// trie whose keys start with the pod's endpoint number, so each pod has its
// own part of the trie and a lookup never walks another pod's rules.

/// The peer wildcard of a rule key: a rule with no peers (any address).
pub const ID_ANY: u32 = 0;
/// The node's own addresses: the node always reaches its pods (probes).
pub const ID_HOST: u32 = 1;
/// An address that is no pod's and in no ipBlock prefix.
pub const ID_WORLD: u32 = 2;
/// First identity given to pods.
pub const ID_POD_MIN: u32 = 256;
/// First identity given to ipBlock prefixes (pods' stay below).
pub const ID_CIDR_MIN: u32 = 1 << 24;

/// [`PolicyEndpoint::flags`]: some policy selects the pod for ingress.
pub const POL_INGRESS: u32 = 1;
/// [`PolicyEndpoint::flags`]: some policy selects the pod for egress.
pub const POL_EGRESS: u32 = 2;
/// [`PolicyEndpoint::flags`]: its rules did not fit in the maps; it is
/// isolated as its flags say and nothing but replies pass (fail closed).
pub const POL_OVERFLOW: u32 = 4;

/// Rule direction: traffic into the pod.
pub const DIR_INGRESS: u8 = 0;
/// Rule direction: traffic out of the pod.
pub const DIR_EGRESS: u8 = 1;

/// A pod of this node under policy, by its address in [`POL_ENDPOINTS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyEndpoint {
    /// Endpoint number: the first field of its rule keys and its index in
    /// [`POL_COUNTERS_MAP`].
    pub id: u32,
    /// `POL_*` flags.
    pub flags: u32,
}

/// The data of a rule key in [`POL_RULES_MAP`] (behind the trie's prefix
/// length). Matching runs over the bytes in order: endpoint, peer and
/// direction always whole; then the protocol (a rule for all protocols
/// stops before it); then the port, whose leading bits are a port range.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    /// Endpoint number of the local pod.
    pub endpoint: u32,
    /// Peer identity ([`ID_ANY`] for any peer).
    pub peer: u32,
    /// [`DIR_INGRESS`] or [`DIR_EGRESS`].
    pub dir: u8,
    /// IP protocol.
    pub proto: u8,
    /// Port, network order (its bytes big-endian, as in packets).
    pub port: u16,
}

/// Prefix bits of a rule for every protocol and port.
pub const RULE_BITS_ANY_PROTO: u32 = 72;
/// Prefix bits of a rule for every port of one protocol.
pub const RULE_BITS_ANY_PORT: u32 = 80;
/// Prefix bits of a rule for one port.
pub const RULE_BITS_PORT: u32 = 96;

/// What a rule entry holds: the policy that allows, for attribution.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleValue {
    /// The agent's number for the policy.
    pub policy: u32,
}

/// A flow as the policy tracks it, addresses and ports as in packets, and
/// the hook that allowed it: a flow a pod sent (egress) is the sender's,
/// never the receiver's, even when both are on one node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyCtKey {
    /// Source address.
    pub saddr: u32,
    /// Destination address.
    pub daddr: u32,
    /// Source port (ICMP echo: the identifier).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`DIR_INGRESS`] (the receiver allowed it) or [`DIR_EGRESS`] (the sender).
    pub dir: u8,
    /// Padding.
    pub pad: [u8; 2],
}

/// An IP datagram in fragments whose first fragment was allowed: its later
/// fragments carry no ports, so they pass by this.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyFragKey {
    /// Source address.
    pub saddr: u32,
    /// Destination address.
    pub daddr: u32,
    /// The IP identification field.
    pub id: u16,
    /// IP protocol.
    pub proto: u8,
    /// The hook that allowed the first fragment.
    pub dir: u8,
}

/// A tracked flow: allowed when it started, its replies pass.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyCtEntry {
    /// `bpf_ktime_get_ns` of the last packet seen (moved at most once a second).
    pub last_seen: u64,
}

/// A policy's rule at work for a local pod: the key of the per-policy
/// counters in [`POL_ALLOWED_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyUse {
    /// Endpoint number of the local pod.
    pub endpoint: u32,
    /// The agent's number for the policy.
    pub policy: u32,
}

/// Per-endpoint counters (per CPU; the agent sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyCounters {
    /// Packets into the pod denied by its ingress isolation.
    pub ingress_denied: u64,
    /// Packets from the pod denied by its egress isolation.
    pub egress_denied: u64,
    /// New flows into the pod that a rule allowed.
    pub ingress_allowed: u64,
    /// New flows from the pod that a rule allowed.
    pub egress_allowed: u64,
}

#[cfg(feature = "user")]
mod policy_pod_impls {
    use super::*;
    // SAFETY (all): plain old data, repr(C), explicit padding.
    unsafe impl aya::Pod for PolicyEndpoint {}
    unsafe impl aya::Pod for RuleKey {}
    unsafe impl aya::Pod for RuleValue {}
    unsafe impl aya::Pod for PolicyCtKey {}
    unsafe impl aya::Pod for PolicyCtEntry {}
    unsafe impl aya::Pod for PolicyFragKey {}
    unsafe impl aya::Pod for PolicyUse {}
    unsafe impl aya::Pod for PolicyCounters {}
}

/// Local pods under policy: pod address (`u32`) → [`PolicyEndpoint`] (hash).
pub const POL_ENDPOINTS_MAP: &str = "WEFT_POL_ENDPOINTS";
/// Pods' identities: pod address (`u32`) → identity (`u32`) (hash); the
/// node's own addresses have [`ID_HOST`].
pub const POL_IDENTITIES_MAP: &str = "WEFT_POL_IDENTITIES";
/// ipBlock prefixes: LPM trie of addresses (`u32`, network order) → identity.
pub const POL_CIDRS_MAP: &str = "WEFT_POL_CIDRS";
/// Rules: LPM trie of [`RuleKey`] → [`RuleValue`].
pub const POL_RULES_MAP: &str = "WEFT_POL_RULES";
/// Flows allowed under policy: [`PolicyCtKey`] → [`PolicyCtEntry`] (LRU hash).
pub const POL_CT_MAP: &str = "WEFT_POL_CT";
/// New flows each policy's rules let in or out, per local pod:
/// [`PolicyUse`] → count (per-CPU hash).
pub const POL_ALLOWED_MAP: &str = "WEFT_POL_ALLOWED";
/// (pod, policy) pairs counted.
pub const POL_ALLOWED_MAX: u32 = 65_536;
/// Datagrams in fragments: [`PolicyFragKey`] → `bpf_ktime_get_ns` (LRU hash).
pub const POL_FRAGS_MAP: &str = "WEFT_POL_FRAGS";
/// Datagrams in fragments tracked at once.
pub const POL_FRAGS_MAX: u32 = 8192;
/// Per-endpoint counters: per-CPU array of [`PolicyCounters`].
pub const POL_COUNTERS_MAP: &str = "WEFT_POL_COUNTERS";

/// Default sizes; the agent's flags change them.
pub const POL_ENDPOINTS_MAX: u32 = 4096;
/// Default number of pod addresses with an identity (the whole cluster).
pub const POL_IDENTITIES_MAX: u32 = 65_536;
/// Default number of ipBlock prefixes.
pub const POL_CIDRS_MAX: u32 = 16_384;
/// Default number of rule entries over all local pods.
pub const POL_RULES_MAX: u32 = 262_144;
/// Default number of tracked flows.
pub const POL_CT_MAX: u32 = 262_144;

/// The `skb->mark` the load-balancer puts on a pod's packet turned back to
/// itself (hairpin), so that the pod's own ingress lets it in: a pod always
/// reaches itself.
pub const MARK_SELF: u32 = 0x5746_0001;
