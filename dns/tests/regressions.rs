//! Inputs the fuzzer found, replayed through the request path.

use std::net::{Ipv4Addr, SocketAddr};

use hickory_proto::op::Message;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Found by `scripts/fuzz.sh`: a question whose name holds a compression
/// pointer into the header (offset 2). Echoed as received, it pointed at
/// the answer's flags and the answer did not decode.
const POINTER_INTO_HEADER: &str = "293401000001000000000000035f7067045f7463700264620764656661756c74027303020202020202c0020202020202020202020202020202020202020202020202020202020202030202020202020202020202020202022402020202020202766307636c7573746572056c6f63616c0000210001";

#[test]
fn fuzzer_findings_get_answers_that_decode() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let h = weft_dns::testing::sample_handler(Ipv4Addr::new(10, 244, 1, 2));
    let src: SocketAddr = "10.244.9.9:40000".parse().expect("addr");
    for (input, tcp) in [(POINTER_INTO_HEADER, false), (POINTER_INTO_HEADER, true)] {
        let msg = unhex(input);
        assert!(Message::from_vec(&msg).is_ok(), "the query itself decodes");
        let out = rt
            .block_on(h.handle_bytes(&msg, src, tcp))
            .expect("an answer");
        let reply = Message::from_vec(&out).expect("the answer decodes");
        assert_eq!(reply.metadata.id, u16::from_be_bytes([msg[0], msg[1]]));
        assert_eq!(
            reply.metadata.response_code,
            hickory_proto::op::ResponseCode::FormErr
        );
    }
    // A well-formed query still gets its answer.
    let mut ok = unhex(POINTER_INTO_HEADER);
    ok.truncate(12);
    ok[5] = 1;
    for l in ["web", "default", "svc", "cluster", "local"] {
        ok.push(u8::try_from(l.len()).expect("len"));
        ok.extend(l.as_bytes());
    }
    ok.extend([0, 0, 1, 0, 1]);
    let out = rt
        .block_on(h.handle_bytes(&ok, src, false))
        .expect("an answer");
    let reply = Message::from_vec(&out).expect("decodes");
    assert_eq!(reply.answers.len(), 1, "{reply:?}");
}
