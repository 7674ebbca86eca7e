//! The authentication workbench: a receiver's view of one message (`mailsim auth verify`) over
//! zone files served by fake-dns or over a DNS server the user names. The fleet's receivers
//! verify with the same [`Verifier`].

use anyhow::Context;
use fake_dns::{DnsServer, ZoneSet, resolver_for};
use mailsim_mailbox::auth::{Verdicts, Verifier};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Zone files merged into one model (later files override earlier ones at the same name and
/// type). Each is read with its own `$ORIGIN` (or the owner of its SOA).
///
/// fake-dns is then authoritative for the whole tree: a name no file holds does not exist
/// (NXDOMAIN), as on the Internet, rather than being refused.
pub fn load_zone_files(files: &[PathBuf]) -> anyhow::Result<ZoneSet> {
    let mut zones = ZoneSet::new();
    zones.add_zone(".");
    for path in files {
        let file = fake_dns::zonefile::load(path, None)?;
        zones.overlay(&file.origin, file.records);
    }
    Ok(zones)
}

/// Where the lookups go: zone files served for the duration on a loopback port, or a server
/// the user runs (`mailsim dns`, or any other).
pub enum Dns {
    Served(DnsServer),
    At(SocketAddr),
}

impl Dns {
    /// `--zone` files are served by fake-dns on 127.0.0.1 (a port the system picks); `--dns`
    /// names a server. One of the two is required: nothing here asks the Internet's DNS.
    pub async fn new(zones: &[PathBuf], server: Option<SocketAddr>) -> anyhow::Result<Dns> {
        match (zones.is_empty(), server) {
            (true, Some(addr)) => Ok(Dns::At(addr)),
            (false, None) => {
                let set = load_zone_files(zones)?;
                let server = DnsServer::start(&set, "127.0.0.1:0".parse()?)
                    .await
                    .context("serving the zone files")?;
                Ok(Dns::Served(server))
            }
            (false, Some(_)) => anyhow::bail!("give --zone files or --dns, not both"),
            (true, None) => anyhow::bail!(
                "no DNS to verify against: give --zone FILE (RFC 1035 zone files, served by fake-dns) or --dns ADDR"
            ),
        }
    }

    /// Serve `zones` with their faults (the SPF suite's timeouts) on a loopback port.
    pub async fn serve(zones: fake_dns::FaultyZones) -> anyhow::Result<Dns> {
        let server = DnsServer::start_with_faults(
            std::sync::Arc::new(zones),
            "127.0.0.1:0".parse()?,
            std::sync::Arc::new(|| 0),
        )
        .await?;
        Ok(Dns::Served(server))
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            Dns::Served(s) => s.addr(),
            Dns::At(a) => *a,
        }
    }

    pub async fn shutdown(self) {
        if let Dns::Served(s) = self {
            s.shutdown().await;
        }
    }
}

/// What `auth verify` checks: the message as received from `ip` after `helo`, with envelope
/// sender `mail_from` (empty: the null sender).
pub struct Received<'a> {
    pub ip: IpAddr,
    pub helo: &'a str,
    pub mail_from: &'a str,
    pub message: &'a [u8],
}

/// Verify SPF, every DKIM signature, DMARC and ARC as the receiver `hostname` would.
pub async fn verify(dns: &Dns, hostname: &str, r: &Received<'_>) -> anyhow::Result<Verdicts> {
    let verifier = Verifier::new(resolver_for(dns.addr()), hostname)?;
    let message = on_the_wire(r.message);
    Ok(verifier.verify(r.ip, r.helo, r.mail_from, &message).await)
}

/// A message file saved with Unix line ends (no CR anywhere) as it crossed the wire: CRLF
/// (RFC 5322 section 2.1). DKIM's simple canonicalization depends on it.
pub fn on_the_wire(message: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if message.contains(&b'\r') {
        return std::borrow::Cow::Borrowed(message);
    }
    let mut out = Vec::with_capacity(message.len() + message.len() / 40);
    for &b in message {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    std::borrow::Cow::Owned(out)
}

/// Pass when DMARC passes, or, for a From domain without a DMARC record, when SPF or a DKIM
/// signature passes.
pub fn passes(v: &Verdicts) -> bool {
    match v.dmarc.as_str() {
        "pass" => true,
        "none" => v.spf == "pass" || v.dkim == "pass",
        _ => false,
    }
}
