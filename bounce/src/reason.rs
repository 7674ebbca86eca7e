//! Reasons: from a diagnostic text, a status code and the SMTP command that failed, to a word of
//! Sisimai's vocabulary, hard or soft.
//!
//! The vocabulary is Sisimai's current one (its `Sisimai::Eb` constants, 2026): `ratelimited`
//! took the place of `toomanyconn` and `speeding`, `emailtoolarge` of `mesgtoobig` and
//! `exceedlimit`. Corpora labelled with the older words are read through [`current_name`].
//!
//! Evidence in order of strength: the status codes that say more than any wording; the
//! answering provider's own published replies ([`crate::published`]); the families of wordings
//! (ordered from the most specific reason to the most general); the Action of a delay or
//! give-up report; weaker wordings; the enhanced status code; the reply code; generic words;
//! `onhold` only when nothing decides. The command that failed then separates an unknown
//! recipient from a filtered message and a refused sender.

use crate::extract::{squeeze, without_addresses};

/// A rule: the reason, the name of its family of wordings (one meaning, several wordings; the
/// unit a k-fold evaluation leaves out), and the wordings.
type Rule = (&'static str, &'static str, &'static [&'static str]);

/// The family of a report that names the reason in the vocabulary's own words.
const NAMED: &str = "the reason's own name";

/// The family of the public DNS block lists, by name.
const DNSBLS: &str = "dns block lists by name";

/// Families that are one unit of the k-fold evaluation even by wording: a list no wording of
/// which was picked (the vocabulary's names, a complete transcription of a source's messages).
fn whole(family: &str) -> bool {
    family == NAMED || crate::published::is_complete(family)
}

