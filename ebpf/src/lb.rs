//! Service load-balancing: backend choice (connection tracking, then
//! session affinity, then the service's Maglev table), translation on the
//! socket path and on the packet path.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{SockAddrContext, TcContext},
};
use weft_common::{
    AffinityEntry, AffinityKey, BACKEND_ACTIVE, Backend, CT_CLOSING, CT_FORWARD, CT_HAIRPIN,
    CT_NODEPORT, CT_REPLY, CT_SNAT, CtEntry, CtKey, CtStats, LB_AFFINITY_MAX, LB_BACKENDS_MAX,
    LB_CT_MAX, LB_MAGLEV_MAX, LB_SERVICES_MAX, LB_SOCK_MAX, LbConfig, PROTO_TCP, PROTO_UDP,
    SCOPE_CLUSTER, SCOPE_NODEPORT, SVC_AFFINITY, ServiceCounters, ServiceEntry, ServiceKey,
    SockEntry, SockKey, cookie_hash, flow_hash,
};

use crate::{
    pkt::{self, Flow},
    policy,
};

/// The egress verdict on a pod's packet as it will leave: to `daddr:dport`.
#[inline(always)]
fn egress_ok(f: &Flow, daddr: u32, dport: u16) -> bool {
    policy::judge(&policy::from_flow(f, daddr, dport), weft_common::DIR_EGRESS)
}

// Sizes are defaults: the agent sets the real ones at load time.
#[map(name = "WEFT_LB_SERVICES")]
static SERVICES: HashMap<ServiceKey, ServiceEntry> = HashMap::with_max_entries(LB_SERVICES_MAX, 0);
#[map(name = "WEFT_LB_BACKENDS")]
static BACKENDS: Array<Backend> = Array::with_max_entries(LB_BACKENDS_MAX, 0);
/// Mmapable so that the agent writes a whole table with one copy.
#[map(name = "WEFT_LB_MAGLEV")]
static MAGLEV: Array<u32> = Array::with_max_entries(LB_MAGLEV_MAX, BPF_F_MMAPABLE);
#[map(name = "WEFT_LB_CT")]
static CT: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(LB_CT_MAX, 0);
#[map(name = "WEFT_LB_AFFINITY")]
static AFFINITY: LruHashMap<AffinityKey, AffinityEntry> =
    LruHashMap::with_max_entries(LB_AFFINITY_MAX, 0);
#[map(name = "WEFT_LB_SOCK")]
static SOCK: LruHashMap<SockKey, SockEntry> = LruHashMap::with_max_entries(LB_SOCK_MAX, 0);
#[map(name = "WEFT_LB_CT_STATS")]
static CT_STATS: PerCpuArray<CtStats> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "WEFT_LB_COUNTERS")]
static COUNTERS: PerCpuArray<ServiceCounters> = PerCpuArray::with_max_entries(LB_SERVICES_MAX, 0);
#[map(name = "WEFT_LB_CONFIG")]
static CONFIG: Array<LbConfig> = Array::with_max_entries(1, 0);

const ECONNREFUSED: i32 = 111;
const AF_INET: u32 = 2;
const NS_PER_SEC: u64 = 1_000_000_000;

#[derive(Clone, Copy)]
enum Counter {
    Connection,
    Refused,
    Dropped,
}

/// Source ports tried for a NodePort flow sent on to another node.
const SNAT_TRIES: u32 = 8;
/// A closed flow's source port is given again after this long (its last
/// packets, retransmitted FINs, have passed by then).
const SNAT_CLOSED_REUSE_NS: u64 = 2 * NS_PER_SEC;
/// A flow silent this long (a UDP exchange, a connection that vanished
/// without FIN or RST) gives up its source port.
const SNAT_IDLE_REUSE_NS: u64 = 120 * NS_PER_SEC;

