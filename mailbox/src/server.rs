//! The standalone mailbox server (`mailsim mailbox`): inbound SMTP for its domains (the MX
//! role), submission with STARTTLS and AUTH, IMAP and POP3 over one Maildir store, quota and
//! retention.

use crate::auth::Verifier;
use crate::folders::{FolderError, Mailstore};
use crate::login::{LoginGuard, LoginLimits, LoginOutcome};
use crate::shell::{self, Timeouts};
use crate::users::Users;
use crate::{imap, pop3};
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mailsim_events::{Clock, SystemClock};
use mailsim_smtp::Reply;
use mailsim_smtp::net::ConnectionLimiter;
use mailsim_smtp::server::{Backend, ServerConfig, SessionInfo, Transaction};
use mailsim_smtp::tls::Tls;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Everything `mailsim mailbox` is told.
pub struct MailboxConfig {
    pub data: PathBuf,
    pub hostname: String,
    pub users: Users,
    pub smtp: Option<SocketAddr>,
    pub submission: Option<SocketAddr>,
    pub imap: Option<SocketAddr>,
    pub pop3: Option<SocketAddr>,
    pub tls: Option<Tls>,
    /// The resolvers for SPF/DKIM/DMARC (the system's when absent).
    pub dns: Option<(ResolverConfig, ResolverOpts)>,
    /// Where submitted mail for other domains goes (an MTA's SMTP port).
    pub relay: Option<SocketAddr>,
    /// Per-user bytes (0: unlimited).
    pub quota_bytes: u64,
    /// Remove messages older than this many days.
    pub retention_days: Option<u32>,
    pub message_bytes_max: usize,
    /// Password checks: concurrency, delays and per-address failure limits.
    pub login: LoginLimits,
    /// IMAP and POP3 timeouts before login and per command.
    pub timeouts: Timeouts,
    /// SMTP and submission: per command, per message and (submission) to authenticate.
    pub smtp_command_timeout: Duration,
    pub smtp_data_timeout: Duration,
    pub smtp_login_timeout: Duration,
    /// IMAP, logged in: a client silent this long, in IDLE or not, is logged out (30 minutes,
    /// RFC 3501 section 5.4's floor).
    pub imap_idle_timeout: Duration,
    /// Rejected RCPTs in one SMTP session before it is closed (recipient harvesting).
    pub rcpt_rejects_max: u32,
    pub connections_per_ip_max: usize,
    /// Internal dates, Received headers, retention.
    pub clock: Arc<dyn Clock>,
}