/// Phrase rules, checked in this order against the lower-cased diagnostic (a reason may
/// appear twice: its specific phrases early, its generic ones late).
static RULES: &[Rule] = &[
    // A report that names the reason in the vocabulary's own words ("Mailer error", "On hold",
    // "Internal system error", "Network error on destination MXs"): every name of Sisimai's
    // reasons (libsisimai.org/en/reason) that is two words or more, split as read ("has
    // moved", "host unknown", "mailbox full", "syntax error" and "user unknown" stand where
    // their families do, below: ordinary wordings of the same reasons, read in their places).
    // One unit of the k-fold evaluation that counts whole lists (the list is the vocabulary,
    // no name of it picked). Not in it: the one-word names (blocked, expired, filtered,
    // rejected, suspend, ...: ordinary words) and "not accept", said in its ordinary sense by
    // Google's give-up message ("did not accept our requests to connect"; a choice made
    // reading this corpus).
    ("authfailure", NAMED, &["auth failure"]),
    ("badreputation", NAMED, &["bad reputation"]),
    ("contenterror", NAMED, &["content error"]),
    ("emailtoolarge", NAMED, &["email too large"]),
    ("failedstarttls", NAMED, &["failed starttls"]),
    ("mailererror", NAMED, &["mailer error"]),
    ("networkerror", NAMED, &["network error"]),
    ("norelaying", NAMED, &["no relaying"]),
    ("notcompliantrfc", NAMED, &["not compliant rfc"]),
    ("onhold", NAMED, &["on hold"]),
    ("policyviolation", NAMED, &["policy violation"]),
    ("ratelimited", NAMED, &["rate limited"]),
    ("requireptr", NAMED, &["require ptr"]),
    ("securityerror", NAMED, &["security error"]),
    ("spamdetected", NAMED, &["spam detected"]),
    ("systemerror", NAMED, &["system error"]),
    ("systemfull", NAMED, &["system full"]),
    ("virusdetected", NAMED, &["virus detected"]),
    // A relay that did not try: the address is on its suppression list (Amazon SES: "did not
    // send the message to this address because it is on the suppression list", "has
    // suppressed sending to this address"). Sisimai's "suppressed".
    (
        "suppressed",
        "suppression list",
        &["suppression list", "has suppressed sending"],
    ),
    // RFC 3463 X.3.2 (system not accepting network messages): the host takes no mail at all.
    (
        "notaccept",
        "accepts no mail",
        &[
            "does not accept mail",
            "not accepting mail",
            "accepts no mail",
            "no mail accepted",
            "does not receive mail",
            "doesn't receive email",
        ],
    ),
    // RFC 7505 (null MX, X.1.10) and resolvers' wording of a domain without a mail exchanger.
    (
        "notaccept",
        "no mx",
        &[
            "null mx",
            "no mx found for domain",
            "indicated no smtp service",
        ],
    ),
    // A message refused for breaking the message format (RFC 5322 and its predecessors by number;
    // Google's 550 5.7.1 "not RFC 5322 compliant").
    (
        "notcompliantrfc",
        "not rfc 5322 compliant",
        &[
            "rfc 5322",
            "rfc5322",
            "rfc 2822",
            "rfc2822",
            "rfc 822",
            "not compliant",
        ],
    ),
    // RFC 5322 section 3.6: fields that occur at most once, From with one mailbox unless Sender is
    // set.
    (
        "notcompliantrfc",
        "header field occurrence",
        &["addresses in from: header", "multiple addresses in from"],
    ),
    // RFC 3463 X.4.3 (directory server failure): the resolver failed, not the domain (Postfix
    // "Name service error ... name server reply", "host name lookup failure").
    (
        "networkerror",
        "name service failure",
        &["dns error", "name server reply", "host name lookup failure"],
    ),
    // RFC 3463 X.4.2 (bad connection): the session was lost or never established (Postfix "lost
    // connection with", qmail "wasn't able to establish an SMTP connection").
    (
        "networkerror",
        "connection failed",
        &["lost connection", "establish an smtp connection"],
    ),
    // RFC 5321 section 6.3 and RFC 3463 X.4.6: a routing or forwarding loop, found by counting
    // hops.
    (
        "networkerror",
        "mail loop",
        &[
            "routing loop",
            "mail loop",
            "loop detected",
            "too many hops",
            "hop count",
        ],
    ),
    // Not a bounce reason in Sisimai (greylisting never ends in a bounce): mailsim's word for
    // the deferral.
    (
        "greylisted",
        "greylisting",
        &["greylist", "graylist", "grey-list", "gray-list"],
    ),
    ("authfailure", "dmarc", &["dmarc"]),
    // RFC 7208 (SPF): results and the receivers' wording of them ("designates", "not permitted by
    // domain", Microsoft's Sender ID).
    (
        "authfailure",
        "spf",
        &[
            "spf check",
            "spf fail",
            "spf validation",
            "spf record",
            "bad spf",
            "sender policy framework",
            "is not authorized to send mail on behalf",
            "not permitted by domain",
            "designates",
            "sender id",
        ],
    ),
    ("authfailure", "dkim", &["dkim", "domainkeys"]),
    // Providers' bulk-sender rules (Google 550 5.7.26 "unauthenticated email", Microsoft "does not
    // meet the required authentication level"): SPF and DKIM both missing or failed.
    (
        "authfailure",
        "sender authentication failed",
        &[
            "authentication failed",
            "does not meet the required authentication level",
            "authentication information",
            "fails to pass",
            "unauthenticated email",
            "5.7.26",
        ],
    ),
    // RFC 7372 X.7.25 (reverse DNS validation failed) and the receivers' wording of a missing PTR
    // record (M3AAWG's sender best practices ask for one).
    (
        "requireptr",
        "reverse dns",
        &[
            "reverse dns",
            "reverse lookup",
            "reverse hostname",
            "rdns",
            "ptr record",
            "no ptr",
            "cannot resolve pointer",
            "client host rejected: cannot find",
            "reverse address",
            "no reverse",
            "5.7.25",
        ],
    ),
    // The client's name and address do not match (forward-confirmed reverse DNS, Postfix's
    // reject_unknown_client_hostname "cannot find your hostname").
    (
        "requireptr",
        "client name unresolvable",
        &[
            "cannot find your hostname",
            "cannot resolve your address",
            "does not resolve",
            "unresolvable",
            "ip name lookup failed",
            "mismatches client ip",
        ],
    ),
    // Anti-virus refusals (RFC 3463 X.7.0 used for content; scanners' "virus", "infected",
    // "malware").
    (
        "virusdetected",
        "virus",
        &["virus", "infected", "malware", "malicious"],
    ),
    ("badreputation", "reputation", &["reputation"]),
    // A sender over its own allowance of recipients per hour (the providers' outbound limits).
    (
        "ratelimited",
        "sending too fast",
        &[
            "sending too fast",
            "has sent to too many recipients",
            "too many recipients this hour",
        ],
    ),
    // A cap on concurrent sessions (Exchange 421 4.3.2, Postfix anvil's "too many connections").
    (
        "ratelimited",
        "too many connections",
        &[
            "too many connections",
            "too many concurrent",
            "too many simultaneous",
            "connection limit",
            "connection rate limit",
            "too many smtp sessions",
            "max connections",
        ],
    ),
    // Receivers throttling a sender (Google 421 4.7.28, Yahoo [TSS04], Postfix anvil's "too much
    // mail from").
    (
        "ratelimited",
        "rate limit",
        &[
            // Throttling for an unusual rate or volume (Google's 421 4.7.28, Yahoo's [TSS04]).
            "unusual rate",
            "unexpected volume",
            // Postfix's anvil rate limit: "Error: too much mail from <ip>".
            "too much mail",
            "frequency limited",
            "rate limit",
            "rate-limit",
            "too many messages from",
            // A limit of messages per connection (Exim's smtp_accept_max_per_connection: "too
            // many messages in this connection"; "... on this connection"; Yahoo's published
            // "Max message per connection reached").
            "messages in this connection",
            "messages on this connection",
            "messages in one connection",
            "messages per connection",
            "message per connection",
            "throttl",
            "exceeded the rate",
            "too many recipients",
        ],
    ),
    // RFC 5321 section 4.1.1.2 (MAIL refused) and RFC 3463 X.1.7/X.1.8: the sender, not the
    // recipient, is refused.
    (
        "rejected",
        "sender refused",
        &[
            "sender was rejected",
            "sender rejected",
            "sender address rejected",
            "sender verify failed",
            "domain of sender address",
            "sender domain",
            "invalid sender",
            "bad sender",
            "sender is not allowed",
            "unknown sender",
            "sender unknown",
            "envelope sender",
            "address rejected: sender",
            "send mail as",
            "mailfrom domain",
            "mail from domain",
        ],
    ),
    // Mailing lists that take posts from members only (Mailman, Google Groups).
    (
        "rejected",
        "not allowed to post",
        &["not allowed to post", "permission to post"],
    ),
    (
        "rejected",
        "address that has been blacklisted",
        &["address that has been blacklisted"],
    ),
    (
        "rejected",
        "rejected by destination domain",
        &["rejected by destination domain"],
    ),
    // RFC 5321 sections 3.6.1 and 7.1: a server that is not the recipient's refuses to relay.
    (
        "norelaying",
        "relay denied",
        &[
            "relay access denied",
            "relaying denied",
            "relay denied",
            "relay not permitted",
            "not permitted to relay",
            "unable to relay",
            "we do not relay",
            "relaying not allowed",
            // Sendmail-era anti-relay rules: "550 Insecure Mail Relay" (listed with these
            // by the bounce parsers' relay definitions, Sisimai's NoRelaying among them).
            "insecure mail relay",
        ],
    ),
    (
        "norelaying",
        "email address is not verified",
        &["email address is not verified"],
    ),
    // RFC 3463 X.2.2 (mailbox full) and the MTAs' and providers' over-quota wording.
    // (The reasons' own names, one family: see the top of this table.)
    ("mailboxfull", NAMED, &["mailbox full"]),
    (
        "mailboxfull",
        "mailbox full",
        &[
            "mailbox is full",
            "mailbox has exceeded",
            "mailbox size limit",
            "mailbox would exceed",
            "mailbox over quota",
            "over quota",
            "quota exceeded",
            "exceeded quota",
            "exceeds quota",
            "exceeded storage",
            "out of storage",
            "storage allocation",
            "full mailbox",
            "mail box full",
            "mailbox exceeds allowed size",
            "recipient's mailbox exceeded",
            "too many messages in",
            "user is over",
            "not enough space",
        ],
    ),
    // RFC 3463 X.2.1 (mailbox disabled, not accepting messages): the account exists and is closed.
    // Not a bare "suspended": Postfix's "delivery temporarily suspended: <cause>" suspends
    // delivery to a destination, not an account (the account ~ disabled pair reads "account
    // suspended", "mailbox currently suspended").
    (
        "suspend",
        "account disabled",
        &[
            "deactivated",
            "account has been disabled",
            "account is disabled",
            "mailbox is disabled",
            "mailbox disabled",
            "is inactive",
            "not active",
            "frozen",
            "account is blocked",
            "account has been blocked",
            "compte du destinataire est bloque",
            "locked",
        ],
    ),
    // A verdict of spam on the message named as such ("message rejected as spam",
    // SpamAssassin's "message identified as spam", Exchange Online's 5.7.350 "message detected
    // as spam"), whatever the filter that gave it: read before the filter's own name ("Message
    // rejected as spam by Content Filtering"). The message, not the sender: "Client host
    // [192.0.2.1] blocked using a DNSBL; identified as spam source" is a listing.
    (
        "spamdetected",
        "verdict as spam",
        &[
            "message rejected as spam",
            "message identified as spam",
            "message detected as spam",
            "message classified as spam",
            "mail rejected as spam",
        ],
    ),
    // A filter of the recipient's refused the message after DATA (Sisimai's "filtered").
    (
        "filtered",
        "message filtered",
        &["message filtered", "content filter"],
    ),
    // A local delivery program (pipe, procmail) exited with an error (Sendmail's and Postfix's
    // X-Unix diagnostic type).
    (
        "mailererror",
        "delivery program failed",
        &[
            "x-unix",
            "command died",
            "command failed",
            "exit code",
            "exited with",
            "procmail:",
            "pipe to",
            "local delivery failed",
        ],
    ),
    // Sendmail's EX_PROTOCOL ("Remote protocol error") when the remote's reply before it in
    // the transcript said nothing a family reads (`remote_reply_before_protocol_error`).
    (
        "blocked",
        "remote protocol error",
        &["remote protocol error"],
    ),
    // RFC 3463 X.1.2 (bad destination system address) and resolvers' NXDOMAIN wording.
    // (The reasons' own names, one family: see the top of this table.)
    ("hostunknown", NAMED, &["host unknown"]),
    (
        "hostunknown",
        "no such domain",
        &[
            "host not found",
            "unknown host",
            "domain not found",
            "no such domain",
            "unknown domain",
            "domain does not exist",
            "domain name not found",
            "host or domain name not found",
            "unrouteable mail domain",
            "unroutable mail domain",
            "couldn't find any host",
            "could not find any host",
            "nxdomain",
            "mx records point to non-existent hosts",
            "name or service not known",
            "domain is not reachable",
            "invalid domain",
            "domain is invalid",
            "dns lookup failure",
        ],
    ),
    // RFC 3463 X.1.1 (bad destination mailbox address): the MTAs' wording of a recipient that does
    // not exist.
    // (The reasons' own names, one family: see the top of this table.)
    ("userunknown", NAMED, &["user unknown"]),
    (
        "userunknown",
        "no such user",
        &[
            "unknown user",
            "no such user",
            "no such recipient",
            "no such mailbox",
            "no such account",
            "user not found",
            "recipient not found",
            "mailbox not found",
            "address not found",
            "account not found",
            "does not exist",
            "doesn't exist",
            "does not have an account",
            "doesn't have a",
            "unknown recipient",
            "recipient unknown",
            "unknown address",
            "unknown mailbox",
            "unknown local part",
            "recipient name is not recognized",
            "no mailbox",
            "no mail box",
            "not a known user",
            "not an active address",
            "bad recipient",
            "bad_recipient",
            "user doesn't",
            "user does not",
            "no account",
            "unknown or illegal alias",
        ],
    ),
    // RFC 3463 X.1.1/X.1.3: the recipient address is not one the system takes.
    (
        "userunknown",
        "invalid recipient",
        &[
            "not a valid",
            "invalid recipient",
            "invalid address",
            "invalid mailbox",
            "bad destination mailbox",
            "undeliverable address",
            "no valid recipients",
        ],
    ),
    (
        "userunknown",
        "recipient address rejected: access denied",
        &["recipient address rejected: access denied"],
    ),
    // RFC 5321 section 4.2.2's 550 reply text ("Requested action not taken: mailbox unavailable").
    (
        "userunknown",
        "mailbox unavailable",
        &[
            "mailbox unavailable",
            "mailbox is not available",
            "unavailable mailbox",
        ],
    ),
    (
        "userunknown",
        "unrouteable address",
        &["unrouteable address"],
    ),
    ("userunknown", "not our customer", &["not our customer"]),
    ("userunknown", "not listed", &["not listed"]),
    ("userunknown", "userid", &["userid"]),
    // "Unsolicited mail" is the providers' word for spam (Google's 550 5.7.1 "likely
    // unsolicited mail"), said before "has been blocked" can read as a block list.
    (
        "spamdetected",
        "url blocklisted",
        &["blacklisted url", "uribl"],
    ),
    ("spamdetected", "unsolicited mail", &["unsolicited mail"]),
    (
        "undefined",
        "delivery report unavailable",
        &["delivery report unavailable"],
    ),
    // DNS block lists (RFC 5782) by name: the public lists of client addresses (the names of
    // the lists and their operators; not the lists of domains in content, SURBL and URIBL,
    // which are read as spam below, nor a filtering appliance's name).
    (
        "blocked",
        DNSBLS,
        &[
            "dnsbl",
            "spamhaus",
            "spamcop",
            "sorbs",
            "uceprotect",
            "psbl",
            "mailspike",
            "abuseat",
            "invaluement",
            "dronebl",
            "spamrats",
            "backscatterer",
        ],
    ),
    // The receivers' wording of a listing.
    (
        "blocked",
        "dnsbl",
        &[
            "blocked using",
            "listed in",
            "listed at",
            "listed on",
            "blacklist",
            "black list",
            "blocklist",
            "block list",
            " rbl",
        ],
    ),
    // The client's address or name is refused (Postfix's "Client host rejected", the providers' IP
    // blocks).
    (
        "blocked",
        "client host refused",
        &[
            "your ip",
            "ip address",
            "client host rejected",
            "refused to talk",
            "not allowed to send",
            "has been blocked",
            "is blocked",
            "ip blocked",
            "blocked by",
            "hostname is blocked",
            "connections will not be accepted",
            "not accepting connections",
            "rejecting connections",
            "adresse ip source bloquee",
            "client host blocked",
            "service refuse",
        ],
    ),
    // Receivers that refuse mail from dynamic or residential address ranges (Spamhaus PBL's
    // policy).
    (
        "blocked",
        "dynamic address",
        &["dynamic ip", "residential", "dial-up", "dialup"],
    ),
    // A refusal that says it is for policy reasons (RFC 3463 X.7.1 used for policy: Yahoo's
    // 554 5.7.9 "Message not accepted for policy reasons", "Mail from ... rejected for policy
    // reasons"): the cause it names, whoever was refused (after the block lists:
    // a listing names the cause more precisely).
    ("policyviolation", "for policy reasons", &["policy reasons"]),
    // Spam verdicts of content filters.
    (
        "spamdetected",
        "spam",
        &[
            "spam$",
            "spamming",
            "spammer",
            "junk mail",
            "unsolicited",
            "bulk mail",
            "content rejected",
            "suspicious",
        ],
    ),
    // RFC 3463 X.1.6 (destination mailbox has moved, no forwarding address).
    // (The reasons' own names, one family: see the top of this table.)
    ("hasmoved", NAMED, &["has moved"]),
    (
        "hasmoved",
        "has moved",
        &[
            "moved to",
            "address has changed",
            "is no longer",
            "no longer with",
        ],
    ),
    // RFC 3463 X.2.3/X.3.4 and RFC 1870 (SIZE): the message is larger than a limit.
    (
        "emailtoolarge",
        "message too large",
        &[
            "exceeds the limit",
            "exceeded the limit",
            "message too large for",
            "size limit for this recipient",
            "exceeds size limit",
            "message length exceeds administrative limit",
        ],
    ),
    (
        "emailtoolarge",
        "message too large",
        &[
            "message too big",
            "message too large",
            "message is too large",
            "message size exceeds",
            "exceeds fixed maximum",
            "exceeds the maximum",
            "size exceeds",
            "too large",
            "too big",
        ],
    ),
    // RFC 3207's refusal before STARTTLS ("530 Must issue a STARTTLS command first"), the
    // receivers' "TLS required" and a client's refusal of the server's certificate (Postfix's
    // "Server certificate not trusted" / "not verified"): Sisimai's FailedSTARTTLS is the errors
    // of STARTTLS, DANE and MTA-STS (its manual page, whose example is "5.7.10 STARTTLS is
    // required to send mail"). Not the bare word: a transcript names the command it was
    // sending when something else went wrong ("... while sending STARTTLS").
    (
        "failedstarttls",
        "starttls required",
        &[
            "issue a starttls",
            "starttls first",
            "starttls required",
            "starttls is required",
            "tls required",
            "tls is required",
            "requires tls",
            "server certificate not",
        ],
    ),
    // RFC 4954 (530 5.7.0 authentication required; 5.7.11 encryption required for the
    // mechanism).
    (
        "securityerror",
        "authentication required",
        &[
            "authentication required",
            "encryption required",
            "requires authentication",
            "authentication is required",
            "must authenticate",
            "delivery not authorized",
        ],
    ),
    // RFC 5321 section 4.2.3 (500-504) and RFC 3463 X.5.2: the command or its syntax was refused.
    // (The reasons' own names, one family: see the top of this table.)
    ("syntaxerror", NAMED, &["syntax error"]),
    (
        "syntaxerror",
        "syntax error",
        &[
            "command unrecognized",
            "command not recognized",
            "unrecognized command",
            "bad command",
            "line too long",
            "malformed address",
            "invalid command",
            "not implemented",
        ],
    ),
    // RFC 3463 X.3.1 (mail system full): the system, not the mailbox, is out of room.
    (
        "systemfull",
        "system storage full",
        &[
            "insufficient system storage",
            "out of disk",
            "disk is full",
            "insufficient disk space",
        ],
    ),
    // RFC 5321 section 4.5.4.1 and RFC 3463 X.4.7: the sending MTA gave up after its retry period
    // (each MTA's wording of it).
    (
        "expired",
        "gave up",
        &[
            "retry timeout exceeded",
            "retry time not reached for any host after a long failure period",
            "delivery time expired",
            "message expired",
            "queue.expired",
            "message timed out",
            "in the queue too long",
            "too long in queue",
            "not going to try again",
            "could not be delivered within",
            "delivery period has expired",
            "expired after",
            "queue lifetime exceeded",
            "maximum time in queue",
            "unable to deliver message after multiple attempts",
            "delivery attempts will continue",
            "was not delivered within",
            "unable to deliver for",
            "has not yet been delivered",
            "could not deliver for the last",
            "did not accept our requests to connect",
            "delivery failed 20 attempts",
            "delayed for more than",
            "host not reachable",
            "have been failing for a long time",
        ],
    ),
];

