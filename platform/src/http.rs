//! The HTTP API (axum): `POST /api/inject/v1` behind bearer tokens and a body size limit.
//!
//! A request is answered only once every message it made is in the spool on disk; errors are
//! JSON, `{"error": {"status": 400, "field": "recipients[3].email", "message": "..."}}`, and a
//! refused request has queued nothing.

use crate::inject::{self, FieldError, InjectRequest, Stamp};
use crate::lists::Lists;
use crate::track::{Mark, Tracker};
use axum::Router;
use axum::body::Body;
use axum::extract::Path as UrlPath;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mailsim_events::{Clock, Event, EventSink};
use mailsim_mta::OutboundMessage;
use mailsim_mta::suppression::Suppression;
use serde::Serialize;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// For each message and each of its recipients: the queue id, or why it was not queued.
pub type Spooled = Vec<Vec<Result<u64, String>>>;

/// Where the API's messages go: the MTA's spool (answers once they are on disk).
pub trait Spool: Send + Sync + 'static {
    fn spool(
        &self,
        batch: Vec<OutboundMessage>,
    ) -> Pin<Box<dyn Future<Output = Result<Spooled, String>> + Send>>;
}

/// The bearer tokens the API accepts, kept as SHA-256 digests.
pub struct Tokens {
    digests: Vec<ring::digest::Digest>,
}

/// The shortest token accepted (a token is a secret, not a password to remember).
pub const TOKEN_CHARS_MIN: usize = 16;

impl Tokens {
    /// One token per line; empty lines and lines starting with `#` are skipped. A file with
    /// no token, or a token too short or with white space inside, is refused with its line.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut digests = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let token = line.trim();
            if token.is_empty() || token.starts_with('#') {
                continue;
            }
            if token.len() < TOKEN_CHARS_MIN || token.contains(char::is_whitespace) {
                return Err(format!(
                    "line {}: a token is at least {TOKEN_CHARS_MIN} characters without white space",
                    n + 1
                ));
            }
            digests.push(ring::digest::digest(
                &ring::digest::SHA256,
                token.as_bytes(),
            ));
        }
        if digests.is_empty() {
            return Err("no token (one per line)".into());
        }
        Ok(Tokens { digests })
    }

    /// None when `Authorization: Bearer <token>` names one of ours, else why not.
    fn refuses(&self, headers: &HeaderMap) -> Option<&'static str> {
        let Some(token) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
        else {
            return Some("a bearer token is needed (Authorization: Bearer <token>)");
        };
        let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        // Digests compared: what the comparison's time could tell is about a hash, not a token.
        if self.digests.iter().any(|t| t.as_ref() == d.as_ref()) {
            None
        } else {
            Some("the bearer token is not accepted")
        }
    }
}

pub struct ApiConfig {
    pub tokens: Tokens,
    /// The largest request body taken (bytes); a larger one gets 413.
    pub body_max: usize,
    /// The first part of the Message-IDs the API makes (unique to this MTA's run).
    pub id_prefix: String,
}

/// Request bodies up to 16 MiB by default: 10,000 recipients with a few fields each.
pub const BODY_MAX_DEFAULT: usize = 16 * 1024 * 1024;
/// A request's header must arrive within this (also between requests on a kept-alive
/// connection: an idle client is let go), its body within `BODY_SECONDS_MAX`.
pub const HEADER_SECONDS_MAX: Duration = Duration::from_secs(10);
pub const BODY_SECONDS_MAX: Duration = Duration::from_secs(60);
/// Connections served at once; more are closed at once (file descriptors are shared with the
/// MTA's SMTP).
pub const CONNECTIONS_MAX: usize = 256;

/// Serve `router` on `listener` until `stop`: HTTP/1.1 with the header timeout, at most
/// `CONNECTIONS_MAX` connections; at `stop`, no new connection, and the open ones get 5 s to
/// finish their request.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    continue; // over the cap: dropped, closed
                };
                let service = hyper_util::service::TowerToHyperService::new(router.clone());
                connections.spawn(async move {
                    let _permit = permit;
                    let mut http = hyper::server::conn::http1::Builder::new();
                    http.timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(HEADER_SECONDS_MAX);
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = http.serve_connection(io, service).await;
                });
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    Ok(())
}

