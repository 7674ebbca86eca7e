//! HTTP on both sides of engagement.
//!
//! * [`fetch`]: a simulated recipient's request (GET an image or a link, POST an RFC 8058
//!   one-click unsubscribe) over the environment's connector: real sockets in live mode,
//!   in-memory pipes in virtual mode. Only hosts in 127.0.0.0/8 are asked; any other is
//!   refused, and the refusal is what the recipient's event records.
//! * [`SenderWeb`]: the sender's own tracking and unsubscribe server (axum): `/t/o/<token>`
//!   answers a 1x1 GIF (an open), `/t/c/<token>` redirects to the link the token names (a
//!   click), `/u/<token>` takes the one-click POST (RFC 8058) and puts the address on the
//!   suppression list; a GET there shows a page with the button (RFC 8058 section 3.2: a GET
//!   must not unsubscribe). Tokens are HMAC-SHA256-signed: a forged or altered one gets 404
//!   and nothing is recorded. It keeps what the sender knows of each recipient's engagement
//!   (for sunsetting the unengaged).
//!
//! The web server is served as a [`StreamService`]: the environment binds it on loopback
//! (live) or registers it in the virtual network; the HTTP tracking port is plain, the
//! unsubscribe port TLS (RFC 8058 requires an HTTPS URI), with a certificate made at start.

use crate::env::Io;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::BodyExt;
use mailsim_events::{Event, EventSink};
use mailsim_mta::Connector;
use mailsim_mta::suppression::Suppression;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A server of byte streams: each accepted connection and its peer.
pub type StreamService =
    Arc<dyn Fn(Box<dyn Io>, SocketAddr) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// An HTTP/1.1 server of `router` over each stream, behind TLS when `tls` is given.
pub fn http_service(router: Router, tls: Option<tokio_rustls::TlsAcceptor>) -> StreamService {
    Arc::new(move |stream: Box<dyn Io>, _peer| {
        let (router, tls) = (router.clone(), tls.clone());
        Box::pin(async move {
            let service = hyper_util::service::TowerToHyperService::new(router);
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(tls) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(Duration::from_secs(10), tls.accept(stream)).await
                    else {
                        return;
                    };
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = http.serve_connection(io, service).await;
                }
                None => {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = http.serve_connection(io, service).await;
                }
            }
        })
    })
}

/// The recipient domains' MTA-STS web servers (RFC 8461 section 3.3) as one: the policy of the
/// domain the Host header names, at `/.well-known/mta-sts.txt`, as `text/plain`; 404 for
/// anything else.
pub fn sts_router(sites: &[crate::world::StsSite]) -> Router {
    let policies: Arc<HashMap<String, String>> = Arc::new(
        sites
            .iter()
            .map(|s| (format!("mta-sts.{}", s.domain), s.policy.clone()))
            .collect(),
    );
    Router::new().route(
        "/.well-known/mta-sts.txt",
        get(move |headers: axum::http::HeaderMap| {
            let policies = policies.clone();
            async move {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name))
                    .unwrap_or("")
                    .to_ascii_lowercase();
                match policies.get(&host) {
                    Some(policy) => (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "text/plain")],
                        policy.clone(),
                    )
                        .into_response(),
                    None => StatusCode::NOT_FOUND.into_response(),
                }
            }
        }),
    )
}

/// Is this address one a simulated recipient may ask (127.0.0.0/8)? The MTA's rule for its
/// policy fetches too.
pub use mailsim_mta::sts::allowed;

/// The recipients' HTTPS client: it trusts the run's own servers' certificates only (none:
/// no HTTPS request succeeds). Built once, shared by every request.
#[derive(Clone, Default)]
pub struct Trust {
    connector: Option<tokio_rustls::TlsConnector>,
}

impl Trust {
    pub fn of(certs_der: &[Vec<u8>]) -> Result<Trust, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs_der {
            roots
                .add(rustls::pki_types::CertificateDer::from(c.clone()))
                .map_err(|e| e.to_string())?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Trust {
            connector: Some(tokio_rustls::TlsConnector::from(Arc::new(config))),
        })
    }

    fn connector(&self) -> Result<&tokio_rustls::TlsConnector, String> {
        self.connector
            .as_ref()
            .ok_or_else(|| "TLS: no certificate is trusted in this run".to_string())
    }
}

/// The most of a response body a recipient reads (the rest is left unread and the connection
/// closed).
pub const RESPONSE_BYTES_MAX: usize = 1024 * 1024;