/// A family of wordings: a subject word and what is said of it, within a few words of each
/// other in either order ("host cx.example.org not found", "no such domain").
pub struct Pair {
    /// The name the family is known by (what [`explain`] reports as having decided).
    pub name: &'static str,
    pub reason: &'static str,
    /// Words the subject starts with ("domain" finds "domain" and "domains").
    pub subjects: &'static [&'static str],
    /// What is said of it: phrases of one or more words. A word ending in `$` is that word
    /// exactly ("no$" is not "not"); any other word is a word's start ("domain" finds
    /// "domains").
    pub predicates: &'static [&'static str],
    /// How many words may stand between them.
    pub gap: usize,
    /// Where the family is read among the other evidence.
    pub stage: Stage,
}

/// Where a family of [`Pair`]s is read.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Stage {
    /// Before the phrase tables: the family says more than any single word of another reason
    /// it may contain ("user unknown (mailbox disabled)" is a closed account).
    Early,
    /// After the phrase tables (the specific wordings) and before the report's Action.
    Phrases,
    /// After the enhanced status code: the family is general enough that a specific status
    /// says more ("452 4.2.2 Mail folder size limit exceeded" is a full mailbox).
    AfterStatus,
}

/// Families of wordings, consulted after the specific phrases. Each names where it comes from.
static PAIRS: &[Pair] = &[
    // RFC 3207 (STARTTLS) and the MTAs' wording of a failed or missing TLS session (Postfix
    // "TLS is required, but was not offered", Exim "TLS session failure", Google "does not
    // support TLS").
    Pair {
        name: "tls ~ failed",
        reason: "failedstarttls",
        subjects: &["tls", "starttls", "ssl"],
        predicates: &[
            "not supported",
            "does not support",
            "doesn't support",
            "not offered",
            "failed",
            "failure",
            "negotiation",
            "handshake",
        ],
        gap: 3,
        stage: Stage::Phrases,
    },
    // RFC 5322 section 3.6 (the fields that may occur at most once) and the receivers' wording
    // of a header that breaks the format (Google's 550 5.7.1 "There are multiple Subject
    // headers", Yahoo's 554 "Headers are not RFC compliant"). Before the phrase tables: a
    // header's name in the reply ("Duplicate header 'DKIM-Signature'") is not a verdict on it.
    Pair {
        name: "header ~ repeated",
        reason: "notcompliantrfc",
        subjects: &["header"],
        predicates: &[
            "duplicate",
            "multiple",
            "more than one",
            "repeated",
            "not rfc",
            "not compliant",
        ],
        gap: 3,
        stage: Stage::Early,
    },
    // A limit the reply says is for the sender's reputation: "rate limited due to IP
    // reputation" (Microsoft's 4.7.650, and its unmarked forms), "deferred because of poor
    // reputation". Before the phrase tables: the vocabulary's name "rate limited" says what was
    // done, this why. Only a reputation of the sender's (its IP, domain, a low or poor one): a
    // "reputation service" or "reputation policy" named beside another cause is not one.
    Pair {
        name: "due to ~ reputation",
        reason: "badreputation",
        subjects: &["due to", "because of"],
        predicates: &[
            "ip reputation",
            "sender reputation",
            "sending reputation",
            "domain reputation",
            "low reputation",
            "poor reputation",
            "bad reputation",
            "reputation of the sending",
        ],
        gap: 3,
        stage: Stage::Early,
    },
    // RFC 3463 X.4.2 (bad connection): the session was lost, broken or never established
    // (Postfix "lost connection with ... while ...", qmail "wasn't able to establish an SMTP
    // connection", OpenSMTPD "Network error on destination MXs", "connection reset").
    Pair {
        name: "connection ~ lost",
        reason: "networkerror",
        subjects: &["connection", "network", "session"],
        predicates: &[
            "lost",
            "error",
            "establish",
            "dropped",
            "reset",
            "broken",
            "interrupted",
        ],
        gap: 2,
        stage: Stage::Phrases,
    },
    // RFC 3463 X.4.3 (directory server failure): the resolver failed, not the domain
    // (Postfix "Name service error for name=... type=MX", "host name lookup failure",
    // "temporary failure in name resolution").
    Pair {
        name: "name service ~ failed",
        reason: "networkerror",
        subjects: &[
            "name service",
            "name server",
            "nameserver",
            "host name lookup",
            "name resolution",
        ],
        predicates: &[
            "error",
            "failure",
            "failed",
            "timeout",
            "timed out",
            "servfail",
        ],
        gap: 2,
        stage: Stage::Phrases,
    },
    // RFC 7505 (null MX, X.1.10) and a domain whose MX says it takes no mail ("No MX found for
    // domain", "an MX or SRV record indicated no SMTP service"; "MX" the word, not a host
    // named mx1...).
    Pair {
        name: "no mx",
        reason: "notaccept",
        subjects: &["mx$", "smtp service", "mail exchanger"],
        predicates: &["no$", "null"],
        gap: 1,
        stage: Stage::Phrases,
    },
    // RFC 7372 X.7.25 (reverse DNS validation failed) and the receivers' wording of a missing
    // or wrong PTR record (M3AAWG's sender best practices ask for one). Before the refused
    // client: "The IP address sending this message does not have a PTR record" names the
    // address only to say what it lacks.
    Pair {
        name: "reverse dns ~ missing",
        reason: "requireptr",
        subjects: &[
            "reverse dns",
            "rdns",
            "ptr",
            "reverse lookup",
            "reverse hostname",
            "reverse address",
            "reverse mapping",
            "pointer",
        ],
        predicates: &[
            "missing",
            "no$",
            "invalid",
            "failed",
            "failure",
            "not found",
            "mismatch",
            "does not",
            "doesn't",
            "cannot",
            "could not",
            "unable",
            "validation",
            "required",
        ],
        gap: 3,
        stage: Stage::Phrases,
    },
    // The client's address or name is refused (Postfix's "Client host rejected", the providers'
    // IP blocks: "IP address blacklisted", "Client host blocked", Orange's "Adresse IP source
    // bloquee").
    Pair {
        name: "client ~ refused",
        reason: "blocked",
        subjects: &[
            "client host",
            "client ip",
            "your ip",
            "ip address",
            "sending ip",
            "source ip",
            "adresse ip",
        ],
        predicates: &[
            "rejected",
            "blocked",
            "refused",
            "denied",
            "blacklisted",
            "listed",
            "banned",
            "bloquee",
            "not allowed",
            "not accepted",
        ],
        gap: 3,
        stage: Stage::Phrases,
    },
    // RFC 5321 section 5 (the domain has no route: no MX, no address), RFC 3463 X.1.2 ("bad
    // destination system address") and resolver wording (NXDOMAIN, "host not found").
    Pair {
        name: "domain ~ not found",
        reason: "hostunknown",
        subjects: &["domain", "host", "hostname"],
        predicates: &[
            "not found",
            "does not exist",
            "doesn't exist",
            "no such",
            "unknown",
            "invalid",
            "could not be resolved",
            "not resolvable",
        ],
        gap: 2,
        stage: Stage::Phrases,
    },
    // RFC 3463 X.2.2 ("mailbox full") and the providers' over-quota wording.
    Pair {
        name: "mailbox ~ full",
        reason: "mailboxfull",
        subjects: &[
            "mailbox", "inbox", "quota", "storage", "mail box", "maildir", "folder",
        ],
        predicates: &["full", "exceeded", "exceeds", "exceed", "over", "out of"],
        gap: 3,
        stage: Stage::Phrases,
    },
    // RFC 1870 (the SIZE extension: 552 "message size exceeds fixed maximum message size") and
    // RFC 3463 X.2.3/X.3.4: the message is larger than a limit. After the mailbox's own
    // families ("mailbox size limit exceeded" is a full mailbox) and after the status code
    // ("452 4.2.2 Mail folder size limit exceeded").
    Pair {
        name: "size ~ exceeded",
        reason: "emailtoolarge",
        subjects: &[
            "message size",
            "size limit",
            "maximum size",
            "message length",
        ],
        predicates: &["exceed", "too large", "too big", "over"],
        gap: 3,
        stage: Stage::AfterStatus,
    },
    // RFC 3463 X.2.1 ("mailbox disabled, not accepting messages") and the providers' wording
    // of an account that exists but is closed.
    Pair {
        name: "account ~ disabled",
        reason: "suspend",
        subjects: &["account", "mailbox", "user", "recipient"],
        predicates: &[
            "disabled",
            "inactive",
            "suspend",
            "suspension",
            "deactivated",
            "frozen",
            "locked",
            "blocked",
            "closed",
            "expired",
        ],
        gap: 5,
        stage: Stage::Early,
    },
    // Receivers throttling a sender: an unusual or unexpected rate or volume of mail (Google's
    // 421 4.7.28, Yahoo's [TSS04] in their published error lists), a limit on it.
    Pair {
        name: "rate ~ limited",
        reason: "ratelimited",
        subjects: &["rate", "volume", "traffic"],
        predicates: &[
            "unusual",
            "unexpected",
            "excessive",
            "limited",
            "limit",
            "exceeded",
            "too high",
        ],
        gap: 2,
        stage: Stage::Phrases,
    },
    // A server too busy for this sender now: RFC 5321 section 4.2.3's 421 "closing transmission
    // channel", and the providers' "server busy, try again later" (Google's 421 4.4.5,
    // Microsoft's 451 4.7.500).
    Pair {
        name: "busy ~ try again later",
        reason: "ratelimited",
        subjects: &["busy", "closing connection", "closing transmission channel"],
        predicates: &["try again later", "try later", "please try again"],
        gap: 3,
        stage: Stage::Phrases,
    },
    // A recipient receiving mail faster than it accepts (Google's 450 4.2.1 "receiving mail
    // at a rate that prevents additional messages", "receiving mail too quickly").
    Pair {
        name: "receiving mail ~ too fast",
        reason: "ratelimited",
        subjects: &["receiving mail", "receiving email", "receiving messages"],
        predicates: &["at a rate", "too quickly", "too fast"],
        gap: 1,
        stage: Stage::Phrases,
    },
    // A cap on concurrent connections (Exchange's 421 4.3.2 "maximum number of concurrent
    // connections has exceeded a limit", Postfix's "too many connections").
    Pair {
        name: "connections ~ exceeded",
        reason: "ratelimited",
        subjects: &["connections", "concurrent", "sessions"],
        predicates: &["exceeded", "limit", "maximum", "too many"],
        gap: 3,
        stage: Stage::Phrases,
    },
    // The sending MTA gave up after its retry period (RFC 5321 section 4.5.4.1: retries
    // until the queue lifetime ends; RFC 3463 X.4.7 "delivery time expired"): qmail's "in
    // the queue too long", "failed N attempts". (Yahoo's "after multiple retries, giving up"
    // is a system error in Sisimai's reading: not this family.)
    Pair {
        name: "queue ~ too long",
        reason: "expired",
        subjects: &["queue", "attempts"],
        predicates: &["too long", "failed", "expired", "lifetime"],
        gap: 3,
        stage: Stage::Phrases,
    },
    // RFC 5321 section 3.6.1 and 7.1: a server that is not the recipient's refuses to relay.
    Pair {
        name: "relay ~ denied",
        reason: "norelaying",
        subjects: &["relay", "relaying"],
        predicates: &[
            "denied",
            "not permitted",
            "not allowed",
            "not configured",
            "refused",
            "prohibited",
            "unable",
            "not accepted",
        ],
        gap: 3,
        stage: Stage::Phrases,
    },
    // RFC 5321 section 4.1.1.2 (MAIL refused) and RFC 3463 X.1.7/X.1.8 (bad sender address):
    // the sender, not the recipient, is refused.
    Pair {
        name: "sender ~ rejected",
        reason: "rejected",
        subjects: &[
            "sender",
            "mail from",
            "envelope from",
            "from address",
            "sending domain",
        ],
        predicates: &[
            "rejected",
            "refused",
            "denied",
            "blacklisted",
            "not allowed",
            "not permitted",
            "invalid",
            "unknown",
            "not verified",
            "verify failed",
        ],
        gap: 3,
        stage: Stage::Phrases,
    },
    // RFC 5321 section 4.2.2's 550 reply text ("mailbox unavailable") with the address it is
    // about written inside ("550 mailbox carol@example.com unavailable"): the address is not
    // a word, so the two stand together. Nothing between them: "mailbox temporarily
    // unavailable" is a busy mailbox, not a missing one.
    Pair {
        name: "mailbox <address> unavailable",
        reason: "userunknown",
        subjects: &["mailbox$"],
        predicates: &["unavailable$"],
        gap: 0,
        stage: Stage::Phrases,
    },
    // RFC 3463 X.1.1 ("bad destination mailbox address") and RFC 5321 section 4.2.2's 550
    // ("mailbox unavailable"): the MTAs' and providers' many wordings of a recipient that does
    // not exist ("unknown user", "no such recipient", "invalid mailbox", "recipient not
    // found", "user does not exist"), one family. After the sender's and the domain's families
    // (an invalid sender, an unknown domain are not an unknown recipient).
    Pair {
        name: "recipient ~ unknown",
        reason: "userunknown",
        subjects: &[
            "user",
            "recipient",
            "mailbox",
            "address",
            "account",
            "addressee",
            "userid",
            "local part",
        ],
        predicates: &[
            "unknown",
            "not found",
            "no such",
            "does not exist",
            "doesn't exist",
            "invalid",
            "not valid",
            "not recognized",
            "not recognised",
            "nonexistent",
            "non-existent",
        ],
        gap: 3,
        stage: Stage::Phrases,
    },
    // RFC 3463 X.7.1 used for content, and the filters' wording of a spam verdict
    // (SpamAssassin "scored as spam", "UBE" = unsolicited bulk email).
    Pair {
        name: "message ~ spam",
        reason: "spamdetected",
        subjects: &["message", "content", "mail", "email", "scored", "score"],
        predicates: &["spam$", "spamming", "unsolicited", "junk", "ube", "bulk"],
        gap: 4,
        stage: Stage::Phrases,
    },
    // RFC 3463 X.3.1 ("mail system full") and X.4.5 (congestion): the receiving system, not
    // the mailbox, is out of room.
    Pair {
        name: "insufficient ~ storage",
        reason: "systemfull",
        subjects: &["insufficient", "not enough", "out of", "no space"],
        predicates: &["disk", "storage", "space", "system"],
        gap: 2,
        stage: Stage::Phrases,
    },
    // RFC 5321 section 4.2.3 (500/501 syntax errors) and RFC 3463 X.5.2/X.5.4 (syntax error,
    // invalid command arguments). Not a recipient address's syntax: RFC 3463 files that under
    // addressing (X.1.3, "bad destination mailbox address syntax"), where the status decides.
    Pair {
        name: "command ~ malformed",
        reason: "syntaxerror",
        subjects: &["command", "parameter", "argument"],
        predicates: &[
            "malformed",
            "syntax",
            "unrecognized",
            "unrecognised",
            "not recognized",
            "not implemented",
        ],
        gap: 2,
        stage: Stage::Phrases,
    },
];