struct Api {
    cfg: ApiConfig,
    spool: Arc<dyn Spool>,
    clock: Arc<dyn Clock>,
    next_id: AtomicU64,
    tracking: Option<Tracking>,
    lists: Option<Arc<Lists>>,
}

/// The MTA's open and click tracking and one-click unsubscribe, served beside the API: the
/// key and base URL, where the events go, and the suppression list an unsubscribe joins.
pub struct Tracking {
    pub tracker: Tracker,
    pub events: EventSink,
    pub suppression: Arc<Suppression>,
}

/// The API's routes over `spool`, dated by `clock`; with `tracking`, also `/t/o/<token>` (a
/// 1x1 GIF, an `opened` event), `/t/c/<token>` (a 302 to the link, a `clicked` event) and
/// `/u/<token>` (RFC 8058: GET shows a button, POST `List-Unsubscribe=One-Click` adds the
/// address to the suppression list, an `unsubscribed` event). These take no bearer token; a
/// token that is not the MTA's own gets 404 and nothing is logged.
pub fn router(
    cfg: ApiConfig,
    spool: Arc<dyn Spool>,
    clock: Arc<dyn Clock>,
    tracking: Option<Tracking>,
    lists: Option<Arc<Lists>>,
) -> Router {
    let api = Arc::new(Api {
        cfg,
        spool,
        clock,
        next_id: AtomicU64::new(1),
        tracking,
        lists,
    });
    Router::new()
        .route("/t/o/{token}", get(open).fallback(wrong_method))
        .route("/t/c/{token}", get(click).fallback(wrong_method))
        .route(
            "/u/{token}",
            get(unsubscribe_page)
                .post(unsubscribe)
                .fallback(wrong_method),
        )
        .route(
            "/api/campaigns",
            post(campaigns).fallback(|| async {
                error(StatusCode::METHOD_NOT_ALLOWED, None, "use POST".into())
            }),
        )
        .route(
            "/api/inject/v1",
            post(inject_v1).fallback(|| async {
                error(StatusCode::METHOD_NOT_ALLOWED, None, "use POST".into())
            }),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, None, "no such endpoint".into()) })
        .with_state(api)
}

#[derive(Serialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize)]
struct ErrorDetail {
    status: u16,
    field: Option<String>,
    message: String,
}

fn error(status: StatusCode, field: Option<String>, message: String) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            status: status.as_u16(),
            field,
            message,
        },
    };
    json(status, &body)
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

fn field_error(status: StatusCode, e: FieldError) -> Response {
    error(status, e.field, e.message)
}

/// The answer to an injection: KumoMTA's counts, and what became of each recipient.
#[derive(Serialize)]
pub struct InjectResponse {
    pub success_count: usize,
    pub fail_count: usize,
    pub failed_recipients: Vec<String>,
    pub errors: Vec<String>,
    /// Every queued recipient, in the request's order.
    pub queued: Vec<QueuedRecipient>,
}

#[derive(Serialize)]
pub struct QueuedRecipient {
    pub email: String,
    pub queue_id: u64,
    pub message_id: String,
}

/// A request's JSON body, once the bearer token, the media type and the size are right.
async fn json_body(
    api: &Api,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, Response> {
    if let Some(why) = api.cfg.tokens.refuses(headers) {
        let mut r = error(StatusCode::UNAUTHORIZED, None, why.into());
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"mailsim\""),
        );
        return Err(r);
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            "the body must be JSON (Content-Type: application/json)".into(),
        ));
    }
    let max = api.cfg.body_max;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            format!("the body is larger than {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(BODY_SECONDS_MAX, axum::body::to_bytes(body, max)).await {
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            None,
            format!(
                "the body did not arrive within {} s",
                BODY_SECONDS_MAX.as_secs()
            ),
        )),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            if e.into_inner().is::<http_body_util::LengthLimitError>() {
                Err(too_large())
            } else {
                Err(error(
                    StatusCode::BAD_REQUEST,
                    None,
                    "the body could not be read".into(),
                ))
            }
        }
    }
}

fn refused(e: FieldError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    field_error(status, e)
}

/// One request's messages, built, and its recipients' addresses.
type Built = (Vec<inject::Made>, Vec<String>);

