//! NetworkPolicy: the verdict on a packet entering or leaving a local pod.
//!
//! A pod with no entry in the endpoints map, or one without isolation
//! flags, is not under policy: its packets pass after one hash lookup and
//! nothing is tracked. For an isolated pod, a packet passes when it is part
//! of a flow allowed before (a reply included), when it goes to or comes
//! from the pod itself, when the node sends it (probes), or when one of the
//! pod's rules allows the peer's identity, protocol and port. The peer's
//! identities are its pod identity (by address), its ipBlock prefix
//! identity (longest prefix) and "any", so a verdict costs the same few
//! lookups however many policies and pods there are.

use crate::pkt;
use aya_ebpf::{
    bindings::{BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC},
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, lpm_trie::Key, lpm_trie::LpmTrie},
    programs::TcContext,
};
use weft_common::{
    DIR_EGRESS, DIR_INGRESS, ID_ANY, ID_HOST, MARK_SELF, POL_ALLOWED_MAX, POL_CIDRS_MAX,
    POL_CT_MAX, POL_EGRESS, POL_ENDPOINTS_MAX, POL_FRAGS_MAX, POL_IDENTITIES_MAX, POL_INGRESS,
    POL_OVERFLOW, POL_RULES_MAX, PROTO_SCTP, PROTO_TCP, PROTO_UDP, PolicyCounters, PolicyCtEntry,
    PolicyCtKey, PolicyEndpoint, PolicyFragKey, PolicyUse, RULE_BITS_PORT, RuleKey, RuleValue,
};

// Sizes are defaults: the agent sets the real ones at load time.
#[map(name = "WEFT_POL_ENDPOINTS")]
static ENDPOINTS: HashMap<u32, PolicyEndpoint> = HashMap::with_max_entries(POL_ENDPOINTS_MAX, 0);
#[map(name = "WEFT_POL_IDENTITIES")]
static IDENTITIES: HashMap<u32, u32> = HashMap::with_max_entries(POL_IDENTITIES_MAX, 0);
#[map(name = "WEFT_POL_CIDRS")]
static CIDRS: LpmTrie<u32, u32> = LpmTrie::with_max_entries(POL_CIDRS_MAX, BPF_F_NO_PREALLOC);
#[map(name = "WEFT_POL_RULES")]
static RULES: LpmTrie<RuleKey, RuleValue> =
    LpmTrie::with_max_entries(POL_RULES_MAX, BPF_F_NO_PREALLOC);
/// LRU lists per CPU: a new flow's insert takes no lock shared between CPUs.
#[map(name = "WEFT_POL_CT")]
static CT: LruHashMap<PolicyCtKey, PolicyCtEntry> =
    LruHashMap::with_max_entries(POL_CT_MAX, BPF_F_NO_COMMON_LRU);
/// Per CPU: counting never contends.
#[map(name = "WEFT_POL_ALLOWED")]
static ALLOWED: PerCpuHashMap<PolicyUse, u64> = PerCpuHashMap::with_max_entries(POL_ALLOWED_MAX, 0);
#[map(name = "WEFT_POL_FRAGS")]
static FRAGS: LruHashMap<PolicyFragKey, u64> =
    LruHashMap::with_max_entries(POL_FRAGS_MAX, BPF_F_NO_COMMON_LRU);