/// True when a subject of `pair` and one of its predicates stand within its gap of words.
fn pair_matches(pair: &Pair, text: &str) -> bool {
    // Most texts hold no subject or no predicate at all: say so before splitting into words
    // (by the first word of each, which a match must contain as it is).
    fn first(phrase: &str) -> &str {
        let word = phrase.split(' ').next().unwrap_or_default();
        word.strip_suffix('$').unwrap_or(word)
    }
    if !pair.subjects.iter().any(|w| text.contains(first(w)))
        || !pair.predicates.iter().any(|w| text.contains(first(w)))
    {
        return false;
    }
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | ':' | '(' | ')' | '"'))
        // Links are not words; nor is the lone "@" left where an address was
        // (`without_addresses`).
        .filter(|w| !w.is_empty() && !w.contains('@') && !w.contains("://"))
        .collect();
    let starts_at = |i: usize, phrase: &str| {
        let mut k = i;
        for part in phrase.split(' ') {
            let w = words.get(k).map(|w| w.trim_matches('.'));
            let found = match part.strip_suffix('$') {
                Some(exact) => w == Some(exact),
                None => w.is_some_and(|w| w.starts_with(part)),
            };
            if !found {
                return None;
            }
            k += 1;
        }
        Some(k)
    };
    for i in 0..words.len() {
        for subject in pair.subjects {
            let Some(end) = starts_at(i, subject) else {
                continue;
            };
            for predicate in pair.predicates {
                let plen = predicate.split(' ').count();
                // After the subject, within the gap.
                for j in end..=(end + pair.gap).min(words.len()) {
                    if starts_at(j, predicate).is_some() {
                        return true;
                    }
                }
                // Before it ("no such domain", "invalid domain").
                let from = i.saturating_sub(pair.gap + plen);
                for j in from..i {
                    if starts_at(j, predicate).is_some_and(|e| e <= i) {
                        return true;
                    }
                }
            }
        }
    }
    false
}

