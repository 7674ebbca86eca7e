//! Serving the fault timeline over the wire: a request handler in front of the zones' catalog.
//! A query that no active fault covers is answered by the catalog; the others get SERVFAIL,
//! NXDOMAIN, the replaced records, or no answer at all (the client times out).
//!
//! MX queries for a name with MX records are answered here too, with the address of every
//! exchange in the additional section (RFC 5321 section 5.1 lets the client use them; RFC 1035
//! section 3.3.9 asks for them): hickory-server's zone handler follows only the first record
//! of the set. A query for ANY gets one RRset, as hickory answers it (RFC 8482 section 4.1).

use crate::{FaultKind, FaultyZones, RecordData, record_of};
use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::{Record, RecordType};
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

impl FaultyCatalog {
    /// The MX set owned by `owner` and, for the additional section, the A records of every
    /// exchange this server is authoritative for (in the set's order, each once). None when
    /// `owner` has no MX records: the catalog answers that (NODATA or NXDOMAIN, with the SOA).
    fn mx_with_addresses(
        &self,
        owner: &hickory_proto::rr::Name,
    ) -> Option<(Vec<Record>, Vec<Record>)> {
        let zones = &self.zones.zones;
        let name = owner.to_ascii();
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        let mut exchanges: Vec<String> = Vec::new();
        for r in zones.records_at(&name) {
            if let RecordData::Mx { exchange, .. } = &r.data {
                answers.push(record_of(owner, r.ttl_s, &r.data).ok()?);
                let exchange = crate::normalize(exchange);
                if !exchange.is_empty() && !exchanges.contains(&exchange) {
                    exchanges.push(exchange);
                }
            }
        }
        if answers.is_empty() {
            return None;
        }
        for exchange in &exchanges {
            let Ok(target) = crate::parse_name(exchange) else {
                continue;
            };
            for r in zones.records_at(exchange) {
                if matches!(r.data, RecordData::A(_)) {
                    additionals.push(record_of(&target, r.ttl_s, &r.data).ok()?);
                }
            }
        }
        Some((answers, additionals))
    }
}

/// The EDNS of an answer to `request`, as hickory's catalog writes it: present when the query
/// had one, with the query's DO bit (RFC 3225 section 3) and payload size (at least 512).
fn response_edns(request: &Request) -> Option<Edns> {
    let req = request.edns.as_ref()?;
    let mut edns = Edns::new();
    edns.set_dnssec_ok(req.flags().dnssec_ok);
    edns.set_max_payload(req.max_payload().max(512));
    edns.set_version(0);
    Some(edns)
}

/// An authoritative answer with these records.
async fn answer<R: ResponseHandler>(
    request: &Request,
    mut response_handle: R,
    answers: &[Record],
    additionals: &[Record],
) -> ResponseInfo {
    let mut metadata = Metadata::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    metadata.authoritative = true;
    metadata.recursion_desired = request.metadata.recursion_desired;
    let edns = response_edns(request);
    let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
        metadata,
        answers.iter(),
        [],
        [],
        additionals.iter(),
    );
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(_) => not_sent(request),
    }
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
                if rtype == RecordType::MX
                    && let Some((answers, additionals)) =
                        self.mx_with_addresses(info.query.original().name())
                {
                    return answer(request, response_handle, &answers, &additionals).await;
                }
                return self
                    .catalog
                    .handle_request::<R, T>(request, response_handle)
                    .await;
            }
            // No answer: the client's timeout is the fault.
            Some(FaultKind::Timeout | FaultKind::TimeoutOf(_)) => return not_sent(request),
            Some(FaultKind::ServFail) => ResponseCode::ServFail,
            Some(FaultKind::NxDomain) => ResponseCode::NXDomain,
            Some(FaultKind::Records(_, records)) => {
                let owner = info.query.original().name().clone();
                let answers: Vec<Record> = records
                    .iter()
                    .filter_map(|r| record_of(&owner, crate::TTL_S_DEFAULT, r).ok())
                    .collect();
                return answer(request, response_handle, &answers, &[]).await;
            }
        };
        let edns = response_edns(request);
        let response = MessageResponseBuilder::new(&request.queries, edns.as_ref())
            .error_msg(&request.metadata, code);
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(_) => not_sent(request),
        }
    }
}

/// A server answering through the fault timeline.
pub type FaultyServer = Server<FaultyCatalog>;
