//! Weft's eBPF programs. Built for `bpfel-unknown-none` by agent/build.rs
//! (aya-build) and loaded by the agent with aya. Map layouts come from
//! `weft-common`, so the agent reads exactly what these programs write.
//!
//! - `weft_from_pod` / `weft_to_pod`: tc on the host side of every pod veth.
//!   They count the pod's traffic, drop what the pod sends with addresses
//!   not its own (`guard`), translate packets addressed to a Service
//!   that the socket path did not translate (DNAT with connection
//!   tracking, reverse NAT on the way back, hairpin), and refuse
//!   connections to a Service without ready backends with an ICMP
//!   port-unreachable. They also give NetworkPolicy's verdict (`policy`):
//!   egress on the way out, after Service translation, so it is judged on
//!   the backend; ingress on delivery.
//! - `weft_nodeport_in` / `weft_nodeport_out`: tc on the node's uplink, for
//!   NodePorts: DNAT to a local pod, or DNAT and SNAT to a pod on another
//!   node with the reply sent back to the client.
//! - `weft_connect4` / `weft_sendmsg4` / `weft_recvmsg4` / `weft_getpeername4`:
//!   cgroup sock_addr hooks on the node's own cgroup subtree. They pick the
//!   backend when a socket connects (or sends a datagram), so the packets
//!   carry the backend's address from the start and no per-packet work is
//!   left; the reverse hooks show the application the VIP it asked for.
#![no_std]
#![no_main]

mod guard;
mod lb;
mod pkt;
mod policy;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_PIPE, TC_ACT_SHOT},
    macros::{cgroup_sock_addr, classifier, map},
    maps::PerCpuHashMap,
    programs::{SockAddrContext, TcContext},
};
use weft_common::{IF_COUNTERS_MAX, IfCounters};

/// Per-CPU so that the hot path never contends on a shared counter.
#[map(name = "WEFT_IF_COUNTERS")]
static WEFT_IF_COUNTERS: PerCpuHashMap<u32, IfCounters> =
    PerCpuHashMap::with_max_entries(IF_COUNTERS_MAX, 0);

/// Which way a packet crosses the host side of a pod's veth.
#[derive(Clone, Copy)]
enum Dir {
    /// Host ingress: the pod sent it.
    FromPod,
    /// Host egress: it is being delivered to the pod.
    ToPod,
}

#[inline(always)]
fn count(ctx: &TcContext, dir: Dir) {
    // SAFETY: `skb` points at the kernel's __sk_buff for this invocation.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let len = u64::from(ctx.len());
    if let Some(c) = WEFT_IF_COUNTERS.get_ptr_mut(ifindex) {
        // SAFETY: per-CPU value, only this CPU writes it during this call.
        let c = unsafe { &mut *c };
        match dir {
            Dir::FromPod => {
                c.tx_packets += 1;
                c.tx_bytes += len;
            }
            Dir::ToPod => {
                c.rx_packets += 1;
                c.rx_bytes += len;
            }
        }
        return;
    }
    let mut c = IfCounters::default();
    match dir {
        Dir::FromPod => {
            c.tx_packets = 1;
            c.tx_bytes = len;
        }
        Dir::ToPod => {
            c.rx_packets = 1;
            c.rx_bytes = len;
        }
    }
    // A full map only loses counting, never traffic; the agent reports fill level.
    let _ = WEFT_IF_COUNTERS.insert(ifindex, c, 0);
}

/// tc ingress on the host side of a pod veth: what the pod sends.
#[classifier]
pub fn weft_from_pod(ctx: TcContext) -> i32 {
    count(&ctx, Dir::FromPod);
    // SAFETY: `skb` points at the kernel's __sk_buff for this invocation.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // The headers are read once, for every part below.
    let h = pkt::headers(&ctx).ok();
    // Only the pod's own addresses go further (NetworkPolicy judges by them).
    let guarded = match guard::from_pod(&ctx, ifindex, h.as_ref()) {
        guard::Verdict::Drop => return TC_ACT_SHOT,
        guard::Verdict::Own => true,
        guard::Verdict::Unguarded => false,
    };
    let flow = match &h {
        Some(h) => pkt::parse_headers(&ctx, h),
        None => Err(()),
    };
    if guarded
        && let Some(h) = &h
        && !guard::dns_within_rate(ifindex, h, flow.as_ref().ok())
    {
        return TC_ACT_SHOT;
    }
    match lb::from_pod(&ctx, flow) {
        Ok(action) => action,
        // Not TCP or UDP (or not rewritable): only the policy judges it.
        Err(()) => {
            if policy::egress_raw(&ctx, h.as_ref()) {
                TC_ACT_OK as i32
            } else {
                TC_ACT_SHOT as i32
            }
        }
    }
}

/// tc egress on the host side of a pod veth: what is delivered to the pod.
#[classifier]
pub fn weft_to_pod(ctx: TcContext) -> i32 {
    count(&ctx, Dir::ToPod);
    let h = pkt::headers(&ctx).ok();
    let flow = h.as_ref().and_then(|h| pkt::parse_headers(&ctx, h).ok());
    // Judged before the reverse translation: the policy tracks flows by
    // the backend's address, as they were judged on the way out.
    if !policy::ingress(&ctx, h.as_ref(), flow.as_ref()) {
        return TC_ACT_SHOT;
    }
    let _ = lb::to_pod(&ctx, flow.as_ref());
    TC_ACT_PIPE
}

/// tc ingress on the node's uplink: NodePort.
#[classifier]
pub fn weft_nodeport_in(ctx: TcContext) -> i32 {
    match lb::nodeport_in(&ctx) {
        Ok(action) => action,
        Err(()) => TC_ACT_OK as i32,
    }
}

/// tc egress on the node's uplink: NodePort replies of local pods.
#[classifier]
pub fn weft_nodeport_out(ctx: TcContext) -> i32 {
    let _ = lb::nodeport_out(&ctx);
    TC_ACT_PIPE
}

/// connect() of a TCP or UDP socket in the node's cgroup subtree.
#[cgroup_sock_addr(connect4)]
pub fn weft_connect4(ctx: SockAddrContext) -> i32 {
    lb::sock_forward(&ctx, true)
}

/// sendmsg() of an unconnected UDP socket.
#[cgroup_sock_addr(sendmsg4)]
pub fn weft_sendmsg4(ctx: SockAddrContext) -> i32 {
    lb::sock_forward(&ctx, false)
}

/// recvmsg() of a UDP socket: the reply's source becomes the VIP again.
#[cgroup_sock_addr(recvmsg4)]
pub fn weft_recvmsg4(ctx: SockAddrContext) -> i32 {
    lb::sock_reverse(&ctx)
}

/// getpeername() of a connected socket: the VIP it connected to.
#[cgroup_sock_addr(getpeername4)]
pub fn weft_getpeername4(ctx: SockAddrContext) -> i32 {
    lb::sock_reverse(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
