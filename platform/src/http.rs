//! The HTTP API (axum): `POST /api/inject/v1` behind bearer tokens and a body size limit.
//!
//! A request is answered only once every message it made is in the spool on disk; errors are
//! JSON, `{"error": {"status": 400, "field": "recipients[3].email", "message": "..."}}`, and a
//! refused request has queued nothing.

// An `Err(Response)` here is the HTTP answer itself, handed to axum at once: boxing it would
// only move it.
#![allow(clippy::result_large_err)]

use crate::campaigns::{Campaign, Credit, Engagement, Outcome, Plan};
use crate::inject::{self, FieldError, InjectRequest, Stamp};
use crate::lists::{Lists, Subscriber};
use crate::track::{Hit, Mark, Repeats, Tracker};
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

/// Serve `router` on `listener` until `stop`: HTTP/1.1 (behind TLS with `tls`: the handshake
/// within the header timeout) with the header timeout, at most `CONNECTIONS_MAX` connections;
/// at `stop`, no new connection, and the open ones get 5 s to finish their request.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
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
                let tls = tls.clone();
                connections.spawn(async move {
                    let _permit = permit;
                    let mut http = hyper::server::conn::http1::Builder::new();
                    http.timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(HEADER_SECONDS_MAX);
                    match tls {
                        None => {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = http.serve_connection(io, service).await;
                        }
                        Some(tls) => {
                            let Ok(Ok(stream)) =
                                tokio::time::timeout(HEADER_SECONDS_MAX, tls.accept(stream)).await
                            else {
                                return;
                            };
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = http.serve_connection(io, service).await;
                        }
                    }
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
    /// How often a tracking link's hits are recorded.
    repeats: Repeats,
    lists: Option<Arc<Lists>>,
    /// Held while campaign mail is spooled: by the scheduler, or by a request sending its
    /// campaign at once (which the scheduler must not also send).
    sending: tokio::sync::Mutex<()>,
}

/// The MTA's open and click tracking and one-click unsubscribe, served beside the API: the
/// key and base URL, where the events go, and the suppression list an unsubscribe joins.
pub struct Tracking {
    pub tracker: Tracker,
    pub events: EventSink,
    pub suppression: Arc<Suppression>,
}

/// The API and its campaign scheduler over `spool`, dated by `clock`.
#[derive(Clone)]
pub struct Platform {
    api: Arc<Api>,
}

impl Platform {
    pub fn new(
        cfg: ApiConfig,
        spool: Arc<dyn Spool>,
        clock: Arc<dyn Clock>,
        tracking: Option<Tracking>,
        lists: Option<Arc<Lists>>,
    ) -> Platform {
        Platform {
            api: Arc::new(Api {
                cfg,
                spool,
                clock,
                next_id: AtomicU64::new(1),
                tracking,
                repeats: Repeats::default(),
                lists,
                sending: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The API's routes; with tracking, also `/t/o/<token>` (a 1x1 GIF, an `opened` event),
    /// `/t/c/<token>` (a 302 to the link, a `clicked` event) and `/u/<token>` (RFC 8058: GET
    /// shows a button, POST `List-Unsubscribe=One-Click` adds the address to the suppression
    /// list, an `unsubscribed` event). These take no bearer token; a token that is not the
    /// MTA's own gets 404 and nothing is logged.
    pub fn router(&self) -> Router {
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
                "/api/campaigns/{id}",
                get(campaign_report).fallback(|| async {
                    error(StatusCode::METHOD_NOT_ALLOWED, None, "use GET".into())
                }),
            )
            .route(
                "/api/inject/v1",
                post(inject_v1).fallback(|| async {
                    error(StatusCode::METHOD_NOT_ALLOWED, None, "use POST".into())
                }),
            )
            .fallback(|| async { error(StatusCode::NOT_FOUND, None, "no such endpoint".into()) })
            .with_state(self.api.clone())
    }

    /// An RFC 2369 mailto unsubscribe that reached the sender's MX (`mailsim mta --mx`): the
    /// token in its subject names the recipient and the message. Err says why nothing was
    /// done (no token of this MTA's), for the SMTP reply.
    pub async fn unsubscribe_by_mail(&self, subject: &str) -> Result<String, String> {
        let api = &self.api;
        let t = api
            .tracking
            .as_ref()
            .ok_or("this MTA does not track (no --http)")?;
        let Some(Mark::Unsubscribe { message_id, rcpt }) = t.tracker.mailto_subject(subject) else {
            return Err(
                "no unsubscribe token of this sender in the subject (reply to the address in the List-Unsubscribe header, keeping its subject)"
                    .into(),
            );
        };
        let url = format!("mailto:{}", crate::track::MAILTO_LOCAL);
        take_unsubscribe(api, t, message_id, rcpt.clone(), "mailto", url, 250).await;
        Ok(rcpt)
    }

    /// `email` joined the suppression list for `reason` (a hard bounce, a complaint): its
    /// status on every list follows, written before this returns (the report's SMTP answer
    /// comes after it).
    pub async fn subscriber_suppressed(&self, email: &str, reason: &str) {
        set_list_status(&self.api, email, crate::lists::status_for(reason)).await;
    }

    /// Send the scheduled campaigns as their plans allow (checked every second), until
    /// `stop`; campaigns left unfinished are taken up again at the next start.
    pub async fn run_campaigns(&self, stop: impl Future<Output = ()>) {
        let Some(lists) = self.api.lists.clone() else {
            return stop.await;
        };
        tokio::pin!(stop);
        // At `stop`, the batch being sent is finished and recorded (not cut between spool and
        // record, which would send it twice after a restart).
        let stopping = std::sync::atomic::AtomicBool::new(false);
        let mut credits = std::collections::HashMap::new();
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let due = send_due(&self.api, &lists, &stopping, &mut credits);
            tokio::pin!(due);
            let result = tokio::select! {
                r = &mut due => r,
                _ = &mut stop => {
                    stopping.store(true, std::sync::atomic::Ordering::Relaxed);
                    let r = due.await;
                    if let Err(e) = r {
                        tracing::warn!("campaigns: {e}");
                    }
                    return;
                }
            };
            if let Err(e) = result {
                tracing::warn!("campaigns: {e}");
            }
        }
    }
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

/// KumoMTA's counts: recipients queued, and those not queued with why.
#[derive(Serialize, Default)]
pub struct Counts {
    pub success_count: usize,
    pub fail_count: usize,
    pub failed_recipients: Vec<String>,
    pub errors: Vec<String>,
}

impl Counts {
    /// A recipient the suppression list kept out.
    fn suppressed(&mut self, email: String, reason: &str) {
        self.fail_count += 1;
        self.errors.push(format!("{email}: suppressed ({reason})"));
        self.failed_recipients.push(email);
    }
}

/// The answer to an injection: KumoMTA's counts, and what became of each recipient.
#[derive(Serialize)]
pub struct InjectResponse {
    #[serde(flatten)]
    pub counts: Counts,
    /// Every queued recipient, in the request's order.
    pub queued: Vec<QueuedRecipient>,
}

#[derive(Serialize)]
pub struct QueuedRecipient {
    pub email: String,
    pub queue_id: u64,
    pub message_id: String,
}

/// Ok when the request carries one of the API's bearer tokens; else the 401.
fn authorized(api: &Api, headers: &HeaderMap) -> Result<(), Response> {
    if let Some(why) = api.cfg.tokens.refuses(headers) {
        let mut r = error(StatusCode::UNAUTHORIZED, None, why.into());
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"mailsim\""),
        );
        return Err(r);
    }
    Ok(())
}

/// A request's JSON body, once the bearer token, the media type and the size are right.
async fn json_body(
    api: &Api,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, Response> {
    authorized(api, headers)?;
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
    read_body(headers, body, api.cfg.body_max, BODY_SECONDS_MAX).await
}

/// A request's body, at most `max` bytes (413 beyond, told by Content-Length or found while
/// reading), arrived within `within` (408 after: a client that stops sending does not hold
/// its connection, one of the `CONNECTIONS_MAX`, for longer).
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    within: Duration,
) -> Result<axum::body::Bytes, Response> {
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
    match tokio::time::timeout(within, axum::body::to_bytes(body, max)).await {
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            None,
            format!("the body did not arrive within {} s", within.as_secs()),
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

/// What became of one recipient of a spooled batch: its queue id and Message-ID, or why it
/// was not queued (the suppression list's reason).
type Each = Result<(u64, String), String>;

/// Spool built messages as one batch; what became of each recipient, in request order.
async fn spool_each(api: &Arc<Api>, (made, emails): Built) -> Result<Vec<Each>, Response> {
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
    let mut each: Vec<Each> = vec![Err("not made".into()); emails.len()];
    for (m, (outcomes, rcpts)) in spooled.iter().zip(&targets).enumerate() {
        for (outcome, &i) in outcomes.iter().zip(rcpts) {
            each[i] = match outcome {
                Ok(id) => Ok((*id, message_ids[m].clone())),
                Err(reason) => Err(reason.clone()),
            };
        }
    }
    Ok(each)
}

/// Spool built messages as one batch; the answer to an injection.
async fn spool_built(api: &Arc<Api>, built: Built) -> Result<InjectResponse, Response> {
    let emails = built.1.clone();
    let each = spool_each(api, built).await?;
    let mut answer = InjectResponse {
        counts: Counts::default(),
        queued: Vec::new(),
    };
    for (email, e) in emails.into_iter().zip(each) {
        match e {
            Ok((queue_id, message_id)) => {
                answer.counts.success_count += 1;
                answer.queued.push(QueuedRecipient {
                    email,
                    queue_id,
                    message_id,
                });
            }
            Err(reason) => answer.counts.suppressed(email, &reason),
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

/// The answer to a campaign sent at once: how the list's subscribers stood, and what was
/// queued.
#[derive(Serialize)]
pub struct CampaignResponse {
    /// The campaign's id (`GET /api/campaigns/<id>`; `campaign` in its `injected` events).
    pub campaign: u64,
    pub state: String,
    pub list: String,
    /// Active subscribers mailed.
    pub recipients: usize,
    #[serde(flatten)]
    pub counts: Counts,
    /// The list's subscribers by status after the campaign was queued.
    pub statuses: std::collections::BTreeMap<String, u64>,
}

/// The answer to a campaign scheduled for later or sent at a rate (202).
#[derive(Serialize)]
pub struct ScheduledResponse {
    pub campaign: u64,
    pub state: String,
    pub list: String,
    pub recipients: usize,
    pub send_at_ms: u64,
}

/// Recipients per batch of a campaign (each batch is spooled whole).
const CAMPAIGN_BATCH: usize = 1000;
/// The most mail one campaign may make (it is built whole before any is spooled).
const CAMPAIGN_BYTES_MAX: usize = 1024 * 1024 * 1024;

/// Run blocking work (SQLite, building messages) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Response> + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            e.to_string(),
        ))
    })
}

/// Name the subscriber a build error is about, not a position in a request the client never
/// sent.
fn about_subscriber(e: FieldError, chunk: &[Subscriber]) -> FieldError {
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
}

async fn campaigns(State(api): State<Arc<Api>>, headers: HeaderMap, body: Body) -> Response {
    match campaign(api, headers, body).await {
        Ok(r) | Err(r) => r,
    }
}

/// Check a campaign, build every message (a template error or a bad field stops it before
/// anyone is mailed), record it; send it now when its plan lets everything go at once, else
/// leave it to the scheduler.
async fn campaign(api: Arc<Api>, headers: HeaderMap, body: Body) -> Result<Response, Response> {
    let bytes = json_body(&api, &headers, body).await?;
    let Some(lists) = api.lists.clone() else {
        return Err(error(
            StatusCode::NOT_FOUND,
            None,
            "no lists on this MTA".into(),
        ));
    };
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let request = blocking(move || inject::parse_campaign(&bytes).map_err(refused)).await?;
    let now = api.clock.now_ms();
    let plan = Plan::of(&request, now).map_err(refused)?;
    let suppression = api.tracking.as_ref().map(|t| t.suppression.clone());
    let list = request.list.clone();
    let subscribers = {
        let (lists, list) = (lists.clone(), list.clone());
        blocking(move || {
            lists
                .active(&list, |e| suppression.as_ref().and_then(|s| s.reason(e)))
                .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, None, e))
        })
        .await?
    };
    if subscribers.is_empty() {
        let message = if lists.exists(&list).unwrap_or(false) {
            format!("{list:?} has no active subscriber")
        } else {
            format!("there is no list {list:?} (mailsim list import makes one)")
        };
        return Err(error(StatusCode::BAD_REQUEST, Some("list".into()), message));
    }
    let total = subscribers.len();
    let subscribers = Arc::new(subscribers);
    let (api2, subs, name) = (api.clone(), subscribers.clone(), request.name.clone());
    let batches = blocking(move || {
        let mut batches = Vec::new();
        let mut bytes = 0usize;
        for (k, chunk) in subs.chunks(CAMPAIGN_BATCH).enumerate() {
            let built = build(&api2, request.for_subscribers(chunk))
                .map_err(|e| refused(about_subscriber(e, chunk)))?;
            bytes += built.0.iter().map(|m| m.message.body.len()).sum::<usize>();
            if bytes > CAMPAIGN_BYTES_MAX {
                return Err(refused(FieldError {
                    field: Some("list".into()),
                    message: format!(
                        "the campaign makes more than {CAMPAIGN_BYTES_MAX} bytes of mail (at batch {k})"
                    ),
                    status: 413,
                }));
            }
            batches.push(built);
        }
        Ok(batches)
    })
    .await?;
    let _sending = api.sending.lock().await;
    let id = {
        let (lists, list, plan, subs) = (lists.clone(), list.clone(), plan.clone(), subscribers);
        blocking(move || {
            lists
                .create_campaign(&name, &list, &text, &plan, &subs, now)
                .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, None, e))
        })
        .await?
    };
    if !plan.immediate(now) {
        // Checked and recorded; the scheduler builds them again when they are due (with the
        // subscribers' fields and statuses as they are then).
        drop(batches);
        let answer = ScheduledResponse {
            campaign: id,
            state: "scheduled".into(),
            list,
            recipients: total,
            send_at_ms: plan.send_at_ms,
        };
        return Ok(json(StatusCode::ACCEPTED, &answer));
    }
    let mut answer = CampaignResponse {
        campaign: id,
        state: "sent".into(),
        list: list.clone(),
        recipients: total,
        counts: Counts::default(),
        statuses: Default::default(),
    };
    for (made, emails) in batches {
        let made = made
            .into_iter()
            .map(|mut m| {
                m.message.campaign = Some(id);
                m
            })
            .collect();
        let each = match spool_each(&api, (made, emails.clone())).await {
            Ok(each) => each,
            Err(_) => {
                let done = answer.counts.success_count + answer.counts.fail_count;
                let l = lists.clone();
                let _ = blocking(move || {
                    l.stop_campaign(id)
                        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, None, e))
                })
                .await;
                return Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some("list".into()),
                    format!(
                        "campaign {id}: the spool failed after {done} of {total} subscribers were dealt with (the first ones, in address order); the rest were not queued"
                    ),
                ));
            }
        };
        let mut outcomes = Vec::with_capacity(each.len());
        for (email, e) in emails.into_iter().zip(each) {
            outcomes.push(match e {
                Ok((_, message_id)) => {
                    answer.counts.success_count += 1;
                    Outcome::Queued { message_id }
                }
                Err(reason) => {
                    answer.counts.suppressed(email, &reason);
                    Outcome::Skipped(format!("suppressed ({reason})"))
                }
            });
        }
        record(&lists, id, outcomes).await?;
    }
    answer.statuses = lists.counts(&list).unwrap_or_default();
    Ok(json(StatusCode::OK, &answer))
}