/// Puts a connection-tracking entry, counting it when it is a new one
/// (the LRU map may evict another to make room: the agent works out how
/// many from what was made, removed and is there).
#[inline(always)]
fn ct_put(key: &CtKey, e: &CtEntry) -> Result<(), ()> {
    match CT.insert(key, e, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            if let Some(s) = CT_STATS.get_ptr_mut(0) {
                // SAFETY: per-CPU value, written only by this CPU now.
                unsafe { (*s).inserted += 1 };
            }
            Ok(())
        }
        Err(_) => CT.insert(key, e, 0).map_err(|_| ()),
    }
}

/// Removes a connection-tracking entry, counting it.
#[inline(always)]
fn ct_remove(key: &CtKey) {
    if CT.remove(key).is_ok()
        && let Some(s) = CT_STATS.get_ptr_mut(0)
    {
        // SAFETY: per-CPU value, written only by this CPU now.
        unsafe { (*s).removed += 1 };
    }
}

#[inline(always)]
fn bump(service: u32, what: Counter) {
    if let Some(c) = COUNTERS.get_ptr_mut(service) {
        // SAFETY: per-CPU value, written only by this CPU during this call.
        let c = unsafe { &mut *c };
        match what {
            Counter::Connection => c.connections += 1,
            Counter::Refused => c.refused += 1,
            Counter::Dropped => c.dropped += 1,
        }
    }
}

#[inline(always)]
fn bump_packet(service: u32, len: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(service) {
        // SAFETY: as in `bump`.
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += u64::from(len);
    }
}

/// The frontend at `addr:port/proto`: a ClusterIP, or a NodePort when `addr`
/// is the node's own address.
#[inline(always)]
fn service(addr: u32, port: u16, proto: u8) -> Option<ServiceEntry> {
    let key = ServiceKey {
        addr,
        port,
        proto,
        scope: SCOPE_CLUSTER,
    };
    // SAFETY: the value is copied out at once.
    if let Some(s) = unsafe { SERVICES.get(&key) } {
        return Some(*s);
    }
    let cfg = CONFIG.get(0)?;
    if cfg.node_addr == 0 || cfg.node_addr != addr {
        return None;
    }
    let key = ServiceKey {
        addr: 0,
        port,
        proto,
        scope: SCOPE_NODEPORT,
    };
    // SAFETY: as above.
    unsafe { SERVICES.get(&key) }.copied()
}

/// The backend `id` if it still is the one at `addr:port`: a removed
/// backend's id may have been given to another.
#[inline(always)]
fn backend_if(id: u32, addr: u32, port: u16) -> Option<Backend> {
    let b = BACKENDS.get(id)?;
    if b.addr == 0 || b.addr != addr || b.port != port {
        return None;
    }
    Some(*b)
}

/// Picks a backend for a new connection: the client's affinity if it has a
/// live one, else the Maglev slot of `hash`.
#[inline(always)]
fn select(svc: &ServiceEntry, client: u64, hash: u32) -> Option<(u32, Backend)> {
    if svc.active == 0 || svc.table_size == 0 {
        return None;
    }
    let affinity = svc.flags & SVC_AFFINITY != 0;
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let akey = AffinityKey {
        service: svc.id,
        pad: 0,
        client,
    };
    if affinity {
        if let Some(a) = AFFINITY.get_ptr_mut(&akey) {
            // SAFETY: map value; a racing update only loses a timestamp.
            let a = unsafe { &mut *a };
            let fresh =
                now.wrapping_sub(a.last_used) < u64::from(svc.affinity_timeout) * NS_PER_SEC;
            if fresh {
                if let Some(b) = BACKENDS.get(a.backend) {
                    if b.addr == a.backend_addr && b.state == BACKEND_ACTIVE {
                        a.last_used = now;
                        return Some((a.backend, *b));
                    }
                }
            }
        }
    }
    let slot = svc.table_offset.wrapping_add(hash % svc.table_size);
    let id = *MAGLEV.get(slot)?;
    let b = *BACKENDS.get(id)?;
    if b.addr == 0 {
        return None;
    }
    if affinity {
        let _ = AFFINITY.insert(
            &akey,
            &AffinityEntry {
                backend: id,
                backend_addr: b.addr,
                last_used: now,
            },
            0,
        );
    }
    Some((id, b))
}