impl MailboxConfig {
    pub fn new(data: PathBuf, users: Users) -> Self {
        MailboxConfig {
            data,
            hostname: "mail.mailsim.test".into(),
            users,
            smtp: None,
            submission: None,
            imap: None,
            pop3: None,
            tls: None,
            dns: None,
            relay: None,
            quota_bytes: 0,
            retention_days: None,
            message_bytes_max: 25 * 1024 * 1024,
            login: LoginLimits::default(),
            timeouts: Timeouts::default(),
            smtp_command_timeout: Duration::from_secs(300),
            smtp_data_timeout: Duration::from_secs(600),
            smtp_login_timeout: Duration::from_secs(180),
            imap_idle_timeout: Duration::from_secs(30 * 60),
            rcpt_rejects_max: 20,
            connections_per_ip_max: 50,
            clock: Arc::new(SystemClock),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Port 25: mail for local users from anyone, nothing else.
    Mx,
    /// Port 587: authenticated users only, any destination.
    Submission,
}

/// The SMTP decisions of the mailbox server.
pub struct MailboxBackend {
    role: Role,
    users: Arc<Users>,
    guard: Arc<LoginGuard>,
    store: Arc<Mailstore>,
    verifier: Option<Arc<Verifier>>,
    relay: Option<SocketAddr>,
    hostname: String,
}

fn domain_of(addr: &str) -> &str {
    addr.rsplit_once('@').map_or("", |(_, d)| d)
}

/// `postmaster` (no domain) or `postmaster@` one of the served domains.
fn is_postmaster(rcpt: &str, users: &Users) -> bool {
    match rcpt.rsplit_once('@') {
        None => rcpt.eq_ignore_ascii_case("postmaster"),
        Some((local, domain)) => {
            local.eq_ignore_ascii_case("postmaster") && users.is_local_domain(domain)
        }
    }
}

impl MailboxBackend {
    /// The mailbox a local recipient's mail goes to; postmaster without a domain is the first
    /// served domain's postmaster (readable once an account of that name exists).
    fn mailbox_of(&self, rcpt: &str) -> String {
        if !rcpt.contains('@') {
            let domain = self.users.domains().first().cloned().unwrap_or_default();
            return format!("postmaster@{}", domain.to_ascii_lowercase());
        }
        self.users.canonical(rcpt)
    }

    /// The Received field this server adds; `for` names the recipient when the copy is for
    /// one (a copy relayed to several must not show each of them the others: Bcc).
    fn received(&self, info: &SessionInfo, rcpt: Option<&str>) -> String {
        let with = match (info.tls, info.user.is_some()) {
            (true, true) => "ESMTPSA",
            (true, false) => "ESMTPS",
            (false, true) => "ESMTPA",
            (false, false) => "ESMTP",
        };
        let date = chrono::DateTime::from_timestamp_millis(self.store.clock().now_ms() as i64)
            .unwrap_or_default()
            .to_rfc2822();
        let rcpt = rcpt.map(|r| format!("\r\n\tfor <{r}>")).unwrap_or_default();
        format!(
            "Received: from {} ([{}])\r\n\tby {} (mailsim) with {with}{rcpt}; {date}\r\n",
            info.helo,
            info.peer.ip(),
            self.hostname
        )
    }

    /// Relay one message to the MTA, one transaction per recipient: for each recipient, None
    /// when the MTA took it, or the refusal to give back (a session that broke refuses the
    /// recipient it was at and those after it). An error when no transaction could begin.
    async fn relay(
        &self,
        from: &str,
        rcpts: &[String],
        message: &[u8],
    ) -> Result<Vec<Option<Reply>>, Reply> {
        let Some(addr) = self.relay else {
            return Err(Reply::new(550, (5, 7, 1), "no outbound relay configured"));
        };
        let timeouts = mailsim_smtp::client::SmtpTimeouts::default();
        let stream = match tokio::time::timeout(
            timeouts.connect,
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => s,
            _ => {
                return Err(Reply::new(
                    451,
                    (4, 4, 1),
                    "relay MTA not reachable, try again later",
                ));
            }
        };
        let mut client = mailsim_smtp::client::SmtpClient::new(stream, timeouts);
        match client.handshake(&self.hostname).await {
            Ok(r) if r.last().is_some_and(|(_, r)| r.code == 250) => {}
            _ => return Err(Reply::new(451, (4, 4, 2), "relay MTA refused the session")),
        }
        let mut results = Vec::with_capacity(rcpts.len());
        for rcpt in rcpts {
            let env = mailsim_smtp::client::Envelope {
                from,
                rcpt,
                body: message,
            };
            match client.transaction(&env).await {
                Ok(o) if o.decisive.code / 100 == 2 => results.push(None),
                Ok(o) => {
                    // The relay's verdict goes back as it was given.
                    let r = &o.decisive;
                    let (code, class) = match r.code / 100 {
                        5 => (r.code, 5),
                        4 => (r.code, 4),
                        _ => (451, 4),
                    };
                    let enhanced = r
                        .enhanced
                        .as_deref()
                        .and_then(|e| {
                            let mut p = e.split('.').map(|x| x.parse::<u16>().ok());
                            Some((p.next()?? as u8, p.next()??, p.next()??))
                        })
                        .filter(|e| e.0 == class)
                        .unwrap_or((class, 0, 0));
                    results.push(Some(Reply::new(
                        code,
                        enhanced,
                        format!("relay: <{rcpt}>: {}", r.text),
                    )));
                    if o.connection_closed {
                        break;
                    }
                }
                Err(e) => {
                    results.push(Some(Reply::new(
                        451,
                        (4, 4, 2),
                        format!("relay failed: {e}"),
                    )));
                    break;
                }
            }
        }
        // The recipients after a session that ended: not relayed, for now.
        while results.len() < rcpts.len() {
            results.push(Some(Reply::new(
                451,
                (4, 4, 2),
                "relay session ended before this recipient",
            )));
        }
        client.quit().await;
        Ok(results)
    }

    /// A delivery status notification (RFC 3464) to `user`'s own mailbox about the recipients
    /// the relay refused after it had taken others: the message was accepted (250), so the
    /// client will not send it again, and this server keeps no queue to try them later.
    /// Each report with the mailbox it goes to.
    fn refused_reports(
        &self,
        user: &str,
        message: &[u8],
        refused: &[(&String, Reply)],
        session: u64,
    ) -> Vec<(String, Vec<u8>)> {
        let headers = match message.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) => &message[..end + 2],
            None => message,
        };
        let now_ms = self.store.clock().now_ms();
        let mut reports = Vec::with_capacity(refused.len());
        for (n, (rcpt, reply)) in refused.iter().enumerate() {
            let status = reply
                .enhanced
                .clone()
                .unwrap_or_else(|| format!("{}.0.0", reply.code / 100));
            let diagnostic = format!("{} {status} {}", reply.code, reply.text);
            let explanation = if reply.code / 100 == 5 {
                "The relay MTA refused this recipient; the others were sent.".to_string()
            } else {
                "The relay MTA refused this recipient for now; the others were sent. This server \
                 keeps no queue: send the message again to this recipient."
                    .to_string()
            };
            let message_id = format!("{now_ms}.{session}.{n}.dsn@{}", self.hostname);
            let dsn = mailsim_bounce::build::dsn(&mailsim_bounce::build::Dsn {
                reporting_mta: &self.hostname,
                to: user,
                recipient: rcpt,
                action: "failed",
                status: &status,
                diagnostic: Some(&diagnostic),
                remote_mta: None,
                explanation: &explanation,
                original_headers: headers,
                message_id: &message_id,
                date_s: (now_ms / 1000) as i64,
            });
            let mut stored = format!("Return-Path: <>\r\nDelivered-To: {user}\r\n").into_bytes();
            stored.extend_from_slice(&dsn);
            reports.push((self.mailbox_of(user), stored));
        }
        reports
    }
}

