//! The DNS server: hickory-server over UDP and TCP, answering the cluster
//! zone from a shared [`Zone`]. Names outside the zone are refused for now
//! (forwarding to the node's upstream resolvers comes next).

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode},
    rr::{Name, Record},
};
use hickory_server::{
    Server,
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};

use super::records::{Answer, Zone};

/// Answers queries from the zone.
#[derive(Clone)]
pub struct ZoneHandler {
    zone: Arc<RwLock<Zone>>,
}

impl ZoneHandler {
    /// A handler reading `zone`.
    #[must_use]
    pub fn new(zone: Arc<RwLock<Zone>>) -> Self {
        Self { zone }
    }
}

#[async_trait::async_trait]
impl RequestHandler for ZoneHandler {
    async fn handle_request<R: ResponseHandler, T: hickory_server::net::runtime::Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // EDNS: echo a version 0 OPT with the client's payload size (at
        // least 512), so that UDP answers are truncated to what it takes.
        let resp_edns = request.edns.as_ref().map(|e| {
            let mut r = Edns::new();
            r.set_max_payload(e.max_payload().max(512));
            r.set_version(0);
            r
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &resp_edns {
            builder.edns(e);
        }
        let meta = &request.metadata;
        let unsupported = meta.message_type != MessageType::Query || meta.op_code != OpCode::Query;
        let info = match request.request_info() {
            Ok(i) if !unsupported => i,
            _ => {
                let code = if unsupported {
                    ResponseCode::NotImp
                } else {
                    ResponseCode::FormErr
                };
                let resp = builder.error_msg(meta, code);
                return match response_handle.send_response(resp).await {
                    Ok(i) => i,
                    Err(_) => failed(request),
                };
            }
        };
        let qname: Name = info.query.name().into();
        let qtype = info.query.query_type();
        let (answer, soa) = {
            let z = self.zone.read().expect("zone lock");
            (z.resolve(&qname, qtype), z.soa())
        };
        let mut reply = Metadata::response_from_request(meta);
        reply.recursion_available = false;
        let empty: Vec<Record> = Vec::new();
        let result = match answer {
            Answer::Records(rs) => {
                reply.authoritative = true;
                let resp =
                    builder.build(reply, rs.iter(), empty.iter(), empty.iter(), empty.iter());
                response_handle.send_response(resp).await
            }
            Answer::NoData | Answer::NxDomain => {
                reply.authoritative = true;
                if answer == Answer::NxDomain {
                    reply.response_code = ResponseCode::NXDomain;
                }
                let soa = [soa];
                let resp =
                    builder.build(reply, empty.iter(), empty.iter(), soa.iter(), empty.iter());
                response_handle.send_response(resp).await
            }
            Answer::ServFail => {
                let resp = builder.error_msg(meta, ResponseCode::ServFail);
                response_handle.send_response(resp).await
            }
            Answer::NotOurs => {
                let resp = builder.error_msg(meta, ResponseCode::Refused);
                response_handle.send_response(resp).await
            }
        };
        result.unwrap_or_else(|_| failed(request))
    }
}

/// What to report when the answer could not be sent.
fn failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

/// Serves `zone` on an already bound UDP socket and TCP listener until the
/// task is dropped.
///
/// # Errors
/// When the server stops with an error.
pub async fn serve(
    zone: Arc<RwLock<Zone>>,
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let mut server = Server::new(ZoneHandler::new(zone));
    server.register_socket(udp);
    // Idle TCP connections are closed after 5 s, as CoreDNS does; several
    // queries may be in flight on one connection.
    server.register_listener(tcp, Duration::from_secs(5), 65_535);
    server.block_until_done().await?;
    Ok(())
}