/// A reply whose both ends were translated (hairpin, NodePort SNAT): from
/// the frontend, to the client.
#[inline(always)]
fn turn_back(ctx: &TcContext, f: &Flow, r: &CtEntry) -> Result<(), ()> {
    pkt::rewrite(ctx, f, true, r.front_addr, r.front_port)?;
    let f2 = Flow {
        saddr: r.front_addr,
        sport: r.front_port,
        ..*f
    };
    pkt::rewrite(ctx, &f2, false, r.client_addr, r.client_port)?;
    bump_packet(r.service, ctx.len());
    Ok(())
}

/// The connection-tracking key of a packet's own direction.
#[inline(always)]
fn ct_key(f: &Flow, dir: u8) -> CtKey {
    CtKey {
        saddr: f.saddr,
        daddr: f.daddr,
        sport: f.sport,
        dport: f.dport,
        proto: f.proto,
        dir,
        pad: 0,
    }
}

/// A flow's live forward entry, its timestamp moved on. A SYN starts a new
/// connection: it is balanced afresh, not sent where an earlier flow with
/// the same ports went.
#[inline(always)]
fn tracked(fkey: &CtKey, syn: bool, now: u64) -> Option<CtEntry> {
    if syn {
        return None;
    }
    let e = CT.get_ptr_mut(fkey)?;
    // SAFETY: map value; racing writers only move a timestamp.
    let e = unsafe { &mut *e };
    backend_if(e.backend, e.backend_addr, e.backend_port)?;
    e.last_seen = now;
    Some(*e)
}

// ---------------------------------------------------------------------------
// Socket path.

/// connect4 and sendmsg4: a socket addressing a frontend is given a backend
/// instead. 1 lets the call go on; 0 with ECONNREFUSED refuses it.
#[inline(always)]
pub fn sock_forward(ctx: &SockAddrContext, connect: bool) -> i32 {
    // SAFETY: the kernel's bpf_sock_addr of this invocation.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_family != AF_INET {
        return 1;
    }
    let proto = sa.protocol as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return 1;
    }
    let addr = sa.user_ip4;
    let port = sa.user_port as u16;
    let Some(svc) = service(addr, port, proto) else {
        return 1;
    };
    // SAFETY: helper call on this program's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // A pod's connected UDP socket is left to the packet path: connect()
    // runs once, so a socket given a backend here would stay with it after
    // the backend is gone, where the packet path picks again. (TCP has no
    // such problem: a connection to a removed pod fails and its client
    // reconnects.) The node's own sockets have no pod veth, so they are
    // translated here.
    if connect
        && proto == PROTO_UDP
        && CONFIG
            .get(0)
            .is_some_and(|c| c.node_netns != 0 && c.node_netns != netns)
    {
        return 1;
    }
    // SAFETY: helper calls on this program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let fkey = SockKey {
        cookie,
        addr,
        port,
        dir: CT_FORWARD,
        pad: 0,
    };
    // A UDP socket that sent here before keeps its backend while it lives
    // (a TCP socket connects once).
    let udp = proto == PROTO_UDP;
    let mut chosen = None;
    // SAFETY: the value is copied out at once.
    if udp && let Some(e) = unsafe { SOCK.get(&fkey) } {
        if let Some(b) = backend_if(e.backend, e.addr, e.port) {
            chosen = Some((e.backend, b));
        }
    }
    let new = chosen.is_none();
    if new {
        chosen = select(&svc, netns, cookie_hash(cookie));
    }
    let Some((id, b)) = chosen else {
        bump(svc.id, Counter::Refused);
        // SAFETY: plain helper call; the hook's return value 0 then fails
        // the call with this error instead of EPERM.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return 0;
    };
    sa.user_ip4 = b.addr;
    sa.user_port = u32::from(b.port);
    if new {
        bump(svc.id, Counter::Connection);
        if udp {
            let _ = SOCK.insert(
                &fkey,
                &SockEntry {
                    addr: b.addr,
                    port: b.port,
                    pad: 0,
                    backend: id,
                },
                0,
            );
        }
        // getpeername() and recvmsg() show the frontend.
        let rkey = SockKey {
            cookie,
            addr: b.addr,
            port: b.port,
            dir: CT_REPLY,
            pad: 0,
        };
        let _ = SOCK.insert(
            &rkey,
            &SockEntry {
                addr,
                port,
                pad: 0,
                backend: id,
            },
            0,
        );
    }
    1
}