/// Check and build one request's messages (CPU work: call on a blocking thread).
fn build(api: &Api, request: InjectRequest) -> Result<Built, FieldError> {
    inject::check(&request)?;
    let stamp = Stamp {
        clock: api.clock.as_ref(),
        date_s: (api.clock.now_ms() / 1000) as i64,
        id_prefix: &api.cfg.id_prefix,
        next_id: &api.next_id,
        tracker: api.tracking.as_ref().map(|t| &t.tracker),
    };
    let made = inject::make(&request, &stamp)?;
    let emails = request.recipients.into_iter().map(|r| r.email).collect();
    Ok((made, emails))
}

/// Check, build and spool one request's messages (all or none); what became of each recipient.
async fn queue(api: &Arc<Api>, request: InjectRequest) -> Result<InjectResponse, Response> {
    let api2 = api.clone();
    match tokio::task::spawn_blocking(move || build(&api2, request)).await {
        Ok(Ok(built)) => spool_built(api, built).await,
        Ok(Err(e)) => Err(refused(e)),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            format!("not queued: {e}"),
        )),
    }
}

/// Spool built messages as one batch; what became of each recipient.
async fn spool_built(api: &Arc<Api>, (made, emails): Built) -> Result<InjectResponse, Response> {
    let message_ids: Vec<String> = made.iter().map(|m| m.message.message_id.clone()).collect();
    let targets: Vec<Vec<usize>> = made.iter().map(|m| m.recipients.clone()).collect();
    let batch = made.into_iter().map(|m| m.message).collect();
    let spooled = api.spool.spool(batch).await.map_err(|e| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            format!("not queued: {e}"),
        )
    })?;
    let mut answer = InjectResponse {
        success_count: 0,
        fail_count: 0,
        failed_recipients: Vec::new(),
        errors: Vec::new(),
        queued: Vec::new(),
    };
    let mut per_recipient: Vec<Option<(u64, usize)>> = vec![None; emails.len()];
    for (m, (outcomes, rcpts)) in spooled.iter().zip(&targets).enumerate() {
        for (outcome, &i) in outcomes.iter().zip(rcpts) {
            match outcome {
                Ok(id) => per_recipient[i] = Some((*id, m)),
                Err(reason) => {
                    answer.fail_count += 1;
                    answer.failed_recipients.push(emails[i].clone());
                    answer
                        .errors
                        .push(format!("{}: suppressed ({reason})", emails[i]));
                }
            }
        }
    }
    for (i, q) in per_recipient.into_iter().enumerate() {
        if let Some((queue_id, m)) = q {
            answer.success_count += 1;
            answer.queued.push(QueuedRecipient {
                email: emails[i].clone(),
                queue_id,
                message_id: message_ids[m].clone(),
            });
        }
    }
    Ok(answer)
}

