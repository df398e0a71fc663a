//! The DNS server's request path on arbitrary bytes: decoding, the zone's
//! answers, the search-path shortcut, encoding and UDP truncation. The
//! first byte picks the transport and whether the sender is a local pod.
//! Every message with a whole header must get an answer (FORMERR if
//! nothing else) that decodes, with its id, within the size the transport
//! allows.
#![no_main]

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::OnceLock,
};

use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;
use weft_dns::server::Handler;

fn handler() -> Handler {
    weft_dns::testing::sample_handler(Ipv4Addr::new(10, 244, 1, 2))
}

static STATE: OnceLock<(tokio::runtime::Runtime, Handler)> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&mode, msg)) = data.split_first() else {
        return;
    };
    let (rt, h) = STATE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        (rt, handler())
    });
    let tcp = mode & 1 == 1;
    let src: SocketAddr = if mode & 2 == 2 {
        "10.244.1.2:40000".parse().expect("addr")
    } else {
        "10.244.9.9:40000".parse().expect("addr")
    };
    let Some(out) = rt.block_on(h.handle_bytes(msg, src, tcp)) else {
        return;
    };
    let reply = Message::from_vec(&out).expect("the answer decodes");
    assert_eq!(reply.metadata.id, u16::from_be_bytes([msg[0], msg[1]]));
    let limit = if tcp {
        usize::from(u16::MAX)
    } else {
        usize::from(reply.edns.as_ref().map_or(512, |e| e.max_payload().max(512)))
    };
    assert!(out.len() <= limit, "{} bytes over {limit}", out.len());
});