/// recvmsg4 and getpeername4: the peer a translated socket sees is the
/// frontend it addressed, not the backend.
#[inline(always)]
pub fn sock_reverse(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel's bpf_sock_addr of this invocation.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_family != AF_INET {
        return 1;
    }
    // SAFETY: helper call on this program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockKey {
        cookie,
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        dir: CT_REPLY,
        pad: 0,
    };
    // SAFETY: the value is copied out at once.
    if let Some(e) = unsafe { SOCK.get(&key) } {
        let (addr, port) = (e.addr, e.port);
        sa.user_ip4 = addr;
        sa.user_port = u32::from(port);
    }
    1
}

// ---------------------------------------------------------------------------
// Packet path.

/// A packet a pod sends. Replies of hairpin flows are turned back to the
/// client; packets to a frontend get their backend (tracked per flow).
#[inline(always)]
pub fn from_pod(ctx: &TcContext, flow: Result<Flow, ()>) -> Result<i32, ()> {
    let f = flow?;
    let rkey = ct_key(&f, CT_REPLY);
    // SAFETY: copied out at once.
    if let Some(r) = unsafe { CT.get(&rkey) }.copied() {
        if r.flags & CT_HAIRPIN != 0 {
            // The backend answering itself: from the frontend, to the client.
            turn_back(ctx, &f, &r)?;
            policy::mark_self(ctx);
            return Ok(TC_ACT_OK as i32);
        }
    }
    let Some(svc) = service(f.daddr, f.dport, f.proto) else {
        // A new TCP connection straight to a pod (or translated at
        // connect()) may reuse the addresses and ports of an earlier
        // Service flow: that flow's reverse-NAT entry must not rewrite its
        // replies.
        if pkt::is_syn(&f) {
            let stale = CtKey {
                saddr: f.daddr,
                daddr: f.saddr,
                sport: f.dport,
                dport: f.sport,
                proto: f.proto,
                dir: CT_REPLY,
                pad: 0,
            };
            ct_remove(&stale);
        }
        if !egress_ok(&f, f.daddr, f.dport) {
            return Ok(TC_ACT_SHOT as i32);
        }
        return Ok(TC_ACT_OK as i32);
    };
    let fkey = CtKey {
        dir: CT_FORWARD,
        ..rkey
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let e = match tracked(&fkey, pkt::is_syn(&f), now) {
        Some(e) => {
            // Judged on the backend, after translation.
            if !egress_ok(&f, e.backend_addr, e.backend_port) {
                return Ok(TC_ACT_SHOT as i32);
            }
            e
        }
        None => {
            let hash = flow_hash(f.saddr, f.daddr, f.sport, f.dport, f.proto);
            let Some((id, b)) = select(&svc, u64::from(f.saddr), hash) else {
                bump(svc.id, Counter::Refused);
                return pkt::reject(ctx, &f);
            };
            // Judged on the backend, after translation; a denied flow
            // leaves nothing tracked.
            if !egress_ok(&f, b.addr, b.port) {
                return Ok(TC_ACT_SHOT as i32);
            }
            let hairpin = b.addr == f.saddr;
            let e = CtEntry {
                backend: id,
                backend_addr: b.addr,
                front_addr: f.daddr,
                client_addr: f.saddr,
                front_port: f.dport,
                client_port: f.sport,
                backend_port: b.port,
                nat_port: 0,
                flags: if hairpin { CT_HAIRPIN } else { 0 },
                pad: [0; 3],
                service: svc.id,
                last_seen: now,
            };
            // The reply comes from the backend to the client, or, for a
            // hairpin, to the frontend address put in as its source.
            let reply = CtKey {
                saddr: b.addr,
                daddr: if hairpin { f.daddr } else { f.saddr },
                sport: b.port,
                dport: f.sport,
                proto: f.proto,
                dir: CT_REPLY,
                pad: 0,
            };
            if ct_put(&reply, &e).is_err() || ct_put(&fkey, &e).is_err() {
                return Err(());
            }
            bump(svc.id, Counter::Connection);
            e
        }
    };
    let saddr = if e.flags & CT_HAIRPIN != 0 {
        pkt::rewrite(ctx, &f, true, e.front_addr, f.sport)?;
        // Back to the pod itself, from the frontend's address.
        policy::mark_self(ctx);
        e.front_addr
    } else {
        f.saddr
    };
    pkt::rewrite(ctx, &f, false, e.backend_addr, e.backend_port)?;
    bump_packet(e.service, ctx.len());
    // Straight to the backend's next hop, as the node's routes say, rather
    // than up through the node's IP stack a second time.
    pkt::forward(ctx, saddr, e.backend_addr, f.proto).or(Ok(TC_ACT_OK as i32))
}

/// A packet delivered to a pod: a backend's reply gets the frontend back as
/// its source.
#[inline(always)]
pub fn to_pod(ctx: &TcContext, flow: Option<&Flow>) -> Result<(), ()> {
    let f = *flow.ok_or(())?;
    let rkey = ct_key(&f, CT_REPLY);
    // SAFETY: copied out at once.
    let Some(r) = (unsafe { CT.get(&rkey) }).copied() else {
        return Ok(());
    };
    if r.flags & (CT_HAIRPIN | CT_NODEPORT) != 0 {
        return Ok(());
    }
    pkt::rewrite(ctx, &f, true, r.front_addr, r.front_port)?;
    bump_packet(r.service, ctx.len());
    Ok(())
}

// ---------------------------------------------------------------------------
// NodePort, on the node's uplink.

/// A packet arriving on the uplink: a NodePort connection gets its backend
/// (a pod here, or on another node, reached with this node's address as
/// source so that the reply comes back here), and replies of such
/// forwarded flows go back to their client.
#[inline(always)]
pub fn nodeport_in(ctx: &TcContext) -> Result<i32, ()> {
    let f = pkt::parse(ctx)?;
    let rkey = ct_key(&f, CT_REPLY);
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(rp) = CT.get_ptr_mut(&rkey)
        // SAFETY: map value; racing writers only move a timestamp or a flag.
        && unsafe { (*rp).flags } & CT_SNAT != 0
    {
        // SAFETY: as above.
        let r = unsafe { &mut *rp };
        r.last_seen = now;
        if pkt::is_closing(&f) {
            r.flags |= CT_CLOSING;
        }
        let r = *r;
        turn_back(ctx, &f, &r)?;
        return pkt::forward(ctx, r.front_addr, r.client_addr, f.proto).or(Ok(TC_ACT_SHOT as i32));
    }
    let cfg = *CONFIG.get(0).ok_or(())?;
    if cfg.node_addr == 0 || f.daddr != cfg.node_addr {
        return Ok(TC_ACT_OK as i32);
    }
    let key = ServiceKey {
        addr: 0,
        port: f.dport,
        proto: f.proto,
        scope: SCOPE_NODEPORT,
    };
    // SAFETY: copied out at once.
    let Some(svc) = (unsafe { SERVICES.get(&key) }).copied() else {
        return Ok(TC_ACT_OK as i32);
    };
    let fkey = CtKey {
        dir: CT_FORWARD,
        ..rkey
    };
    let e = match tracked(&fkey, pkt::is_syn(&f), now) {
        Some(e) => {
            // The client closing: its source port on the backend's side can
            // be given to another flow soon.
            if e.flags & CT_SNAT != 0 && pkt::is_closing(&f) {
                let reply = CtKey {
                    saddr: e.backend_addr,
                    daddr: cfg.node_addr,
                    sport: e.backend_port,
                    dport: e.nat_port,
                    proto: f.proto,
                    dir: CT_REPLY,
                    pad: 0,
                };
                if let Some(r) = CT.get_ptr_mut(&reply) {
                    // SAFETY: map value; racing writers only move a flag.
                    unsafe {
                        (*r).flags |= CT_CLOSING;
                        (*r).last_seen = now;
                    }
                }
            }
            e
        }
        None => {
            let hash = flow_hash(f.saddr, f.daddr, f.sport, f.dport, f.proto);
            let Some((id, b)) = select(&svc, u64::from(f.saddr), hash) else {
                bump(svc.id, Counter::Refused);
                return pkt::reject(ctx, &f);
            };
            let local = b.addr & cfg.block_mask == cfg.block_addr;
            let mut e = CtEntry {
                backend: id,
                backend_addr: b.addr,
                front_addr: f.daddr,
                client_addr: f.saddr,
                front_port: f.dport,
                client_port: f.sport,
                backend_port: b.port,
                nat_port: 0,
                flags: CT_NODEPORT,
                pad: [0; 3],
                service: svc.id,
                last_seen: now,
            };
            let mut reply = CtKey {
                saddr: b.addr,
                daddr: f.saddr,
                sport: b.port,
                dport: f.sport,
                proto: f.proto,
                dir: CT_REPLY,
                pad: 0,
            };
            if !local {
                // A source port of this node's for the flow, free for this
                // backend: unused, or last used by a flow that closed (or
                // fell idle) a while ago. A few tries from the flow's hash.
                let span = u32::from(cfg.snat_port_max.saturating_sub(cfg.snat_port_min)) + 1;
                let mut found = false;
                let mut i = 0u32;
                while i < SNAT_TRIES {
                    let port = cfg.snat_port_min as u32 + (hash.wrapping_add(i * 7919) % span);
                    reply.daddr = cfg.node_addr;
                    reply.dport = (port as u16).to_be();
                    // SAFETY: copied out at once.
                    let free = match unsafe { CT.get(&reply) } {
                        None => true,
                        Some(old) => {
                            let idle = now.wrapping_sub(old.last_seen);
                            (old.flags & CT_CLOSING != 0 && idle > SNAT_CLOSED_REUSE_NS)
                                || idle > SNAT_IDLE_REUSE_NS
                        }
                    };
                    if free {
                        found = true;
                        break;
                    }
                    i += 1;
                }
                if !found {
                    // Counted and shown by `weft lb show`, never silent.
                    bump(svc.id, Counter::Dropped);
                    return Ok(TC_ACT_SHOT as i32);
                }
                e.nat_port = reply.dport;
                e.flags |= CT_SNAT;
            }
            if ct_put(&reply, &e).is_err() || ct_put(&fkey, &e).is_err() {
                return Err(());
            }
            bump(svc.id, Counter::Connection);
            e
        }
    };
    bump_packet(e.service, ctx.len());
    if e.flags & CT_SNAT != 0 {
        pkt::rewrite(ctx, &f, true, cfg.node_addr, e.nat_port)?;
        pkt::rewrite(ctx, &f, false, e.backend_addr, e.backend_port)?;
        return pkt::forward(ctx, cfg.node_addr, e.backend_addr, f.proto)
            .or(Ok(TC_ACT_SHOT as i32));
    }
    // A pod of this node: the kernel routes it to the bridge.
    pkt::rewrite(ctx, &f, false, e.backend_addr, e.backend_port)?;
    Ok(TC_ACT_OK as i32)
}

/// A packet leaving by the uplink: the reply of a local pod to a NodePort
/// client gets the node's address and port back as its source.
#[inline(always)]
pub fn nodeport_out(ctx: &TcContext) -> Result<(), ()> {
    let f = pkt::parse(ctx)?;
    let rkey = ct_key(&f, CT_REPLY);
    // SAFETY: copied out at once.
    let Some(r) = (unsafe { CT.get(&rkey) }).copied() else {
        return Ok(());
    };
    if r.flags & CT_NODEPORT == 0 || r.flags & CT_SNAT != 0 {
        return Ok(());
    }
    pkt::rewrite(ctx, &f, true, r.front_addr, r.front_port)?;
    bump_packet(r.service, ctx.len());
    Ok(())
}