async fn inject_v1(State(api): State<Arc<Api>>, headers: HeaderMap, body: Body) -> Response {
    let bytes = match json_body(&api, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let request = match tokio::task::spawn_blocking(move || inject::parse(&bytes)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return refused(e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, None, e.to_string()),
    };
    match queue(&api, request).await {
        Ok(answer) => json(StatusCode::OK, &answer),
        Err(r) => r,
    }
}

/// The answer to a campaign: how the list's subscribers stood, and what was queued.
#[derive(Serialize)]
pub struct CampaignResponse {
    pub list: String,
    /// Active subscribers mailed.
    pub recipients: usize,
    pub success_count: usize,
    pub fail_count: usize,
    pub failed_recipients: Vec<String>,
    pub errors: Vec<String>,
    /// The list's subscribers by status after the campaign was queued.
    pub statuses: std::collections::BTreeMap<String, u64>,
}

/// Recipients per batch of a campaign (each batch is spooled whole).
const CAMPAIGN_BATCH: usize = 1000;
/// The most mail one campaign may make (it is built whole before any is spooled).
const CAMPAIGN_BYTES_MAX: usize = 1024 * 1024 * 1024;

async fn campaigns(State(api): State<Arc<Api>>, headers: HeaderMap, body: Body) -> Response {
    let bytes = match json_body(&api, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(lists) = api.lists.clone() else {
        return error(StatusCode::NOT_FOUND, None, "no lists on this MTA".into());
    };
    let request = match tokio::task::spawn_blocking(move || inject::parse_campaign(&bytes)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return refused(e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, None, e.to_string()),
    };
    let suppression = api.tracking.as_ref().map(|t| t.suppression.clone());
    let list = request.list.clone();
    let subscribers = {
        let (lists, list) = (lists.clone(), list.clone());
        tokio::task::spawn_blocking(move || {
            lists.active(&list, |e| suppression.as_ref().and_then(|s| s.reason(e)))
        })
        .await
    };
    let subscribers = match subscribers {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return error(StatusCode::SERVICE_UNAVAILABLE, None, e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, None, e.to_string()),
    };
    if subscribers.is_empty() {
        let message = if lists.exists(&list).unwrap_or(false) {
            format!("{list:?} has no active subscriber")
        } else {
            format!("there is no list {list:?} (mailsim list import makes one)")
        };
        return error(StatusCode::BAD_REQUEST, Some("list".into()), message);
    }
    let total = subscribers.len();
    // Every batch is checked and built before any is spooled: a template error or a bad
    // field stops the campaign before anyone is mailed.
    let built = {
        let api2 = api.clone();
        tokio::task::spawn_blocking(move || {
            let mut batches = Vec::new();
            let mut bytes = 0usize;
            for (k, chunk) in subscribers.chunks(CAMPAIGN_BATCH).enumerate() {
                let built = build(&api2, request.for_subscribers(chunk)).map_err(|e| {
                    // Name the subscriber, not a position in a request the client never sent.
                    let who = e
                        .field
                        .as_deref()
                        .and_then(|f| f.strip_prefix("recipients["))
                        .and_then(|f| f.split(']').next())
                        .and_then(|i| i.parse::<usize>().ok())
                        .and_then(|i| chunk.get(i))
                        .map(|s| s.email.clone());
                    match who {
                        Some(email) => FieldError {
                            field: Some("list".into()),
                            message: format!("subscriber {email}: {}", e.message),
                            ..e
                        },
                        None => e,
                    }
                })?;
                bytes += built.0.iter().map(|m| m.message.body.len()).sum::<usize>();
                if bytes > CAMPAIGN_BYTES_MAX {
                    return Err(FieldError {
                        field: Some("list".into()),
                        message: format!(
                            "the campaign makes more than {CAMPAIGN_BYTES_MAX} bytes of mail (at batch {k})"
                        ),
                        status: 413,
                    });
                }
                batches.push(built);
            }
            Ok(batches)
        })
        .await
    };
    let batches = match built {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return refused(e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, None, e.to_string()),
    };
    let mut answer = CampaignResponse {
        list: list.clone(),
        recipients: total,
        success_count: 0,
        fail_count: 0,
        failed_recipients: Vec::new(),
        errors: Vec::new(),
        statuses: Default::default(),
    };
    for batch in batches {
        match spool_built(&api, batch).await {
            Ok(part) => {
                answer.success_count += part.success_count;
                answer.fail_count += part.fail_count;
                answer.failed_recipients.extend(part.failed_recipients);
                answer.errors.extend(part.errors);
            }
            Err(r) if answer.success_count + answer.fail_count == 0 => return r,
            Err(_) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some("list".into()),
                    format!(
                        "the spool failed after {} of {} subscribers were queued (the first ones, in address order); the rest were not",
                        answer.success_count + answer.fail_count,
                        total
                    ),
                );
            }
        }
    }
    answer.statuses = lists.counts(&list).unwrap_or_default();
    json(StatusCode::OK, &answer)
}

/// A 1x1 transparent GIF (the open pixel).
pub const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// RFC 8058 section 3.1: does this POST body carry `List-Unsubscribe=One-Click`, form-encoded
/// (`application/x-www-form-urlencoded`, percent-encoding allowed) or as a part of
/// `multipart/form-data` (which the RFC recommends)?
pub fn is_one_click(body: &[u8]) -> bool {
    if form_urlencoded::parse(body).any(|(k, v)| k == "List-Unsubscribe" && v == "One-Click") {
        return true;
    }
    let text = String::from_utf8_lossy(body);
    // multipart/form-data: a part named List-Unsubscribe whose value is One-Click.
    text.split("name=\"List-Unsubscribe\"").skip(1).any(|rest| {
        rest.split_once("\r\n\r\n")
            .or_else(|| rest.split_once("\n\n"))
            .is_some_and(|(_, value)| value.lines().next().map(str::trim) == Some("One-Click"))
    })
}

