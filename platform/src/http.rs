//! The HTTP API (axum): `POST /api/inject/v1` behind bearer tokens and a body size limit.
//!
//! A request is answered only once every message it made is in the spool on disk; errors are
//! JSON, `{"error": {"status": 400, "field": "recipients[3].email", "message": "..."}}`, and a
//! refused request has queued nothing.

use crate::inject::{self, FieldError, Stamp};
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

    /// Is `Authorization: Bearer <token>` one of ours?
    fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(token) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
        else {
            return false;
        };
        let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        // Digests compared: what the comparison's time could tell is about a hash, not a token.
        self.digests.iter().any(|t| t.as_ref() == d.as_ref())
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

struct Api {
    cfg: ApiConfig,
    spool: Arc<dyn Spool>,
    clock: Arc<dyn Clock>,
    next_id: AtomicU64,
    tracking: Option<Tracking>,
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
) -> Router {
    let api = Arc::new(Api {
        cfg,
        spool,
        clock,
        next_id: AtomicU64::new(1),
        tracking,
    });
    Router::new()
        .route("/t/o/{token}", get(open))
        .route("/t/c/{token}", get(click))
        .route("/u/{token}", get(unsubscribe_page).post(unsubscribe))
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

async fn inject_v1(State(api): State<Arc<Api>>, headers: HeaderMap, body: Body) -> Response {
    if !api.cfg.tokens.admits(&headers) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            None,
            "a bearer token is needed (Authorization: Bearer <token>)".into(),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"mailsim\""),
        );
        return r;
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            "the body must be JSON (Content-Type: application/json)".into(),
        );
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
        return too_large();
    }
    let bytes = match axum::body::to_bytes(body, max).await {
        Ok(b) => b,
        Err(e) => {
            if e.into_inner().is::<http_body_util::LengthLimitError>() {
                return too_large();
            }
            return error(
                StatusCode::BAD_REQUEST,
                None,
                "the body could not be read".into(),
            );
        }
    };
    let date_s = (api.clock.now_ms() / 1000) as i64;
    let api2 = api.clone();
    // Checking and templating a large request is CPU work: off the I/O threads.
    let made = tokio::task::spawn_blocking(move || {
        let request = inject::parse(&bytes)?;
        inject::check(&request)?;
        let stamp = Stamp {
            date_s,
            id_prefix: &api2.cfg.id_prefix,
            next_id: &api2.next_id,
            tracker: api2.tracking.as_ref().map(|t| &t.tracker),
        };
        let made = inject::make(&request, &stamp)?;
        let emails: Vec<String> = request.recipients.into_iter().map(|r| r.email).collect();
        Ok::<_, FieldError>((made, emails))
    })
    .await;
    let (made, emails) = match made {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            let status = if e.message.contains("bytes of mail") {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            return field_error(status, e);
        }
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                format!("not queued: {e}"),
            );
        }
    };
    let message_ids: Vec<String> = made.iter().map(|m| m.message.message_id.clone()).collect();
    let targets: Vec<Vec<usize>> = made.iter().map(|m| m.recipients.clone()).collect();
    let batch = made.into_iter().map(|m| m.message).collect();
    let spooled = match api.spool.spool(batch).await {
        Ok(s) => s,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                format!("not queued: {e}"),
            );
        }
    };
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
    json(StatusCode::OK, &answer)
}

/// A 1x1 transparent GIF (the open pixel).
pub const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// RFC 8058 section 3.1: is this POST body (form-encoded) `List-Unsubscribe=One-Click`?
pub fn is_one_click(body: &[u8]) -> bool {
    String::from_utf8_lossy(body)
        .split('&')
        .any(|kv| kv.trim() == "List-Unsubscribe=One-Click")
}

/// What a token says, when it is one of this MTA's.
fn mark<'a>(api: &'a Api, token: &str) -> Option<(&'a Tracking, Mark)> {
    let t = api.tracking.as_ref()?;
    Some((t, t.tracker.check(token)?))
}

fn no_such_link() -> Response {
    error(StatusCode::NOT_FOUND, None, "no such link".into())
}

async fn open(State(api): State<Arc<Api>>, UrlPath(token): UrlPath<String>) -> Response {
    let Some((t, Mark::Open { message_id, rcpt })) = mark(&api, &token) else {
        return no_such_link();
    };
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

async fn click(State(api): State<Arc<Api>>, UrlPath(token): UrlPath<String>) -> Response {
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
    if t.suppression.add(&rcpt, "unsubscribed") {
        t.events.emit(Event::SuppressionAdded {
            rcpt: rcpt.clone(),
            reason: "unsubscribed".into(),
        });
    }
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