/// The first address in a message's From or Sender field that is not `user`'s.
fn foreign_author(message: &[u8], user: &str) -> Option<String> {
    let headers = mail_parser::MessageParser::default().parse_headers(message)?;
    [headers.from(), headers.sender()]
        .into_iter()
        .flatten()
        .flat_map(|a| a.iter())
        .filter_map(|a| a.address())
        .find(|a| !a.eq_ignore_ascii_case(user))
        .map(str::to_string)
}

impl Backend for MailboxBackend {
    fn on_connect(&self, _info: &SessionInfo) -> Option<Reply> {
        None
    }

    fn on_mail(&self, info: &SessionInfo, from: &str) -> Reply {
        if self.role == Role::Submission {
            if !info.tls {
                return Reply::new(530, (5, 7, 0), "Must issue a STARTTLS command first");
            }
            let Some(user) = &info.user else {
                return Reply::new(530, (5, 7, 0), "Authentication required");
            };
            if !from.eq_ignore_ascii_case(user) {
                return Reply::new(
                    553,
                    (5, 7, 1),
                    format!("<{from}>: sender address not owned by user {user}"),
                );
            }
        }
        Reply::new(250, (2, 1, 0), "Ok")
    }

    fn on_rcpt(
        &self,
        info: &SessionInfo,
        _tx: &Transaction,
        rcpt: &str,
    ) -> impl Future<Output = Reply> + Send {
        let reply = if is_postmaster(rcpt, &self.users) {
            // RFC 5321 section 4.5.1: postmaster, with or without a domain, is always accepted.
            Reply::new(250, (2, 1, 5), "Ok")
        } else if self.users.is_local_domain(domain_of(rcpt)) {
            if !self.users.exists(rcpt) {
                Reply::new(550, (5, 1, 1), format!("<{rcpt}>: user unknown"))
            } else if self.store.over_quota(&self.users.canonical(rcpt), 0) {
                Reply::new(452, (4, 2, 2), format!("<{rcpt}>: mailbox full"))
            } else {
                Reply::new(250, (2, 1, 5), "Ok")
            }
        } else if self.role == Role::Submission && info.user.is_some() {
            if self.relay.is_some() {
                Reply::new(250, (2, 1, 5), "Ok")
            } else {
                Reply::new(
                    550,
                    (5, 7, 1),
                    format!("<{rcpt}>: no outbound relay configured"),
                )
            }
        } else {
            // Never an open relay: only authenticated submission reaches other domains.
            Reply::new(554, (5, 7, 1), format!("<{rcpt}>: Relay access denied"))
        };
        std::future::ready(reply)
    }