/// What a token says, when it is one of this MTA's.
fn mark<'a>(api: &'a Api, token: &str) -> Option<(&'a Tracking, Mark)> {
    let t = api.tracking.as_ref()?;
    Some((t, t.tracker.check(token)?))
}

fn no_such_link() -> Response {
    error(StatusCode::NOT_FOUND, None, "no such link".into())
}

async fn wrong_method() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        None,
        "use GET (or POST to unsubscribe)".into(),
    )
}

async fn open(
    State(api): State<Arc<Api>>,
    method: axum::http::Method,
    UrlPath(token): UrlPath<String>,
) -> Response {
    let Some((t, Mark::Open { message_id, rcpt })) = mark(&api, &token) else {
        return no_such_link();
    };
    if method == axum::http::Method::HEAD {
        // A HEAD fetches nothing: no open (link checkers and proxies send them).
        return ([(header::CONTENT_TYPE, "image/gif")], "").into_response();
    }
    t.events.emit(Event::Opened {
        rcpt,
        message_id,
        url: format!("/t/o/{token}"),
        http_status: 200,
        error: String::new(),
    });
    let headers = [
        (header::CONTENT_TYPE, "image/gif"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    (headers, PIXEL).into_response()
}

async fn click(
    State(api): State<Arc<Api>>,
    method: axum::http::Method,
    UrlPath(token): UrlPath<String>,
) -> Response {
    let Some((
        t,
        Mark::Click {
            message_id,
            rcpt,
            url,
        },
    )) = mark(&api, &token)
    else {
        return no_such_link();
    };
    let Ok(location) = header::HeaderValue::from_str(&url) else {
        return no_such_link();
    };
    if method == axum::http::Method::HEAD {
        return (StatusCode::FOUND, [(header::LOCATION, location)]).into_response();
    }
    t.events.emit(Event::Clicked {
        rcpt,
        message_id,
        url,
        http_status: 302,
        error: String::new(),
    });
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

/// RFC 8058 section 3.2: a GET must not unsubscribe (mail scanners follow links); it shows
/// the button that POSTs.
async fn unsubscribe_page(
    State(api): State<Arc<Api>>,
    UrlPath(token): UrlPath<String>,
) -> Response {
    if !matches!(mark(&api, &token), Some((_, Mark::Unsubscribe { .. }))) {
        return no_such_link();
    }
    let page = "<!doctype html><title>Unsubscribe</title><form method=post>\
        <input type=hidden name=List-Unsubscribe value=One-Click>\
        <button>Unsubscribe</button></form>\n";
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

/// RFC 8058 section 3.1: the POST body is `List-Unsubscribe=One-Click`; the address joins the
/// suppression list (the next injection to it is not queued).
async fn unsubscribe(
    State(api): State<Arc<Api>>,
    UrlPath(token): UrlPath<String>,
    body: Body,
) -> Response {
    let Some((t, Mark::Unsubscribe { message_id, rcpt })) = mark(&api, &token) else {
        return no_such_link();
    };
    let Ok(bytes) = axum::body::to_bytes(body, 4096).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            "the body is larger than 4096 bytes".into(),
        );
    };
    if !is_one_click(&bytes) {
        return error(
            StatusCode::BAD_REQUEST,
            None,
            "the body must be List-Unsubscribe=One-Click (RFC 8058)".into(),
        );
    }
    if let Some(lists) = &api.lists
        && let Err(e) = lists.set_status(&rcpt, "unsubscribed")
    {
        tracing::warn!("lists: {e}");
    }
    if !t.suppression.add(&rcpt, "unsubscribed") {
        // Already on the list (a second click): nothing new to log.
        return (StatusCode::OK, "unsubscribed\n").into_response();
    }
    t.events.emit(Event::SuppressionAdded {
        rcpt: rcpt.clone(),
        reason: "unsubscribed".into(),
    });
    t.events.emit(Event::Unsubscribed {
        rcpt,
        message_id,
        method: "one-click".into(),
        url: format!("/u/{token}"),
        http_status: 200,
        error: String::new(),
    });
    (StatusCode::OK, "unsubscribed\n").into_response()
}
