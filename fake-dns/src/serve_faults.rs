//! Serving the fault timeline over the wire: a request handler in front of the zones' catalog.
//! A query that no active fault covers is answered by the catalog; the others get SERVFAIL,
//! NXDOMAIN, the replaced records, or no answer at all (the client times out).

use crate::{FaultKind, FaultyZones, record_of};
use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::Record;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{Catalog, MessageResponseBuilder};
use std::sync::Arc;

/// Milliseconds since the scenario started, read when a query arrives.
pub type Elapsed = Arc<dyn Fn() -> u64 + Send + Sync>;

pub struct FaultyCatalog {
    catalog: Catalog,
    zones: Arc<FaultyZones>,
    elapsed_ms: Elapsed,
}

impl FaultyCatalog {
    pub fn new(catalog: Catalog, zones: Arc<FaultyZones>, elapsed_ms: Elapsed) -> Self {
        FaultyCatalog {
            catalog,
            zones,
            elapsed_ms,
        }
    }
}

fn not_sent(request: &Request) -> ResponseInfo {
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

#[async_trait::async_trait]
impl RequestHandler for FaultyCatalog {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let Ok(info) = request.request_info() else {
            return self
                .catalog
                .handle_request::<R, T>(request, response_handle)
                .await;
        };
        let name = info.query.name().to_string();
        let rtype = info.query.query_type();
        let fault = self.zones.fault(&name, rtype, (self.elapsed_ms)()).cloned();
        let code = match fault {
            None => {
                return self
                    .catalog
                    .handle_request::<R, T>(request, response_handle)
                    .await;
            }
            // No answer: the client's timeout is the fault.
            Some(FaultKind::Timeout) => return not_sent(request),
            Some(FaultKind::ServFail) => ResponseCode::ServFail,
            Some(FaultKind::NxDomain) => ResponseCode::NXDomain,
            Some(FaultKind::Records(_, records)) => {
                let owner = info.query.original().name().clone();
                let answers: Vec<Record> = records
                    .iter()
                    .filter_map(|r| record_of(&owner, crate::TTL_S_DEFAULT, r).ok())
                    .collect();
                let mut metadata = Metadata::new(
                    request.metadata.id,
                    MessageType::Response,
                    request.metadata.op_code,
                );
                metadata.authoritative = true;
                metadata.recursion_desired = request.metadata.recursion_desired;
                let response = MessageResponseBuilder::new(&request.queries, None).build(
                    metadata,
                    answers.iter(),
                    [],
                    [],
                    [],
                );
                return match response_handle.send_response(response).await {
                    Ok(info) => info,
                    Err(_) => not_sent(request),
                };
            }
        };
        let response =
            MessageResponseBuilder::new(&request.queries, None).error_msg(&request.metadata, code);
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(_) => not_sent(request),
        }
    }
}

/// A server answering through the fault timeline.
pub type FaultyServer = Server<FaultyCatalog>;