/// True when the unit called `name` (a wording, a family), read for `reason`, occurs in `text`
/// (for evaluation: which labelled texts support a unit).
pub fn fires(unit: Unit, reason: &str, name: &str, text: &str) -> bool {
    let text = readable(text);
    if let Some(pair) = PAIRS.iter().find(|p| p.name == name) {
        return pair_matches(pair, &text);
    }
    if crate::published::is_family(name) {
        return crate::published::fires(name, reason, &text);
    }
    if unit != Unit::Family && !whole_under(unit, name) {
        return mentions(&text, name);
    }
    let mut family = [RULES, LATE_RULES, WEAK_RULES]
        .into_iter()
        .flatten()
        .filter(|(r, family, _)| *family == name && *r == reason)
        .flat_map(|(_, _, phrases)| phrases.iter())
        .peekable();
    if family.peek().is_none() {
        return mentions(&text, name);
    }
    family.any(|p| mentions(&text, p))
}

/// The first family (in table order) whose wording `text` has, of those read at `stage`.
fn find_pair(text: &str, stage: Stage) -> Option<(&'static str, &'static str)> {
    PAIRS
        .iter()
        .filter(|p| !left_out(p.name) && p.stage == stage)
        .find(|p| pair_matches(p, text))
        .map(|p| (p.reason, p.name))
}