/// A recipient's HTTP request: the status of the answer, or why there was none.
pub async fn fetch<C: Connector>(
    connector: &C,
    trust: &Trust,
    post: Option<&'static str>,
    url: &str,
) -> Result<u16, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        other => return Err(format!("unsupported scheme {other:?} in {url:?}")),
    };
    let host = uri.host().unwrap_or("").trim_matches(['[', ']']);
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::from([127, 0, 0, 1])
    } else {
        host.parse()
            .map_err(|_| format!("refused: {host:?} is not an address in 127.0.0.0/8"))?
    };
    if !allowed(ip) {
        tracing::warn!("refused a request to {host}: outside 127.0.0.0/8");
        return Err(format!("refused: {ip} is outside 127.0.0.0/8"));
    }
    let port = match (uri.port(), uri.port_u16()) {
        (None, _) => {
            if https {
                443
            } else {
                80
            }
        }
        (Some(_), Some(p)) => p,
        (Some(p), None) => return Err(format!("bad port {p} in {url:?}")),
    };
    let addr = SocketAddr::new(ip, port);
    let request = hyper::Request::builder()
        .method(if post.is_some() { "POST" } else { "GET" })
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, uri.authority().map_or(host, |a| a.as_str()))
        .header(header::USER_AGENT, "mailsim-recipient/1")
        .header(
            header::CONTENT_TYPE,
            if post.is_some() {
                "application/x-www-form-urlencoded"
            } else {
                "text/plain"
            },
        )
        .body(http_body_util::Full::new(bytes_of(post.unwrap_or(""))))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let stream = connector.connect(addr).await.map_err(|e| e.to_string())?;
        if https {
            let name = rustls::pki_types::ServerName::IpAddress(ip.into());
            let tls = trust
                .connector()?
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            send(tls, request).await
        } else {
            send(stream, request).await
        }
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| "no answer in 30 s".to_string())?
}

fn bytes_of(s: &'static str) -> hyper::body::Bytes {
    hyper::body::Bytes::from_static(s.as_bytes())
}

async fn send<S>(
    stream: S,
    request: hyper::Request<http_body_util::Full<hyper::body::Bytes>>,
) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string());
    let status = match response {
        Ok(r) => {
            let status = r.status().as_u16();
            // Read the body, as a client does, up to a bound: a recipient's mail client does
            // not load a huge image into memory, and neither does this one.
            let _ = http_body_util::Limited::new(r.into_body(), RESPONSE_BYTES_MAX)
                .collect()
                .await;
            Ok(status)
        }
        Err(e) => Err(e),
    };
    drop(sender);
    let _ = driver.await;
    status
}

/// What a token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Open { rcpt: String },
    Click { rcpt: String, url: String },
    Unsubscribe { rcpt: String },
}

/// Signs and checks tokens with one key (mailsim-platform's signer: the MTA's tracking signs
/// its own the same way).
#[derive(Clone)]
pub struct Tokens {
    signer: mailsim_platform::track::Signer,
}

impl Tokens {
    pub fn new(secret: &[u8; 32]) -> Tokens {
        Tokens {
            signer: mailsim_platform::track::Signer::new(secret),
        }
    }

    /// `base64url(payload).base64url(its HMAC-SHA256)`.
    pub fn sign(&self, t: &Token) -> String {
        let payload = match t {
            Token::Open { rcpt } => format!("o\n{rcpt}"),
            Token::Click { rcpt, url } => format!("c\n{rcpt}\n{url}"),
            Token::Unsubscribe { rcpt } => format!("u\n{rcpt}"),
        };
        self.signer.sign(&payload)
    }

    pub fn check(&self, token: &str) -> Option<Token> {
        let text = self.signer.check(token)?;
        let mut parts = text.splitn(3, '\n');
        let (kind, rcpt) = (parts.next()?, parts.next()?.to_string());
        match (kind, parts.next()) {
            ("o", None) => Some(Token::Open { rcpt }),
            ("c", Some(url)) => Some(Token::Click {
                rcpt,
                url: url.to_string(),
            }),
            ("u", None) => Some(Token::Unsubscribe { rcpt }),
            _ => None,
        }
    }
}

/// What the sender knows of one recipient.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Engagement {
    /// Messages sent since the last open or click (or since the first).
    pub mailed_since: u32,
    pub opens: u32,
    pub clicks: u32,
}

/// The sender's tracking and unsubscribe server, and what it has learnt.
pub struct SenderWeb {
    pub tokens: Tokens,
    engagement: Mutex<HashMap<String, Engagement>>,
    suppression: Arc<Suppression>,
    events: EventSink,
}

/// Where the campaign's URLs point.
#[derive(Clone)]
pub struct Tracking {
    pub tokens: Tokens,
    /// `http://127.0.0.1:P` (opens and clicks).
    pub http_base: String,
    /// `https://127.0.0.1:P` (unsubscribe).
    pub https_base: String,
}