#[map(name = "WEFT_POL_COUNTERS")]
static COUNTERS: PerCpuArray<PolicyCounters> = PerCpuArray::with_max_entries(POL_ENDPOINTS_MAX, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const PROTO_ICMP: u8 = 1;
const NS_PER_SEC: u64 = 1_000_000_000;
/// A TCP flow silent this long is judged again at its next packet.
const CT_TCP_IDLE_NS: u64 = 3600 * NS_PER_SEC;
/// Other flows (UDP, SCTP, ICMP echo).
const CT_OTHER_IDLE_NS: u64 = 120 * NS_PER_SEC;
/// A fragmented datagram's later fragments come this soon after its first.
const FRAG_IDLE_NS: u64 = 2 * NS_PER_SEC;
/// A flow's timestamp is moved at most this often: a write per packet
/// would bounce the entry between CPUs.
const CT_REFRESH_NS: u64 = NS_PER_SEC;

/// What the policy looks at in a packet, addresses and ports as in it.
#[derive(Clone, Copy)]
pub struct PFlow {
    pub saddr: u32,
    pub daddr: u32,
    /// TCP, UDP and SCTP ports; ICMP echo: the identifier as source port of
    /// a request and destination port of a reply. 0 otherwise.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// A TCP SYN without ACK: a new connection, judged afresh even if its
    /// ports match an old flow.
    pub syn: bool,
    /// An ICMP error's quoted packet, as sent (proto 0: none). Not an
    /// `Option`: its uninitialised payload would reach the verifier.
    pub related: PolicyCtKey,
    /// [`FRAG_NONE`], [`FRAG_FIRST`] or [`FRAG_LATER`].
    pub frag: u8,
    /// The IP identification field (fragments).
    pub ip_id: u16,
}

/// Not a fragment.
pub const FRAG_NONE: u8 = 0;
/// The first fragment of a datagram (it carries the ports).
pub const FRAG_FIRST: u8 = 1;
/// A later fragment (no ports).
pub const FRAG_LATER: u8 = 2;

/// The other direction.
#[inline(always)]
fn opposite(dir: u8) -> u8 {
    if dir == DIR_INGRESS {
        DIR_EGRESS
    } else {
        DIR_INGRESS
    }
}

impl PFlow {
    /// The flow as allowed at hook `dir`.
    fn key(&self, dir: u8) -> PolicyCtKey {
        PolicyCtKey {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            dir,
            pad: [0; 2],
        }
    }

    /// The flow this packet answers, as the local pod allowed it at the
    /// other hook (a flow it sent, for a packet coming in).
    fn reverse(&self, dir: u8) -> PolicyCtKey {
        PolicyCtKey {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            dir: opposite(dir),
            pad: [0; 2],
        }
    }

    fn frag_key(&self, dir: u8) -> PolicyFragKey {
        PolicyFragKey {
            saddr: self.saddr,
            daddr: self.daddr,
            id: self.ip_id,
            proto: self.proto,
            dir,
        }
    }
}

/// No flow: the `related` of a packet that is no ICMP error.
pub const NO_FLOW: PolicyCtKey = PolicyCtKey {
    saddr: 0,
    daddr: 0,
    sport: 0,
    dport: 0,
    proto: 0,
    dir: 0,
    pad: [0; 2],
};

/// Ports of TCP, UDP and SCTP (the first four bytes of each header).
#[inline(always)]
fn has_ports(proto: u8) -> bool {
    proto == PROTO_TCP || proto == PROTO_UDP || proto == PROTO_SCTP
}

/// Parses any IPv4 packet from its headers (read once, [`pkt::headers`]),
/// reading its ports. `Err` for what is not IPv4 (ARP, IPv6): the policy
/// is IPv4's, as the cluster's pod addresses are.
#[inline(always)]
pub fn parse_headers(ctx: &TcContext, h: &[u8; pkt::HDR_LEN]) -> Result<PFlow, ()> {
    let h = *h;
    if pkt::be16(&h, 12) != ETH_P_IP {
        return Err(());
    }
    let vihl = h[ETH_HLEN];
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(());
    }
    let frag = pkt::be16(&h, ETH_HLEN + 6);
    let first = frag & 0x1fff == 0;
    let more = frag & 0x2000 != 0;
    let proto = h[ETH_HLEN + 9];
    let l4 = ETH_HLEN + ihl;
    let mut f = PFlow {
        saddr: pkt::raw32(&h, ETH_HLEN + 12),
        daddr: pkt::raw32(&h, ETH_HLEN + 16),
        sport: 0,
        dport: 0,
        proto,
        syn: false,
        related: NO_FLOW,
        frag: if !first {
            FRAG_LATER
        } else if more {
            FRAG_FIRST
        } else {
            FRAG_NONE
        },
        ip_id: pkt::be16(&h, ETH_HLEN + 4),
    };
    // Later fragments carry no port: they pass with their first fragment,
    // or by a rule for every port.
    if !first {
        return Ok(f);
    }
    if has_ports(proto) {
        // A first fragment too short for its ports is judged as port 0
        // (only a rule for every port lets it in), not waved through.
        if let Ok((sport, dport, flags, _)) = pkt::ports(ctx, l4, proto) {
            f.sport = sport;
            f.dport = dport;
            f.syn = proto == PROTO_TCP && flags & 0x12 == 0x02;
        }
    } else if proto == PROTO_ICMP {
        let ty: u8 = ctx.load(l4).map_err(|_| ())?;
        match ty {
            // Echo request and reply: the identifier pairs them.
            8 => f.sport = ctx.load(l4 + 4).unwrap_or(0),
            0 => f.dport = ctx.load(l4 + 4).unwrap_or(0),
            // Unreachable, time exceeded, parameter problem: about a packet
            // whose header (and first 8 bytes) follow.
            3 | 11 | 12 => f.related = quoted(ctx, l4 + 8).unwrap_or(NO_FLOW),
            _ => {}
        }
    }
    Ok(f)
}