/// The reason an enhanced status code stands for (RFC 3463 and the IANA registry), when the
/// text said nothing recognisable.
pub fn reason_for_status(status: &str) -> Option<&'static str> {
    let mut parts = status.split('.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    let permanent = class == "5";
    // Each code by its meaning in RFC 3463 and the IANA registry (RFC 5248; 7372 for the
    // X.7.20-X.7.26 authentication codes, 7293 for X.7.17/18, 7505 for null MX).
    let r = match (subject, detail) {
        // Addressing.
        ("1", "0") | ("1", "1") | ("1", "3") | ("1", "4") => "userunknown",
        ("1", "2") => "hostunknown",
        ("1", "6") => "hasmoved",
        ("1", "7") | ("1", "8") => "rejected",
        ("1", "10") => "notaccept",
        // Mailbox: "other or undefined mailbox status" says the mailbox exists and something
        // about it refused the message (Sisimai's "filtered").
        ("2", "0") => "filtered",
        ("2", "1") => "suspend",
        ("2", "2") => "mailboxfull",
        ("2", "3") => "emailtoolarge",
        ("2", "4") => "mailererror",
        // Mail system. X.3.0 says nothing.
        ("3", "0") => return None,
        ("3", "1") => "systemfull",
        ("3", "2") => "notaccept",
        ("3", "4") => "emailtoolarge",
        ("3", _) => "systemerror",
        // Network and routing: X.4.4 "unable to route" as a permanent failure means the
        // domain has no route at all; X.4.1 "no answer from host" until the report was
        // written means delivery expired; X.4.5 is congestion of the mail system.
        ("4", "4") if permanent => "hostunknown",
        ("4", "1") if !permanent => "expired",
        ("4", "5") => "systemfull",
        ("4", "7") => "expired",
        ("4", _) => "networkerror",
        // Protocol: X.5.0 says nothing ("550 5.5.0 Requested action not taken"); X.5.3 is
        // too many recipients, X.5.4/X.5.5 arguments or versions the server does not take.
        ("5", "0") => return None,
        ("5", "3") => "ratelimited",
        ("5", "4") | ("5", "5") => "systemerror",
        ("5", _) => "syntaxerror",
        ("6", _) => "contenterror",
        // Security or policy.
        ("7", "1") => "blocked",
        // X.7.7 "message integrity failure"; X.7.10 "Encryption Needed" (RFC 5248's registry:
        // an external privacy layer such as TLS is needed first) and X.7.11 "Encryption
        // required for requested authentication mechanism" (RFC 4954); X.7.30 "REQUIRETLS
        // support required" (RFC 8689).
        ("7", "7" | "10" | "11" | "30") => "failedstarttls",
        // X.7.16 "Message is too big for the specified priority" (RFC 6710).
        ("7", "16") => "emailtoolarge",
        ("7", "13") => "suspend",
        ("7", "17") | ("7", "18") => "hasmoved",
        ("7", "25") => "requireptr",
        // X.7.29 "ARC validation failure" (RFC 8617).
        ("7", "20" | "21" | "22" | "23" | "24" | "26" | "29") => "authfailure",
        ("7", "27") => "notaccept",
        ("7", _) => "securityerror",
        _ => return None,
    };
    Some(r)
}

/// Phrases that say less than a final temporary status: consulted after it.
static LATE_RULES: &[Rule] = &[
    // RFC 3463 X.4.1 (no answer from host): no connection could be made.
    (
        "networkerror",
        "could not connect",
        &[
            "connection timed out",
            "could not connect",
            "unable to connect",
            "couldn't connect",
        ],
    ),
    // RFC 3463 X.3.0/X.3.5 and the MTAs' wording of an internal failure.
    (
        "systemerror",
        "system error",
        &[
            "internal error",
            "server error",
            "local error",
            "local problem",
            "resources temporarily unavailable",
            "service currently unavailable",
            "server busy",
            "configuration error",
            "i/o error",
            "transaction failed",
            "giving up",
        ],
    ),
    // A receiver's local policy refused the message (RFC 3463 X.7.1 used for policy).
    ("policyviolation", "policy", &["violates", "prohibited"]),
    (
        "policyviolation",
        "content presents a potential",
        &["content presents a potential"],
    ),
    ("policyviolation", "header error", &["header error"]),
    (
        "blocked",
        "connection refused by",
        &["connection refused by"],
    ),
    // A bare "access denied" says only that something was refused (qmail's sender refusal,
    // Postfix's "Relay access denied" and its access tables all use it; Exchange Online's
    // 5.4.1 edge block, "Recipient address rejected: Access denied", is read above).
    ("securityerror", "access denied", &["access denied"]),
];

/// Generic words, consulted only when no specific phrase, no final temporary status and no
/// status code decided.
static WEAK_RULES: &[Rule] = &[
    ("spamdetected", "spam", &["spam$", "spamming", "spammer"]),
    ("spamdetected", "score", &["score"]),
    ("mailboxfull", "quota", &["quota"]),
    ("mailboxfull", "is full", &["is full"]),
    ("mailboxfull", "insufficient", &["insufficient"]),
    ("norelaying", "relay", &["relay"]),
    ("securityerror", "security", &["security"]),
    ("securityerror", "certificate", &["certificate"]),
    ("mailererror", "program", &["program"]),
    ("mailererror", "pipe", &["pipe"]),
    ("notcompliantrfc", "header", &["header"]),
    ("networkerror", "dns", &["dns"]),
    ("networkerror", "lookup", &["lookup"]),
    ("networkerror", "timeout", &["timeout"]),
    ("networkerror", "timed out", &["timed out"]),
    ("networkerror", "connection", &["connection"]),
    ("networkerror", "unreachable", &["unreachable"]),
    ("userunknown", "not found", &["not found"]),
    (
        "userunknown",
        "recipient address rejected",
        &["recipient address rejected"],
    ),
    ("userunknown", "address rejected", &["address rejected"]),
    ("userunknown", "recipient rejected", &["recipient rejected"]),
    ("suspend", "disabled", &["disabled"]),
    // RFC 5321's 421/554 "Service not available" in a server's own words, with nothing more
    // specific in the text (a refusal that names its cause is read before).
    (
        "systemerror",
        "service unavailable",
        &["service unavailable"],
    ),
    ("policyviolation", "policy", &["policy"]),
    ("policyviolation", "prohibited", &["prohibited"]),
    ("policyviolation", "not allowed", &["not allowed"]),
    ("policyviolation", "violat", &["violat"]),
    ("policyviolation", "not permitted", &["not permitted"]),
    ("policyviolation", "denied", &["denied"]),
];

/// What the classifier knows about one failed recipient.
#[derive(Debug, Clone, Default)]
pub struct Evidence<'a> {
    /// Enhanced status code (D.S.N) if any.
    pub status: Option<&'a str>,
    /// The server's own words about this recipient (a Diagnostic-Code, a reply text, or the
    /// part of a bounce's prose that names the recipient).
    pub diagnostic: &'a str,
    /// The rest of the bounce's prose, consulted after the diagnostic.
    pub context: &'a str,
    /// The SMTP command the failure answered (MAIL, RCPT, DATA), when known.
    pub command: Option<&'a str>,
    /// RFC 3464 Action field.
    pub action: Option<&'a str>,
    /// The SMTP reply code quoted, when known.
    pub reply_code: Option<u16>,
    /// The provider whose server answered ([`crate::origin::remote`]), when known.
    pub remote: Option<&'a str>,
    /// The MTA or provider that wrote the report ([`crate::origin::writer`]), when known.
    pub writer: Option<&'a str>,
}

/// What an SMTP reply code alone says (RFC 5321 section 4.2.3): 500-504 are the syntax and
/// sequence replies, 555 unrecognised MAIL/RCPT parameters (section 4.1.1.11); 523, 524 and
/// 538 are the replies RFC 5248's registry gives with X.7.10 "Encryption Needed" and X.7.11
/// "Encryption required for requested authentication mechanism" (RFC 4954): TLS was needed
/// first; 521 and 556 say the host or the domain does not accept mail (RFC 7504).
fn reason_for_reply_code(code: Option<u16>) -> Option<&'static str> {
    match code? {
        500..=504 | 555 => Some("syntaxerror"),
        523 | 524 | 538 => Some("failedstarttls"),
        521 | 556 => Some("notaccept"),
        _ => None,
    }
}

/// True when `phrase` occurs in `text` starting at a word boundary ("locked" is not found in
/// "blocked").
fn mentions(text: &str, phrase: &str) -> bool {
    let (bare, _) = whole_word(phrase);
    text.match_indices(bare)
        .any(|(i, _)| at_word(text, phrase, i, i + bare.len()))
}

/// A wording ending in `$` is a whole word ("spam$" is not found in "spamhaus"): the wording
/// without it, and whether it is one.
fn whole_word(phrase: &str) -> (&str, bool) {
    match phrase.strip_suffix('$') {
        Some(bare) => (bare, true),
        None => (phrase, false),
    }
}

/// True when `phrase`, found in `text` at `start..end`, starts a word (when it starts with a
/// letter or digit) and, when it ends in `$`, also ends one.
fn at_word(text: &str, phrase: &str, start: usize, end: usize) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric());
    let starts_word = alnum(phrase.chars().next());
    (!starts_word || !alnum(text[..start].chars().next_back()))
        && (!whole_word(phrase).1 || !alnum(text[end..].chars().next()))
}

/// One automaton over every phrase of a table of lists (a rule table, the providers' or MTAs'
/// lists), so a text is scanned once.
pub(crate) struct Matcher {
    pub(crate) automaton: aho_corasick::AhoCorasick,
    /// For each pattern: (list index, phrase index).
    pub(crate) origin: Vec<(usize, usize)>,
}

impl Matcher {
    /// Over `lists` of phrases; `kind` as aho-corasick chooses when None.
    pub(crate) fn over<'a, L: IntoIterator<Item = &'a str>>(
        lists: impl IntoIterator<Item = L>,
        kind: Option<aho_corasick::AhoCorasickKind>,
    ) -> Matcher {
        let mut patterns = Vec::new();
        let mut origin = Vec::new();
        for (i, phrases) in lists.into_iter().enumerate() {
            for (j, p) in phrases.into_iter().enumerate() {
                patterns.push(p);
                origin.push((i, j));
            }
        }
        Matcher {
            automaton: aho_corasick::AhoCorasick::builder()
                .kind(kind)
                .build(patterns)
                .expect("phrase automaton"),
            origin,
        }
    }