/// Record the outcomes of a campaign's next subscribers.
async fn record(lists: &Arc<Lists>, id: u64, outcomes: Vec<Outcome>) -> Result<(), Response> {
    let lists = lists.clone();
    blocking(move || {
        let c = lists
            .campaign(id)
            .and_then(|c| c.ok_or_else(|| format!("campaign {id} is gone")))
            .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, None, e))?;
        lists
            .record_outcomes(&c, &outcomes)
            .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, None, e))
    })
    .await
}

/// Run a database call on a blocking thread (SQLite is not for the async workers, which also
/// serve SMTP and the tracking URLs).
async fn db<T: Send + 'static>(
    lists: &Arc<Lists>,
    f: impl FnOnce(&Lists) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let lists = lists.clone();
    tokio::task::spawn_blocking(move || f(&lists))
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
}

/// Send what the unfinished campaigns' plans allow by now, a batch at a time.
async fn send_due(
    api: &Arc<Api>,
    lists: &Arc<Lists>,
    stopping: &std::sync::atomic::AtomicBool,
    credits: &mut std::collections::HashMap<u64, Credit>,
) -> Result<(), String> {
    let why = |r: Response| format!("status {}", r.status());
    let _sending = api.sending.lock().await;
    let ids = db(lists, |l| l.unfinished_campaigns()).await?;
    for id in ids {
        // The plan's current rate, not only its allowance: the allowance counts from the send
        // time, and what a stopped MTA did not send must not leave at once. Set at the first
        // look of this tick.
        let (mut budget, mut start_budget) = (None, 0);
        loop {
            if stopping.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(());
            }
            let Some(c) = db(lists, move |l| l.campaign(id)).await? else {
                break;
            };
            let now = api.clock.now_ms();
            let budget = budget.get_or_insert_with(|| {
                start_budget = match c.plan.rate_at(now) {
                    None => u64::MAX,
                    Some(per_hour) => credits
                        .entry(id)
                        .or_insert_with(|| Credit::new(now))
                        .refill(per_hour, now),
                };
                start_budget
            });
            let allowed = c.plan.allowance(now).min(c.members);
            if allowed <= c.next || *budget == 0 {
                break;
            }
            let n = (allowed - c.next).min(CAMPAIGN_BATCH as u64).min(*budget);
            *budget -= n;
            let suppression = api.tracking.as_ref().map(|t| t.suppression.clone());
            let c2 = c.clone();
            let batch = db(lists, move |l| {
                l.campaign_batch(&c2, n, |e| suppression.as_ref().and_then(|s| s.reason(e)))
            })
            .await?;
            let outcomes = send_batch(api, &c, batch).await.map_err(why)?;
            record(lists, id, outcomes).await.map_err(why)?;
        }
        if let (Some(credit), Some(left)) = (credits.get_mut(&id), budget) {
            credit.spend(start_budget - left);
        }
    }
    Ok(())
}