    fn on_data(
        &self,
        info: &SessionInfo,
        tx: &Transaction,
        message: Vec<u8>,
    ) -> impl Future<Output = Reply> + Send {
        let info = info.clone();
        let tx = tx.clone();
        async move {
            let (local, remote): (Vec<String>, Vec<String>) =
                tx.rcpts.iter().cloned().partition(|r| {
                    is_postmaster(r, &self.users) || self.users.is_local_domain(domain_of(r))
                });
            let auth_header = match (&self.verifier, self.role) {
                (Some(v), Role::Mx) => {
                    v.verify(info.peer.ip(), &info.helo, &tx.mail_from, &message)
                        .await
                        .header
                }
                _ => String::new(),
            };
            // A user submits as themself: the author (From) and Sender fields name the
            // authenticated user's address, as the envelope does (an independent review: a user
            // could write another user's address in From and have it relayed).
            if self.role == Role::Submission
                && let Some(user) = &info.user
                && let Some(other) = foreign_author(&message, user)
            {
                return Reply::new(
                    553,
                    (5, 7, 1),
                    format!(
                        "the header names <{other}> as author; user {user} sends as <{user}> only"
                    ),
                );
            }
            // Nothing is committed before everything that can refuse has answered: every
            // local mailbox's quota, then the relay, so that a retry after a refusal makes no
            // second copy (an independent review: a closed relay port left the local
            // recipient one copy per attempt).
            let copies: Vec<(&String, String, Vec<u8>)> = local
                .iter()
                .map(|rcpt| {
                    let user = self.mailbox_of(rcpt);
                    let mut stored = Vec::with_capacity(message.len() + 512);
                    stored.extend_from_slice(
                        format!("Return-Path: <{}>\r\n", tx.mail_from).as_bytes(),
                    );
                    stored.extend_from_slice(format!("Delivered-To: {user}\r\n").as_bytes());
                    stored.extend_from_slice(self.received(&info, Some(&user)).as_bytes());
                    stored.extend_from_slice(auth_header.as_bytes());
                    stored.extend_from_slice(&message);
                    (rcpt, user, stored)
                })
                .collect();
            if let Some((full, _, _)) = copies
                .iter()
                .find(|(_, user, stored)| self.store.over_quota(user, stored.len() as u64))
            {
                return Reply::new(452, (4, 2, 2), format!("<{full}>: mailbox full"));
            }
            // The remote recipients the relay refused after taking others (reported to the
            // user once the message is accepted).
            let mut refused = Vec::new();
            if !remote.is_empty() {
                let one = (remote.len() == 1).then(|| remote[0].as_str());
                let mut relayed = self.received(&info, one).into_bytes();
                relayed.extend_from_slice(&message);
                let results = match self.relay(&tx.mail_from, &remote, &relayed).await {
                    Ok(results) => results,
                    Err(answer) => return answer,
                };
                refused = remote
                    .iter()
                    .zip(results)
                    .filter_map(|(rcpt, r)| Some((rcpt, r?)))
                    .collect();
                // Nobody taken: the refusal is the answer, and nothing is kept, so that the
                // client may send it again. Someone taken: the message is accepted (sent
                // again, it would reach them twice), and the others are reported.
                if refused.len() == remote.len() {
                    let (_, first) = refused.swap_remove(0);
                    return first;
                }
            }
            for (rcpt, user, stored) in copies {
                let store = self.store.clone();
                let result = tokio::task::spawn_blocking(move || store.deliver(&user, &stored))
                    .await
                    .unwrap_or_else(|e| {
                        Err(FolderError::Io {
                            path: PathBuf::new(),
                            source: std::io::Error::other(e.to_string()),
                        })
                    });
                match result {
                    Ok(_) => {}
                    Err(FolderError::OverQuota) => {
                        return Reply::new(452, (4, 2, 2), format!("<{rcpt}>: mailbox full"));
                    }
                    Err(e) => {
                        tracing::error!("delivery to {rcpt}: {e}");
                        return Reply::new(
                            451,
                            (4, 3, 0),
                            "local delivery failed, try again later",
                        );
                    }
                }
            }
            if !refused.is_empty() {
                let reports = self.refused_reports(&tx.mail_from, &message, &refused, info.id);
                let store = self.store.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    for (mailbox, report) in reports {
                        if let Err(e) = store.deliver(&mailbox, &report) {
                            tracing::error!("a relay report to {mailbox}: {e}");
                        }
                    }
                })
                .await;
                return Reply::new(
                    250,
                    (2, 0, 0),
                    "Ok: queued; some recipients refused by the relay, reported to the sender",
                );
            }
            if !remote.is_empty() {
                return Reply::new(250, (2, 0, 0), "Ok: queued");
            }
            Reply::new(250, (2, 0, 0), "Ok: delivered")
        }
    }

    fn authenticate(
        &self,
        info: &SessionInfo,
        login: &str,
        password: &[u8],
    ) -> impl Future<Output = LoginOutcome> + Send {
        self.guard.check(info.peer.ip(), login, password)
    }
}