    fn new(rules: &[Rule]) -> Matcher {
        let lists = rules
            .iter()
            .map(|(_, _, phrases)| phrases.iter().map(|p| whole_word(p).0));
        Matcher::over(lists, None)
    }
}

fn matcher(rules: &'static [Rule]) -> &'static Matcher {
    static TABLES: std::sync::OnceLock<[Matcher; 3]> = std::sync::OnceLock::new();
    let tables = TABLES.get_or_init(|| {
        [
            Matcher::new(RULES),
            Matcher::new(LATE_RULES),
            Matcher::new(WEAK_RULES),
        ]
    });
    if std::ptr::eq(rules, RULES) {
        &tables[0]
    } else if std::ptr::eq(rules, LATE_RULES) {
        &tables[1]
    } else {
        &tables[2]
    }
}

/// What a k-fold evaluation leaves out of the rule tables: whole families of wordings (one
/// meaning, several wordings), or single wordings. Families of [`Pair`]s, the families whose
/// wordings come whole from one source (the reasons' own names, the DNSBL operators' names,
/// each provider's published replies) and the wordings that keep an unknown recipient unknown
/// after DATA are units of their own either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Family,
    /// Every wording its own unit (the strict, honest one).
    Wording,
    /// Every wording its own unit, but a list no wording of which was picked (the
    /// vocabulary's names, a complete transcription of a source's messages) one unit.
    WordingWholeLists,
}

/// True when `family` is one unit under `unit` though a table of wordings.
fn whole_under(unit: Unit, family: &str) -> bool {
    unit == Unit::WordingWholeLists && whole(family)
}

thread_local! {
    /// Units left out of every rule table on this thread (see [`without_phrases`]).
    static LEFT_OUT: std::cell::RefCell<Option<(Unit, std::collections::HashSet<&'static str>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Run `f` with these units (families or wordings, by name) left out of the rule tables on
/// this thread: for evaluation, so that a k-fold test can score a fold without the units
/// nothing outside it supports.
pub fn without_phrases<R>(
    unit: Unit,
    left: std::collections::HashSet<&'static str>,
    f: impl FnOnce() -> R,
) -> R {
    LEFT_OUT.with(|l| *l.borrow_mut() = Some((unit, left)));
    let r = f();
    LEFT_OUT.with(|l| *l.borrow_mut() = None);
    r
}

/// True when the unit called `name` is left out (a family of pairs, a wording that keeps an
/// unknown recipient unknown: units under either kind of evaluation).
fn left_out(name: &str) -> bool {
    LEFT_OUT.with(|l| {
        l.borrow()
            .as_ref()
            .is_some_and(|(_, set)| set.contains(name))
    })
}

/// True when a table rule's wording is left out: its family's name under [`Unit::Family`],
/// the wording under [`Unit::Wording`].
fn rule_left_out(family: &str, wording: &str) -> bool {
    LEFT_OUT.with(|l| {
        l.borrow().as_ref().is_some_and(|(unit, set)| match unit {
            Unit::Family => set.contains(family),
            _ if whole_under(*unit, family) => set.contains(family),
            _ => set.contains(wording),
        })
    })
}

/// The unit of evaluation of the given kind that `why` (what decided a reason: a wording, a
/// family of pairs, "status", ...) belongs to, if it is one.
pub fn unit_of(unit: Unit, why: &str) -> Option<&'static str> {
    let tables = [RULES, LATE_RULES, WEAK_RULES].into_iter().flatten();
    let found =
        tables.flat_map(|(_, family, wordings)| wordings.iter().map(move |w| (*family, *w)));
    let pairs = PAIRS.iter().map(|p| (p.name, p.name));
    let surely = SURELY_UNKNOWN.iter().map(|p| (*p, *p));
    let published = crate::published::fragments()
        .filter_map(|f| crate::published::family_of(f).map(|family| (family, f)));
    found
        .chain(surely)
        .chain(pairs)
        .chain(published)
        .find(|(_, w)| *w == why)
        .map(|(family, wording)| {
            if unit == Unit::Family || whole_under(unit, family) {
                family
            } else {
                wording
            }
        })
}

/// Every unit of evaluation of the given kind, with the reason it stands for: the families or
/// the wordings of the rule tables, then the wordings that keep an unknown recipient unknown
/// after DATA and the families of pairs (units of their own either way).
pub fn units(unit: Unit) -> Vec<(&'static str, &'static str)> {
    let tables = [RULES, LATE_RULES, WEAK_RULES].into_iter().flatten();
    let mut all: Vec<(&'static str, &'static str)> = match unit {
        Unit::Family => tables
            .map(|(reason, family, _)| (*reason, *family))
            .collect(),
        Unit::Wording | Unit::WordingWholeLists => tables
            .flat_map(|(reason, family, wordings)| {
                let one = whole_under(unit, family);
                let each = wordings.iter().map(move |w| (*reason, *w));
                std::iter::once((*reason, *family))
                    .filter(move |_| one)
                    .chain(each.filter(move |_| !one))
            })
            .collect(),
    };
    all.extend(SURELY_UNKNOWN.iter().map(|p| ("userunknown", *p)));
    all.extend(PAIRS.iter().map(|p| (p.reason, p.name)));
    all.extend(crate::published::units(
        unit == Unit::Family,
        unit == Unit::WordingWholeLists,
    ));
    all.sort();
    all.dedup();
    all
}

/// Every wording the classifier holds: the rule tables', the ones that keep an unknown
/// recipient unknown, the fragments of the providers' published replies (to check that it holds
/// no whole sentence of a text it is tested on).
pub fn wordings() -> Vec<&'static str> {
    let tables = [RULES, LATE_RULES, WEAK_RULES].into_iter().flatten();
    tables
        .flat_map(|(_, _, wordings)| wordings.iter().map(|w| whole_word(w).0))
        .chain(SURELY_UNKNOWN.iter().copied())
        .chain(crate::published::fragments())
        .collect()
}

/// The first rule (in table order) with a phrase in `text` at a word boundary, and that phrase.
fn find_rule(rules: &'static [Rule], text: &str) -> Option<(&'static str, &'static str)> {
    let m = matcher(rules);
    m.automaton
        .find_overlapping_iter(text)
        .filter(|hit| {
            let (i, j) = m.origin[hit.pattern().as_usize()];
            let phrase = rules[i].2[j];
            !rule_left_out(rules[i].1, phrase) && at_word(text, phrase, hit.start(), hit.end())
        })
        .map(|hit| m.origin[hit.pattern().as_usize()])
        .min()
        .map(|(i, j)| (rules[i].0, rules[i].2[j]))
}

/// Status codes that say more than any wording.
fn decisive_status(status: Option<&str>) -> Option<&'static str> {
    match status? {
        "5.1.6" => Some("hasmoved"),
        "5.1.7" | "5.1.8" => Some("rejected"),
        "5.2.3" => Some("emailtoolarge"),
        "5.7.13" => Some("suspend"),
        _ => None,
    }
}

/// Wordings that name an unknown recipient beyond doubt, whatever the command.
const SURELY_UNKNOWN: &[&str] = &[
    "recipient name is not recognized",
    "not listed in",
    "no such mailbox",
    "recipient address rejected: access denied",
    "userid",
    "mailbox not found",
    // Yahoo refuses an unknown recipient after DATA: "554 delivery error: dd This user doesn't
    // have a yahoo.com account" (the sample bounce of its published SMTP error codes page). The
    // same "dd" also prefixes other refusals ("This account has been disabled"), which their
    // own wordings decide first: this list is read only once a reason is userunknown. The
    // prefix, not Yahoo's sentence: the fleet's yahoo-like profile answers with that sentence,
    // and sim/tests/provider_replies.rs classifies the fleet's replies without the providers'
    // published lists (published.rs), which hold a fragment of it.
    "delivery error: dd",
];

/// A text as the rules read it: lower case, white space squeezed, without addresses
/// ([`without_addresses`]) and without the clauses that give a rule's purpose.
fn readable(text: &str) -> String {
    let text = squeeze(&text.to_ascii_lowercase());
    let text = match without_addresses(&text) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(t) => t,
    };
    without_purposes(text)
}