/// Build and spool one batch of a scheduled campaign; each subscriber's outcome, in order.
async fn send_batch(
    api: &Arc<Api>,
    c: &Campaign,
    batch: Vec<crate::campaigns::Member>,
) -> Result<Vec<Outcome>, Response> {
    let mut outcomes: Vec<Option<Outcome>> = batch
        .iter()
        .map(|b| {
            b.as_ref()
                .err()
                .map(|(_, why)| Outcome::Skipped(why.clone()))
        })
        .collect();
    let mailable: Vec<(usize, Subscriber)> = batch
        .into_iter()
        .enumerate()
        .filter_map(|(i, b)| b.ok().map(|s| (i, s)))
        .collect();
    if !mailable.is_empty() {
        let (api2, text, id) = (api.clone(), c.request.clone(), c.id);
        let subs: Vec<Subscriber> = mailable.iter().map(|(_, s)| s.clone()).collect();
        // Built together; when that fails (a subscriber's fields changed since the campaign
        // was checked), one by one, so that only the bad ones fail.
        let built = blocking(move || {
            let request = inject::parse_campaign(text.as_bytes()).map_err(refused)?;
            let mut one = |chunk: &[Subscriber]| {
                let mut r = request.for_subscribers(chunk);
                r.campaign = Some(id);
                build(&api2, r).map_err(|e| about_subscriber(e, chunk).message)
            };
            Ok(match one(&subs) {
                Ok(built) => vec![Ok(built)],
                Err(_) => subs.chunks(1).map(&mut one).collect(),
            })
        })
        .await?;
        let mut at = mailable.iter().map(|(i, _)| *i);
        for b in built {
            match b {
                Ok(built) => {
                    for e in spool_each(api, built).await? {
                        let Some(i) = at.next() else { break };
                        outcomes[i] = Some(match e {
                            Ok((_, message_id)) => Outcome::Queued { message_id },
                            Err(reason) => Outcome::Skipped(format!("suppressed ({reason})")),
                        });
                    }
                }
                Err(message) => {
                    if let Some(i) = at.next() {
                        outcomes[i] = Some(Outcome::Failed(message));
                    }
                }
            }
        }
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Failed("not built".into())))
        .collect())
}