impl SenderWeb {
    pub fn new(secret: &[u8; 32], suppression: Arc<Suppression>, events: EventSink) -> Arc<Self> {
        Arc::new(SenderWeb {
            tokens: Tokens::new(secret),
            engagement: Mutex::new(HashMap::new()),
            suppression,
            events,
        })
    }

    fn with<T>(&self, rcpt: &str, f: impl FnOnce(&mut Engagement) -> T) -> T {
        let mut map = self.engagement.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(rcpt.to_ascii_lowercase()).or_default())
    }

    /// A message is being sent to `rcpt`.
    pub fn mailed(&self, rcpt: &str) {
        self.with(rcpt, |e| e.mailed_since += 1);
    }

    pub fn engagement(&self, rcpt: &str) -> Engagement {
        self.with(rcpt, |e| *e)
    }

    /// The router: tracking and unsubscribe.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/t/o/{token}", get(open))
            .route("/t/c/{token}", get(click))
            .route("/u/{token}", get(unsubscribe_page).post(unsubscribe))
            .with_state(self.clone())
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "no such link\n").into_response()
}

async fn open(State(web): State<Arc<SenderWeb>>, Path(token): Path<String>) -> Response {
    let Some(Token::Open { rcpt }) = web.tokens.check(&token) else {
        return not_found();
    };
    web.with(&rcpt, |e| {
        e.opens += 1;
        e.mailed_since = 0;
    });
    (
        [(header::CONTENT_TYPE, "image/gif")],
        mailsim_platform::http::PIXEL,
    )
        .into_response()
}

async fn click(State(web): State<Arc<SenderWeb>>, Path(token): Path<String>) -> Response {
    let Some(Token::Click { rcpt, url }) = web.tokens.check(&token) else {
        return not_found();
    };
    web.with(&rcpt, |e| {
        e.clicks += 1;
        e.mailed_since = 0;
    });
    match header::HeaderValue::from_str(&url) {
        Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
        Err(_) => not_found(),
    }
}

async fn unsubscribe_page(
    State(web): State<Arc<SenderWeb>>,
    Path(token): Path<String>,
) -> Response {
    if !matches!(web.tokens.check(&token), Some(Token::Unsubscribe { .. })) {
        return not_found();
    }
    mailsim_platform::http::unsubscribe_page_response()
}

/// RFC 8058 section 3.1: the POST body is `List-Unsubscribe=One-Click`.
async fn unsubscribe(
    State(web): State<Arc<SenderWeb>>,
    Path(token): Path<String>,
    body: Body,
) -> Response {
    let Some(Token::Unsubscribe { rcpt }) = web.tokens.check(&token) else {
        return not_found();
    };
    let Ok(bytes) = axum::body::to_bytes(body, 4096).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large\n").into_response();
    };
    if !mailsim_platform::http::is_one_click(&bytes) {
        return (
            StatusCode::BAD_REQUEST,
            "the body must be List-Unsubscribe=One-Click (RFC 8058)\n",
        )
            .into_response();
    }
    if web.suppression.add(&rcpt, "unsubscribed") {
        web.events.emit(Event::SuppressionAdded {
            rcpt: rcpt.clone(),
            reason: "unsubscribed".into(),
        });
    }
    (StatusCode::OK, "unsubscribed\n").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[test]
    fn tokens_round_trip_and_refuse_forgeries() {
        let t = Tokens::new(&[7; 32]);
        for tok in [
            Token::Open {
                rcpt: "a@b.test".into(),
            },
            Token::Click {
                rcpt: "a@b.test".into(),
                url: "https://example.test/x?y=1".into(),
            },
            Token::Unsubscribe {
                rcpt: "a@b.test".into(),
            },
        ] {
            let s = t.sign(&tok);
            assert_eq!(t.check(&s), Some(tok.clone()));
            // Another key, an altered payload, a cut tag: refused.
            assert_eq!(Tokens::new(&[8; 32]).check(&s), None);
            let (p, tag) = s.split_once('.').unwrap();
            let other = URL_SAFE_NO_PAD.encode("o\nsomeone@else.test");
            assert_eq!(t.check(&format!("{other}.{tag}")), None);
            assert_eq!(t.check(&format!("{p}.{}", &tag[..10])), None);
        }
        assert_eq!(t.check("garbage"), None);
        assert_eq!(t.check(""), None);
    }

    #[test]
    fn only_loopback_is_allowed() {
        assert!(allowed("127.0.0.1".parse().unwrap()));
        assert!(allowed("127.200.3.4".parse().unwrap()));
        assert!(!allowed("10.0.0.1".parse().unwrap()));
        assert!(!allowed("::1".parse().unwrap()));
        assert!(!allowed("93.184.216.34".parse().unwrap()));
    }
}