/// Clauses that say why a receiver has a rule, not what this message did ("To reduce the
/// amount of spam sent to Gmail, this message has been blocked", "To best protect our users
/// from spam, ...": the providers' refusals for unauthenticated or malformed mail, low
/// reputation, ... say it alike): taken out before the text is read.
fn without_purposes(text: String) -> String {
    const PURPOSES: &[&str] = &["amount of spam", "users from spam"];
    if !PURPOSES.iter().any(|p| text.contains(p)) {
        return text;
    }
    PURPOSES.iter().fold(text, |t, p| t.replace(p, " "))
}

/// Sendmail's EX_PROTOCOL ("Remote protocol error", sysexits.c) says only that the remote
/// answered what Sendmail did not expect; its transcript gives that answer on the line before
/// (`<<< 550 Insecure Mail Relay`), which says why. That answer (readable), for the first such
/// line of `text` (the diagnostic as written, in lines) that has one.
fn remote_reply_before_protocol_error(text: &str) -> Option<String> {
    let mut previous: Option<&str> = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        const GLOSS: &[u8] = b"remote protocol error";
        if line
            .as_bytes()
            .windows(GLOSS.len())
            .any(|w| w.eq_ignore_ascii_case(GLOSS))
            && let Some(reply) = previous.and_then(|p| p.strip_prefix("<<<"))
        {
            return Some(readable(reply));
        }
        previous = Some(line);
    }
    None
}

/// Pick the reason for one failure.
pub fn reason(e: &Evidence) -> &'static str {
    explain(e).0
}

/// The reason and what decided it (a phrase, "status", "action").
pub fn explain(e: &Evidence) -> (&'static str, &'static str) {
    let primary = readable(e.diagnostic);
    // Read only when the earlier evidence decided nothing (a report naming thousands of
    // recipients shares one long text as their context).
    let context = std::cell::OnceCell::new();
    let context = || context.get_or_init(|| readable(e.context)).as_str();
    use crate::published::{MtaMessages, Tier};
    let mta_primary = MtaMessages::in_text(&primary, e.writer);
    // Read only when the earlier evidence decided nothing.
    let mta_context = std::cell::OnceCell::new();
    let mta_context = || mta_context.get_or_init(|| MtaMessages::in_text(context(), e.writer));
    let fragment = |d: crate::published::Decided| (d.0, d.2);
    // RFC 3464 section 2.3.3: a report of success (delivered, relayed, expanded) is no bounce;
    // Sisimai calls it "delivered".
    if e.action.is_some_and(|a| {
        ["delivered", "relayed", "expanded"]
            .iter()
            .any(|k| a.eq_ignore_ascii_case(k))
    }) {
        return ("delivered", "action");
    }
    let decided = decisive_status(e.status)
        .map(|r| (r, "status"))
        .or_else(|| {
            crate::published::provider_reason(e.remote, &primary, rule_left_out).map(fragment)
        })
        .or_else(|| mta_primary.reason(Tier::Cause, rule_left_out).map(fragment))
        // A wrapper says only at which step the server refused ("refused to talk to me", "but
        // greeting failed"); a quoted status of RFC 3463's network and routing class (X.4.x:
        // no answer, a bad connection, a timeout) says the connection itself failed.
        .or_else(|| {
            e.status
                .filter(|s| s.starts_with("4.4.") || s.starts_with("5.4."))
                .filter(|s| !s.ends_with(".4.0"))
                .filter(|_| mta_primary.reason(Tier::Wrapper, rule_left_out).is_some())
                .and_then(reason_for_status)
                .map(|r| (r, "status"))
        })
        .or_else(|| {
            let gloss = primary.contains("remote protocol error");
            let reply = gloss.then(|| remote_reply_before_protocol_error(e.diagnostic));
            reply.flatten().and_then(|reply| {
                find_pair(&reply, Stage::Early)
                    .or_else(|| find_rule(RULES, &reply))
                    .or_else(|| find_pair(&reply, Stage::Phrases))
            })
        })
        .or_else(|| find_pair(&primary, Stage::Early))
        .or_else(|| find_rule(RULES, &primary))
        .or_else(|| {
            mta_primary
                .reason(Tier::Wrapper, rule_left_out)
                .map(fragment)
        })
        .or_else(|| {
            mta_context()
                .reason(Tier::Cause, rule_left_out)
                .map(fragment)
        })
        .or_else(|| find_rule(RULES, context()))
        .or_else(|| {
            mta_context()
                .reason(Tier::Wrapper, rule_left_out)
                .map(fragment)
        })
        .or_else(|| find_pair(&primary, Stage::Phrases))
        .or_else(|| {
            let delayed = e.action.is_some_and(|a| a.eq_ignore_ascii_case("delayed"));
            // A routing or network failure that lasted until the message was given up.
            let final_temp = e.status.is_some_and(|s| s.starts_with("4.4."))
                && e.action.is_some_and(|a| a.eq_ignore_ascii_case("failed"));
            (delayed || final_temp).then_some(("expired", "action"))
        })
        .or_else(|| {
            mta_primary
                .reason(Tier::GivenUp, rule_left_out)
                .map(fragment)
        })
        .or_else(|| {
            mta_context()
                .reason(Tier::GivenUp, rule_left_out)
                .map(fragment)
        })
        .or_else(|| find_rule(LATE_RULES, &primary))
        .or_else(|| find_rule(LATE_RULES, context()))
        .or_else(|| {
            e.status
                .filter(|s| !s.ends_with(".0.0") && !s.contains(".0.9"))
                .and_then(reason_for_status)
                .map(|r| (r, "status"))
        })
        .or_else(|| find_pair(&primary, Stage::AfterStatus))
        .or_else(|| reason_for_reply_code(e.reply_code).map(|r| (r, "reply code")))
        .or_else(|| {
            mta_primary
                .reason(Tier::Generic, rule_left_out)
                .map(fragment)
        })
        .or_else(|| {
            mta_context()
                .reason(Tier::Generic, rule_left_out)
                .map(fragment)
        })
        .or_else(|| find_rule(WEAK_RULES, &primary))
        .or_else(|| find_rule(WEAK_RULES, context()));
    let (mut r, why) = decided.unwrap_or(("onhold", "default"));

    // An unknown recipient refused at RCPT (or with a 5.1.x status) is unknown; refused after
    // the message was sent, or without telling, the message was filtered.
    let command = e.command.unwrap_or_default().to_ascii_uppercase();
    let weakly_decided = matches!(why, "default" | "status" | "reply code")
        || crate::published::is_generic(why)
        || WEAK_RULES
            .iter()
            .any(|(_, _, wordings)| wordings.contains(&why));
    let refused_client = matches!(command.as_str(), "CONNECT" | "EHLO");
    // Before MAIL and RCPT (RFC 5321 section 3.3) the server knows no recipient: words about an
    // unknown or full mailbox, an unknown or invalid domain, answer the client's own name
    // ("Connected to ... but my name was rejected. Remote host said: 501 Invalid domain name").
    let about_recipient = matches!(
        r,
        "userunknown" | "filtered" | "mailboxfull" | "hostunknown" | "suspend" | "hasmoved"
    );
    // A refusal in security's general words ("Access denied") before any envelope refuses the
    // client too.
    if refused_client
        && (weakly_decided || matches!(r, "spamdetected" | "securityerror") || about_recipient)
    {
        // Refused before any envelope: the client itself is blocked.
        r = "blocked";
    } else if command == "MAIL" && matches!(r, "userunknown" | "onhold" | "filtered") {
        // The sender was refused, not the recipient.
        r = "rejected";
    } else if r == "userunknown" && command != "RCPT" {
        // A 5.1.x status is about the address itself, whatever command it answered.
        let status_says_address = e.status.is_some_and(|s| {
            s.starts_with("5.1.")
                || s.starts_with("4.1.")
                || s.starts_with("5.5.")
                || s.starts_with("5.4.")
        });
        // A provider's published reply for an unknown account says so whatever the command.
        let surely = crate::published::is_provider_reply(why)
            || SURELY_UNKNOWN
                .iter()
                .filter(|p| !left_out(p))
                .any(|p| mentions(&primary, p) || mentions(context(), p));
        if !status_says_address && !surely {
            r = "filtered";
        }
    }
    (r, why)
}
/// A reason of Sisimai's older vocabulary in the current one (labels written before the
/// renaming: `toomanyconn`, `speeding`, `mesgtoobig`, `exceedlimit`).
pub fn current_name(reason: &str) -> &str {
    match reason {
        "toomanyconn" | "speeding" => "ratelimited",
        "mesgtoobig" | "exceedlimit" => "emailtoolarge",
        other => other,
    }
}

/// Hard bounces: the address will never work.
pub fn is_hard(reason: &str, status: Option<&str>) -> bool {
    match reason {
        "userunknown" | "hostunknown" | "hasmoved" => true,
        "notaccept" => !status.is_some_and(|s| s.starts_with('4')),
        _ => false,
    }
}