/// `GET /api/campaigns/<id>`: the campaign's progress and engagement.
async fn campaign_report(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Segment(id): Segment,
) -> Response {
    if let Err(r) = authorized(&api, &headers) {
        return r;
    }
    let Some(lists) = api.lists.clone() else {
        return error(StatusCode::NOT_FOUND, None, "no lists on this MTA".into());
    };
    let Ok(id) = id.parse::<u64>() else {
        return error(
            StatusCode::NOT_FOUND,
            None,
            format!("{id:?} is not a campaign id (a number)"),
        );
    };
    let report = blocking(move || {
        lists
            .campaign_report(id)
            .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, None, e))
    })
    .await;
    match report {
        Ok(Some(r)) => json(StatusCode::OK, &r),
        Ok(None) => error(StatusCode::NOT_FOUND, None, format!("no campaign {id}")),
        Err(r) => r,
    }
}

/// Count a tracking request towards its campaign (if the message is a campaign's).
/// Done on a blocking thread, not awaited: the pixel or the redirect does not wait for it.
fn note(api: &Api, message_id: &str, rcpt: &str, what: Engagement) {
    let Some(lists) = api.lists.clone() else {
        return;
    };
    let (message_id, rcpt) = (message_id.to_string(), rcpt.to_string());
    tokio::task::spawn_blocking(move || {
        if let Err(e) = lists.note_engagement(&message_id, &rcpt, what) {
            tracing::warn!("lists: {e}");
        }
    });
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

/// A path parameter, percent-decoded. One that does not decode to UTF-8 names nothing this
/// server has (tokens and campaign ids are ASCII): 404 with the JSON error body every answer
/// has, not axum's plain-text rejection (found by an independent review).
struct Segment(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Segment {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match <UrlPath<String> as axum::extract::FromRequestParts<S>>::from_request_parts(
            parts, state,
        )
        .await
        {
            Ok(UrlPath(segment)) => Ok(Segment(segment)),
            Err(rejection) => Err(error(
                StatusCode::NOT_FOUND,
                None,
                format!("no such resource ({})", rejection.body_text()),
            )),
        }
    }
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
    Segment(token): Segment,
) -> Response {
    let Some((t, mark @ Mark::Open { .. })) = mark(&api, &token) else {
        return no_such_link();
    };
    // A HEAD fetches nothing: no open (link checkers and proxies send them). Its answer has
    // the GET's fields, Content-Length included (RFC 9110 section 9.3.2); the server sends
    // no body.
    if method != axum::http::Method::HEAD && recorded(&api, &mark, "open") {
        let Mark::Open { message_id, rcpt } = mark else {
            unreachable!("matched as an open")
        };
        note(&api, &message_id, &rcpt, Engagement::Open);
        t.events.emit(Event::Opened {
            rcpt,
            message_id,
            url: format!("/t/o/{token}"),
            http_status: 200,
            error: String::new(),
        });
    }
    let headers = [
        (header::CONTENT_TYPE, "image/gif"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    (headers, PIXEL).into_response()
}

/// Whether this hit of a tracking link is recorded ([`Repeats`]): a link requested more often
/// than a reader would is answered as usual, with a warning when its hits stop being recorded,
/// not as events.
fn recorded(api: &Api, mark: &Mark, what: &str) -> bool {
    match api.repeats.hit(mark, api.clock.now_ms()) {
        Hit::Recorded => true,
        Hit::FirstRefused => {
            let (message_id, rcpt) = mark.message_and_rcpt();
            tracing::warn!(
                "tracking: the {what} link of {message_id} to {rcpt} is requested faster than hits are recorded ({} at once, then one a minute per link; {} at once, then ten a minute per recipient); the rest are answered, not recorded",
                Repeats::BURST,
                Repeats::RCPT_BURST
            );
            false
        }
        Hit::Refused => false,
    }
}

/// A link as a browser sends it: the bytes of its UTF-8 beyond ASCII percent-encoded (the URL
/// Standard), for a Location field (an independent review found them sent raw). The event keeps
/// the link as written.
fn ascii_url(url: &str) -> String {
    let mut encoded = String::with_capacity(url.len());
    for b in url.bytes() {
        if b.is_ascii() {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    encoded
}

async fn click(
    State(api): State<Arc<Api>>,
    method: axum::http::Method,
    Segment(token): Segment,
) -> Response {
    let Some((t, mark @ Mark::Click { .. })) = mark(&api, &token) else {
        return no_such_link();
    };
    let Mark::Click { url, .. } = &mark else {
        unreachable!("matched as a click")
    };
    let Ok(location) = header::HeaderValue::from_str(&ascii_url(url)) else {
        return no_such_link();
    };
    let recorded = method != axum::http::Method::HEAD && recorded(&api, &mark, "click");
    let Mark::Click {
        message_id,
        rcpt,
        url,
    } = mark
    else {
        unreachable!("matched as a click")
    };
    if !recorded {
        // A HEAD (link checkers and proxies send them) or a link requested too often.
        return (StatusCode::FOUND, [(header::LOCATION, location)]).into_response();
    }
    note(&api, &message_id, &rcpt, Engagement::Click(url.clone()));
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
async fn unsubscribe_page(State(api): State<Arc<Api>>, Segment(token): Segment) -> Response {
    if !matches!(mark(&api, &token), Some((_, Mark::Unsubscribe { .. }))) {
        return no_such_link();
    }
    unsubscribe_page_response()
}

/// The page a GET of a one-click URL shows: the button that POSTs `List-Unsubscribe=One-Click`
/// (RFC 8058 section 3.2: a GET must not unsubscribe). The scenario sender's web serves it too.
pub fn unsubscribe_page_response() -> Response {
    let page = "<!doctype html><title>Unsubscribe</title><form method=post>\
        <input type=hidden name=List-Unsubscribe value=One-Click>\
        <button>Unsubscribe</button></form>\n";
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

/// RFC 8058 section 3.1: the POST body is `List-Unsubscribe=One-Click`; the address joins the
/// suppression list (the next injection to it is not queued).
async fn unsubscribe(
    State(api): State<Arc<Api>>,
    Segment(token): Segment,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some((t, Mark::Unsubscribe { message_id, rcpt })) = mark(&api, &token) else {
        return no_such_link();
    };
    // A one-click body is a few dozen bytes: it gets the header's time, not an API body's
    // (an independent review held every connection with stalled unsubscribe bodies).
    let bytes = match read_body(&headers, body, 4096, HEADER_SECONDS_MAX).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    if !is_one_click(&bytes) {
        return error(
            StatusCode::BAD_REQUEST,
            None,
            "the body must be List-Unsubscribe=One-Click (RFC 8058)".into(),
        );
    }
    take_unsubscribe(
        &api,
        t,
        message_id,
        rcpt,
        "one-click",
        format!("/u/{token}"),
        200,
    )
    .await;
    (StatusCode::OK, "unsubscribed\n").into_response()
}

/// An unsubscribe taken: the subscriber's status on every list, the campaign's counter, the
/// suppression list, and the `suppression_added` and `unsubscribed` events (none when the
/// address was already unsubscribed: a second click logs nothing).
async fn take_unsubscribe(
    api: &Api,
    t: &Tracking,
    message_id: String,
    rcpt: String,
    method: &str,
    url: String,
    status: u16,
) {
    set_list_status(api, &rcpt, "unsubscribed").await;
    if !t.suppression.add(&rcpt, "unsubscribed") {
        // Already on the suppression list (a second click, or a bounce before): nothing new,
        // for the log or for the campaign's count.
        return;
    }
    note(api, &message_id, &rcpt, Engagement::Unsubscribe);
    t.events.emit(Event::SuppressionAdded {
        rcpt: rcpt.clone(),
        reason: "unsubscribed".into(),
    });
    t.events.emit(Event::Unsubscribed {
        rcpt,
        message_id,
        method: method.into(),
        url,
        http_status: status,
        error: String::new(),
    });
}

/// `email`'s status on every list, written (on a blocking thread) before this returns: the
/// answer to what changed it (an unsubscribe's 200 or 250, a report's 250) comes after the
/// lists show it. A write that fails is logged; the suppression list still holds the address.
async fn set_list_status(api: &Api, email: &str, status: &'static str) {
    let Some(lists) = api.lists.clone() else {
        return;
    };
    let email = email.to_string();
    let written = tokio::task::spawn_blocking(move || lists.set_status(&email, status)).await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("lists: {e}"),
        Err(e) => tracing::warn!("lists: the write did not finish: {e}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_link_beyond_ascii_is_percent_encoded_for_location() {
        assert_eq!(
            super::ascii_url("https://shop.test/caf\u{e9}?q=\u{fc}ber&a=1"),
            "https://shop.test/caf%C3%A9?q=%C3%BCber&a=1"
        );
        assert_eq!(
            super::ascii_url("https://shop.test/a%20b"),
            "https://shop.test/a%20b"
        );
    }
}