/// The flow of the packet an ICMP error quotes, at `off`.
#[inline(always)]
fn quoted(ctx: &TcContext, off: usize) -> Option<PolicyCtKey> {
    let vihl: u8 = ctx.load(off).ok()?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 || ihl > 60 {
        return None;
    }
    let proto: u8 = ctx.load(off + 9).ok()?;
    let mut k = PolicyCtKey {
        saddr: ctx.load(off + 12).ok()?,
        daddr: ctx.load(off + 16).ok()?,
        sport: 0,
        dport: 0,
        proto,
        dir: 0,
        pad: [0; 2],
    };
    if has_ports(proto) {
        k.sport = ctx.load(off + ihl).ok()?;
        k.dport = ctx.load(off + ihl + 2).ok()?;
    }
    Some(k)
}

/// Whether `key` is a flow allowed earlier and not idle for too long; its
/// timestamp is moved on.
#[inline(always)]
fn tracked(key: &PolicyCtKey, now: u64) -> bool {
    let Some(e) = CT.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: map value; racing writers only move a timestamp.
    let e = unsafe { &mut *e };
    let idle = now.wrapping_sub(e.last_seen);
    let limit = if key.proto == PROTO_TCP {
        CT_TCP_IDLE_NS
    } else {
        CT_OTHER_IDLE_NS
    };
    if idle > limit {
        return false;
    }
    if idle > CT_REFRESH_NS {
        e.last_seen = now;
    }
    true
}

#[derive(Clone, Copy)]
enum Count {
    Denied,
    Allowed,
}

#[inline(always)]
fn bump(endpoint: u32, dir: u8, what: Count) {
    if let Some(c) = COUNTERS.get_ptr_mut(endpoint) {
        // SAFETY: per-CPU value, written only by this CPU during this call.
        let c = unsafe { &mut *c };
        match (dir == DIR_INGRESS, what) {
            (true, Count::Denied) => c.ingress_denied += 1,
            (false, Count::Denied) => c.egress_denied += 1,
            (true, Count::Allowed) => c.ingress_allowed += 1,
            (false, Count::Allowed) => c.egress_allowed += 1,
        }
    }
}

/// The policy whose rule of `endpoint` for `dir` allows `peer` (its
/// identities) at the packet's protocol and destination port, if any.
#[inline(always)]
fn rule_allows(endpoint: u32, dir: u8, peer_addr: u32, pod: Option<u32>, f: &PFlow) -> Option<u32> {
    let lookup = |peer: u32| {
        let key = Key::new(
            RULE_BITS_PORT,
            RuleKey {
                endpoint,
                peer,
                dir,
                proto: f.proto,
                port: f.dport,
            },
        );
        RULES.get(&key).map(|v| v.policy)
    };
    if let Some(id) = pod
        && let Some(p) = lookup(id)
    {
        return Some(p);
    }
    // SAFETY: copied out at once.
    if let Some(id) = CIDRS.get(&Key::new(32, peer_addr)).copied()
        && let Some(p) = lookup(id)
    {
        return Some(p);
    }
    lookup(ID_ANY)
}

/// One more new flow let through by `policy`'s rules for `endpoint`.
#[inline(always)]
fn count_use(endpoint: u32, policy: u32) {
    let key = PolicyUse { endpoint, policy };
    if let Some(c) = ALLOWED.get_ptr_mut(&key) {
        // SAFETY: per-CPU value, written only by this CPU during this call.
        unsafe { *c += 1 };
        return;
    }
    // A full map loses the count, never the flow.
    let _ = ALLOWED.insert(&key, &1, 0);
}

/// Lets `f` pass: the first fragment of a datagram opens the way for the
/// others.
#[inline(always)]
fn pass(f: &PFlow, dir: u8, now: u64) -> bool {
    if f.frag == FRAG_FIRST {
        let _ = FRAGS.insert(&f.frag_key(dir), &now, 0);
    }
    true
}

/// Whether a later fragment's first fragment passed at this hook.
#[inline(always)]
fn first_passed(f: &PFlow, dir: u8, now: u64) -> bool {
    // SAFETY: copied out at once.
    match unsafe { FRAGS.get(&f.frag_key(dir)) } {
        Some(t) => now.wrapping_sub(*t) < FRAG_IDLE_NS,
        None => false,
    }
}