/// A running mailbox server: its bound addresses and a way to stop it.
pub struct Running {
    pub smtp: Option<SocketAddr>,
    pub submission: Option<SocketAddr>,
    pub imap: Option<SocketAddr>,
    pub pop3: Option<SocketAddr>,
    pub store: Arc<Mailstore>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Running {
    /// Stop accepting, let sessions finish, return when every listener is closed.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Verifier(#[from] crate::auth::VerifierError),
    #[error("{0}")]
    Config(String),
}

async fn bind(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })?;
    let bound = l
        .local_addr()
        .map_err(|source| StartError::Bind { what, addr, source })?;
    Ok((l, bound))
}

async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// What the IMAP and POP3 listeners share: the connection limits, the session context and the
/// stop signal.
struct Access {
    limiter: Arc<ConnectionLimiter>,
    ctx: shell::Context,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Access {
    /// Serve one mail access protocol on `listener`; `refuse` answers a connection over a limit.
    fn spawn<P, F>(
        &self,
        tasks: &mut tokio::task::JoinSet<()>,
        listener: TcpListener,
        make: F,
        refuse: &'static str,
    ) where
        P: shell::Protocol + 'static,
        F: Fn(SocketAddr) -> P + Send + Sync + 'static,
    {
        tasks.spawn(shell::serve(
            listener,
            self.limiter.clone(),
            self.ctx.clone(),
            make,
            refuse,
            stopped(self.stop.clone()),
        ));
    }
}

/// Bind every configured listener and serve until [`Running::shutdown`].
pub async fn start(cfg: MailboxConfig) -> Result<Running, StartError> {
    if cfg.users.domains().is_empty() {
        return Err(StartError::Config("at least one --domain is needed".into()));
    }
    if cfg.submission.is_some() && cfg.tls.is_none() {
        return Err(StartError::Config(
            "submission needs TLS (AUTH is only offered after STARTTLS): give --tls".into(),
        ));
    }
    let users = Arc::new(cfg.users);
    let guard = Arc::new(LoginGuard::new(
        users.clone(),
        cfg.login.clone(),
        cfg.clock.clone(),
    ));
    let store = Arc::new(Mailstore::with_clock(
        &cfg.data,
        cfg.quota_bytes,
        cfg.clock.clone(),
    ));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let verifier = match &cfg.dns {
        Some(dns) => Some(Verifier::new(dns.clone(), &cfg.hostname)?),
        None => Verifier::system(&cfg.hostname).ok(),
    }
    .map(|v| Arc::new(v.with_clock(cfg.clock.clone())));
    let smtp_cfg = |auth: bool| ServerConfig {
        hostname: cfg.hostname.clone(),
        message_bytes_max: cfg.message_bytes_max,
        connections_per_ip_max: cfg.connections_per_ip_max,
        tls: cfg.tls.clone(),
        auth,
        command_timeout: cfg.smtp_command_timeout,
        data_timeout: cfg.smtp_data_timeout,
        login_timeout: cfg.smtp_login_timeout,
        rcpt_rejects_max: Some(cfg.rcpt_rejects_max),
        ..ServerConfig::default()
    };
    let mut running = Running {
        smtp: None,
        submission: None,
        imap: None,
        pop3: None,
        store: store.clone(),
        stop,
        tasks: tokio::task::JoinSet::new(),
    };
    for (role, addr) in [(Role::Mx, cfg.smtp), (Role::Submission, cfg.submission)] {
        let Some(addr) = addr else { continue };
        let what = if role == Role::Mx {
            "smtp"
        } else {
            "submission"
        };
        let (listener, bound) = bind(what, addr).await?;
        let backend = Arc::new(MailboxBackend {
            role,
            users: users.clone(),
            guard: guard.clone(),
            store: store.clone(),
            verifier: verifier.clone(),
            relay: cfg.relay,
            hostname: cfg.hostname.clone(),
        });
        let server = Arc::new(mailsim_smtp::server::Server::new(
            backend,
            smtp_cfg(role == Role::Submission),
        ));
        tasks.spawn(server.serve(listener, stopped(stop_rx.clone())));
        match role {
            Role::Mx => running.smtp = Some(bound),
            Role::Submission => running.submission = Some(bound),
        }
    }
    let limiter = Arc::new(ConnectionLimiter::new(1024, cfg.connections_per_ip_max));
    let tls_on = cfg.tls.is_some();
    let ctx = shell::Context {
        guard: guard.clone(),
        tls: cfg.tls.clone(),
        timeouts: Arc::new(cfg.timeouts.clone()),
    };
    let access = Access {
        limiter,
        ctx,
        stop: stop_rx.clone(),
    };
    if let Some(addr) = cfg.imap {
        let (listener, bound) = bind("imap", addr).await?;
        let icfg = Arc::new(imap::ImapConfig {
            hostname: cfg.hostname.clone(),
            literal_bytes_max: cfg.message_bytes_max,
            idle_timeout: cfg.imap_idle_timeout,
            ..imap::ImapConfig::default()
        });
        let store = store.clone();
        let make = move |peer: SocketAddr| {
            imap::Session::new(icfg.clone(), store.clone(), tls_on, peer.ip().is_loopback())
        };
        access.spawn(
            &mut tasks,
            listener,
            make,
            "* BYE Too many connections.\r\n",
        );
        running.imap = Some(bound);
    }
    if let Some(addr) = cfg.pop3 {
        let (listener, bound) = bind("pop3", addr).await?;
        let pcfg = Arc::new(pop3::Pop3Config {
            hostname: cfg.hostname.clone(),
            ..pop3::Pop3Config::default()
        });
        let store = store.clone();
        let make = move |peer: SocketAddr| {
            pop3::Session::new(pcfg.clone(), store.clone(), tls_on, peer.ip().is_loopback())
        };
        let refuse = "-ERR [SYS/TEMP] Too many connections.\r\n";
        access.spawn(&mut tasks, listener, make, refuse);
        running.pop3 = Some(bound);
    }
    if let Some(days) = cfg.retention_days {
        let (store2, users2, stop2) = (store.clone(), users.clone(), stopped(stop_rx.clone()));
        tasks.spawn(async move {
            let max_age_ms = i64::from(days) * 86_400_000;
            let sweep = async {
                loop {
                    let (s, u) = (store2.clone(), users2.clone());
                    let removed = tokio::task::spawn_blocking(move || {
                        s.apply_retention(&u.addresses(), max_age_ms)
                    })
                    .await
                    .unwrap_or_default();
                    for (user, folder, uid) in removed {
                        tracing::info!(%user, %folder, uid, days, "retention: removed message older than the policy");
                    }
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            };
            tokio::select! {
                _ = stop2 => {}
                _ = sweep => {}
            }
        });
    }
    running.tasks = tasks;
    Ok(running)
}
