//! Weft's eBPF programs. Built for `bpfel-unknown-none` by agent/build.rs
//! (aya-build) and loaded by the agent with aya. Map layouts come from
//! `weft-common`, so the agent reads exactly what these programs write.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_PIPE,
    macros::{classifier, map},
    maps::PerCpuHashMap,
    programs::TcContext,
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

/// Attached to tc ingress on the host side of a pod veth.
#[classifier]
pub fn weft_count_from_pod(ctx: TcContext) -> i32 {
    count(&ctx, Dir::FromPod);
    TC_ACT_PIPE
}

/// Attached to tc egress on the host side of a pod veth.
#[classifier]
pub fn weft_count_to_pod(ctx: TcContext) -> i32 {
    count(&ctx, Dir::ToPod);
    TC_ACT_PIPE
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