/// The verdict on `f` crossing a local pod's veth in `dir`: true lets it
/// pass. Flows of isolated pods that pass are tracked, so that their
/// replies pass too.
#[inline(always)]
pub fn judge(f: &PFlow, dir: u8) -> bool {
    let (local, peer) = if dir == DIR_INGRESS {
        (f.daddr, f.saddr)
    } else {
        (f.saddr, f.daddr)
    };
    // SAFETY: copied out at once.
    let Some(ep) = (unsafe { ENDPOINTS.get(&local) }).copied() else {
        return true;
    };
    if ep.flags & (POL_INGRESS | POL_EGRESS) == 0 {
        return true;
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if f.frag == FRAG_LATER && first_passed(f, dir, now) {
        return true;
    }
    if tracked(&f.reverse(dir), now) {
        return pass(f, dir, now);
    }
    let key = f.key(dir);
    if !f.syn && tracked(&key, now) {
        return pass(f, dir, now);
    }
    // An ICMP error about a packet: the packet went the other way.
    if f.related.proto != 0 {
        let mut q = f.related;
        q.dir = opposite(dir);
        if tracked(&q, now) {
            return true;
        }
    }
    let isolated = ep.flags
        & if dir == DIR_INGRESS {
            POL_INGRESS
        } else {
            POL_EGRESS
        }
        != 0;
    if isolated {
        // SAFETY: copied out at once.
        let pod = unsafe { IDENTITIES.get(&peer) }.copied();
        let mut allowed = local == peer || (dir == DIR_INGRESS && pod == Some(ID_HOST));
        if !allowed
            && ep.flags & POL_OVERFLOW == 0
            && let Some(policy) = rule_allows(ep.id, dir, peer, pod, f)
        {
            count_use(ep.id, policy);
            allowed = true;
        }
        if !allowed {
            bump(ep.id, dir, Count::Denied);
            return false;
        }
        bump(ep.id, dir, Count::Allowed);
    }
    let _ = CT.insert(&key, &PolicyCtEntry { last_seen: now }, 0);
    pass(f, dir, now)
}

/// The policy's view of a TCP or UDP packet the load-balancer parsed,
/// going to `daddr:dport` (its backend, once translated).
#[inline(always)]
pub fn from_flow(f: &pkt::Flow, daddr: u32, dport: u16) -> PFlow {
    PFlow {
        saddr: f.saddr,
        daddr,
        sport: f.sport,
        dport,
        proto: f.proto,
        syn: pkt::is_syn(f),
        related: NO_FLOW,
        // `pkt::parse` takes no later fragment.
        frag: if f.more_frags { FRAG_FIRST } else { FRAG_NONE },
        ip_id: f.ip_id,
    }
}

/// A packet a pod sends that the load-balancer did not handle (not TCP or
/// UDP): its egress verdict. `h`: its headers (`None`: too short to be
/// IPv4).
#[inline(always)]
pub fn egress_raw(ctx: &TcContext, h: Option<&[u8; pkt::HDR_LEN]>) -> bool {
    match h.map(|h| parse_headers(ctx, h)) {
        Some(Ok(f)) => judge(&f, DIR_EGRESS),
        _ => true,
    }
}

/// A packet delivered to a pod: its ingress verdict. A pod's own packet
/// turned back to it by the load-balancer passes. `h`: its headers
/// (`None`: too short to be IPv4); `flow`: its TCP or UDP header when it
/// has one.
#[inline(always)]
pub fn ingress(ctx: &TcContext, h: Option<&[u8; pkt::HDR_LEN]>, flow: Option<&pkt::Flow>) -> bool {
    // SAFETY: the skb of this invocation.
    if unsafe { (*ctx.skb.skb).mark } == MARK_SELF {
        return true;
    }
    if let Some(f) = flow {
        return judge(&from_flow(f, f.daddr, f.dport), DIR_INGRESS);
    }
    match h.map(|h| parse_headers(ctx, h)) {
        Some(Ok(f)) => judge(&f, DIR_INGRESS),
        _ => true,
    }
}

/// Marks a packet as the pod's own, turned back to it.
#[inline(always)]
pub fn mark_self(ctx: &TcContext) {
    // SAFETY: the skb of this invocation; tc programs may write its mark.
    unsafe { (*ctx.skb.skb).mark = MARK_SELF };
}
