//! What the origin of a bounce is known to say: the big receivers' published replies (the lists
//! Google, Microsoft and Yahoo publish of what their servers answer and why, Spectrum's
//! Acceptable Use Policy codes: the "rhost" layer of a bounce parser, keyed by the provider
//! that answered) and the MTAs' own messages (what
//! Postfix, Exim, Sendmail, qmail, OpenSMTPD and Amazon SES write in their bounces, from their
//! source code or documentation: the "lhost" layer, keyed by the MTA that wrote the report).
//!
//! An entry is a short fragment of a reply or message (at most four words, lower case, as
//! [`crate::extract::squeeze`] leaves it: replies are quoted over folded lines) and the reason
//! in Sisimai's vocabulary, each by what its source says it means. A provider's entries apply
//! only to a reply the provider gave: the answering host is the provider's
//! ([`crate::origin::remote`]) or the reply carries the provider's own mark (Google appends
//! "gsmtp" to every error it sends). An MTA's entries apply only to a report that MTA wrote
//! ([`crate::origin::writer`]): another server's reply quoted in it is read by the phrase
//! families. An MTA sentence that wraps a quoted reply ("Connected to ... but sender was
//! rejected. Remote host said: ...") is read after the phrase families, which read the reply;
//! one that says the MTA gave up ("... in the queue too long") at the give-up step.
//!
//! In the k-fold evaluation ([`crate::reason::Unit`]) each fragment is its own unit by wording
//! (these lists were written knowing the corpus they are scored on) and each list one unit by
//! family.
//!
//! Left out on purpose: replies whose meaning is not a bounce reason (Google's "Mail server
//! temporarily rejected message" says no more than a 4.3.0 status), and the ones the generic
//! families already read the same way.

use crate::reason::Matcher;

/// One provider's published list, or one MTA's messages.
pub struct Provider {
    /// The family's name: its unit of evaluation by family.
    pub family: &'static str,
    /// The provider's name in [`crate::origin::remote`] (a provider's list).
    pub remote: Option<&'static str>,
    /// Words in a reply that say the provider gave it.
    pub marks: &'static [&'static str],
    /// The writers' names in [`crate::origin::writer`] (an MTA's messages).
    pub writers: &'static [&'static str],
    /// Where the list is published.
    pub source: &'static str,
    /// Every message of the source named (not a choice of them): one unit of the k-fold
    /// evaluation even by wording, since no fragment of it was picked for a text it is scored
    /// on.
    pub complete: bool,
    /// Fragments of the replies or messages and the reason each stands for.
    pub replies: &'static [(&'static str, &'static str)],
    /// The fragments (of `replies`) that wrap a quoted server reply.
    pub wrappers: &'static [&'static str],
    /// Generic words only (an MTA's stock replies): read after the status and reply codes.
    pub generic: bool,
}

pub static PROVIDERS: &[Provider] = &[
    Provider {
        family: "google's published replies",
        complete: false,
        remote: Some("google"),
        writers: &[],
        wrappers: &[],
        generic: false,
        // "Gmail appends gsmtp (Google SMTP) to all error messages; gcdp to errors from an
        // administrator's custom rules"; its replies link to its help pages.
        marks: &["gsmtp", "gcdp", "support.google.com"],
        source: "https://support.google.com/a/answer/3726730 (Gmail SMTP errors and codes)",
        replies: &[
            // 421 4.7.0 / 550 5.7.1: low reputation of the sending IP or domain.
            ("very low reputation of", "badreputation"),
            ("reputation of the sending", "badreputation"),
            // 421 4.7.0: "suspicious due to the nature of the content and/or the links".
            ("nature of the content", "spamdetected"),
            // 550 5.7.1 "likely unsolicited mail".
            ("likely unsolicited mail", "spamdetected"),
            // 550 5.7.1 "... unusual rate of unsolicited mail originating from your IP address.
            // To protect our users from spam, mail sent from your IP address has been
            // blocked": the permanent form of the next reply is a block.
            ("address has been blocked", "blocked"),
            // 421 4.7.28 "unusual rate of unsolicited mail ... rate limited".
            ("unusual rate of unsolicited", "ratelimited"),
            // 421 4.7.26 / 4.7.27 / 4.7.30 "This mail has been rate limited because it is
            // unauthenticated", "... because SPF did not pass" (also "does not pass", "SPF
            // authentication didn't pass"), "... because DKIM did not pass": the limit is for
            // the failed authentication the reply names.
            ("because it is unauthenticated", "authfailure"),
            ("because spf", "authfailure"),
            ("because dkim", "authfailure"),
            // 421 4.7.29 / 550 5.7.29 "Your email has been rate limited / blocked because this
            // message wasn't sent over a TLS connection", earlier "... because TLS wasn't
            // used" (the bulk senders' requirements). (Sisimai files 4.7.29 as securityerror;
            // mailsim reads every TLS requirement as failedstarttls.)
            ("sent over a tls", "failedstarttls"),
            ("because tls wasn't used", "failedstarttls"),
            // 450 4.2.1 / 550 5.2.1 "receiving mail too quickly" / "at a rate that prevents".
            ("receiving mail too quickly", "ratelimited"),
            ("receiving mail at a", "ratelimited"),
            // 450 4.2.1 / 550 5.7.1 / 550 5.4.5 relay and sending limits.
            ("smtp relay limit exceeded", "ratelimited"),
            ("daily sending quota exceeded", "ratelimited"),
            ("email quota exceeded", "ratelimited"),
            // 452 4.5.3 "Your message has too many recipients", "Domain policy size per
            // transaction exceeded".
            ("too many recipients", "ratelimited"),
            ("policy size per transaction", "ratelimited"),
            // 550 5.1.1 / 550 5.2.1 / 452 4.2.2: "The email account that you tried to reach
            // does not exist / is disabled / is inactive / is over quota".
            ("reach does not exist", "userunknown"),
            ("to reach is disabled", "suspend"),
            ("to reach is inactive", "suspend"),
            ("to reach is over", "mailboxfull"),
            // 452 4.2.2 / 552 5.2.2 "The recipient's inbox is out of storage space".
            ("out of storage space", "mailboxfull"),
            // 552 5.2.3 / 5.3.4 "Your message exceeded Google's message size limits".
            ("message size limits", "emailtoolarge"),
            // 553 5.1.2 "We weren't able to find the recipient domain".
            ("find the recipient domain", "hostunknown"),
            // 553 5.1.3 "The recipient address is not a valid RFC 5321 address".
            ("valid rfc 5321 address", "userunknown"),
            // 550 5.7.1 "This message is not RFC 5322 compliant"; From: header rules.
            ("not rfc 5322 compliant", "notcompliantrfc"),
            ("address in from: header", "notcompliantrfc"),
            ("addresses in from: header", "notcompliantrfc"),
            // 550 5.7.1 "Messages missing a valid Message-ID header are not accepted" (also
            // "Message-ID: header").
            ("missing a valid message-id", "notcompliantrfc"),
            // 554 5.6.0 "Mail message is malformed. Not accepted."
            ("message is malformed", "contenterror"),
            // 550 5.7.25: the sending IP has no PTR record, or it does not match.
            ("have a ptr record", "requireptr"),
            ("pointer (ptr) record", "requireptr"),
            // 550 5.7.26 / 5.7.27 / 5.7.30-5.7.32: authentication and alignment.
            ("not have authentication information", "authfailure"),
            ("fails to pass authentication", "authfailure"),
            ("sender is unauthenticated", "authfailure"),
            ("unauthenticated email", "authfailure"),
            ("spf check failed", "authfailure"),
            ("authenticated spf or dkim", "authfailure"),
            // 552 5.7.0 "content presents a potential security issue", "illegal attachment";
            // 550 5.7.1 "has a policy that prohibited the mail", "violates ... email policy".
            // (The reply's first line: multi-line replies are often quoted in part.)
            ("content presents a potential", "policyviolation"),
            ("illegal attachment", "policyviolation"),
            ("policy that prohibited the", "policyviolation"),
            ("violates", "policyviolation"),
            // 550 5.7.1 "The IP you're using to send mail is not authorized to send email
            // directly to our servers"; 421 4.7.0 "IP not in whitelist for RCPT domain".
            ("send email directly to", "blocked"),
            ("not in whitelist", "blocked"),
            // 550 5.7.0 "Mail relay denied"; "Mail Sending denied" (sender account).
            ("mail relay denied", "norelaying"),
            ("mail sending denied", "rejected"),
            // 421 4.3.0 / 4.7.0 "Temporary System Problem".
            ("temporary system problem", "systemerror"),
            // 451 4.5.0 / 454 4.5.0 "SMTP protocol violation".
            ("smtp protocol violation", "syntaxerror"),
            // 530 / 535 / 554 5.7.0: authentication of the client.
            ("too many unauthenticated commands", "securityerror"),
            ("application-specific password required", "securityerror"),
            ("password not accepted", "securityerror"),
        ],
    },
    Provider {
        family: "microsoft's published replies",
        complete: false,
        remote: Some("microsoft"),
        writers: &[],
        wrappers: &[],
        generic: false,
        // Exchange's NDR codes name the component ("RESOLVER.ADR.RecipNotFound"); Exchange
        // Online's hosts, named in its replies, are *.protection.outlook.com.
        marks: &["protection.outlook.com", "resolver.adr.", "resolver.rst."],
        source: "https://learn.microsoft.com/en-us/exchange/mail-flow-best-practices/non-delivery-reports-in-exchange-online/non-delivery-reports-in-exchange-online (Exchange Online NDRs); https://sendersupport.olc.protection.outlook.com/pm/troubleshooting.aspx (Outlook.com)",
        replies: &[
            // 5.1.1 / 5.1.10 / 5.4.1: the recipient does not exist.
            ("resolver.adr.recipnotfound", "userunknown"),
            ("resolver.adr.recipientnotfound", "userunknown"),
            ("resolver.adr.exrecipnotfound", "userunknown"),
            ("by smtp address lookup", "userunknown"),
            // 5.7.1 RESOLVER.RST.AuthRequired: the recipient takes mail only from
            // authenticated senders.
            ("resolver.rst.authrequired", "securityerror"),
            // 5.2.3 / 5.3.4 size limits.
            ("resolver.rst.recipsizelimit", "emailtoolarge"),
            ("resolver.rst.sendsizelimit", "emailtoolarge"),
            // 5.1.8 "Access denied, bad outbound sender".
            ("bad outbound sender", "rejected"),
            // 5.7.606-649 "banned sending IP"; 5.7.705/708 "traffic not accepted from this
            // IP"; 5.7.513 "blocked ... using Customer Block list"; Outlook.com S3140/S3150
            // "part of their network is on our block list".
            ("banned sending ip", "blocked"),
            // 5.7.511 "Access denied, banned sender[<ip>]. To request removal from this list,
            // forward this message to delist@microsoft.com": the IP, as in 5.7.606 (the
            // bracket: older Exchange's 5.7.501-503 "banned sender" is the sending account).
            ("banned sender[", "blocked"),
            // 5.7.506 "Access Denied, Bad HELO": the client's greeting.
            ("bad helo", "blocked"),
            // 5.7.750 "Client blocked from sending from unregistered domains": the sender's
            // domain is none of the sending tenant's.
            ("unregistered domains", "rejected"),
            // 4.7.650 "The mail server [<ip>] has been temporarily rate limited due to IP
            // reputation".
            ("due to ip reputation", "badreputation"),
            ("traffic not accepted from", "blocked"),
            ("customer block list", "blocked"),
            ("network is on our", "blocked"),
            // 5.7.509 DMARC; 5.7.515 "doesn't meet the required authentication level";
            // 5.7.23 SPF violation; 4.7.26 IPv6 without SPF or DKIM.
            ("does not pass dmarc", "authfailure"),
            ("required authentication level", "authfailure"),
            ("sender policy framework violation", "authfailure"),
            // 5.7.512 "message must be RFC 5322 section 3.6.2 compliant".
            ("rfc 5322 section 3.6.2", "notcompliantrfc"),
            // 5.4.310 "DNS domain does not exist"; 5.4.312 "DNS query failed"; 5.4.14 hop
            // count.
            ("domain does not exist", "hostunknown"),
            // The same, its domain named between: "DNS domain <domain> does not exist
            // [Message=InfoDomainNonexistent]".
            ("infodomainnonexistent", "hostunknown"),
            ("dns query failed", "networkerror"),
            ("hop count exceeded", "networkerror"),
            // 5.2.121 / 5.2.122 "per hour message receive limit"; 5.1.90 "daily limit for
            // message recipients"; 5.2.2 "Submission quota exceeded"; 5.7.700-749 tenant
            // threshold.
            ("message receive limit", "ratelimited"),
            ("daily limit for message", "ratelimited"),
            ("submission quota exceeded", "ratelimited"),
            ("tenant has exceeded threshold", "ratelimited"),
            // 5.7.57 / 5.7.12 the client or sender was not authenticated.
            ("client was not authenticated", "securityerror"),
            ("sender was not authenticated", "securityerror"),
            // 5.7.64 / 5.4.1 "Relay Access Denied".
            ("relay access denied", "norelaying"),
        ],
    },
    Provider {
        family: "yahoo's published replies",
        complete: false,
        remote: Some("yahoo"),
        writers: &[],
        wrappers: &[],
        generic: false,
        // Its refusals after DATA start "delivery error: dd" (the sample bounce of the page);
        // its replies point to postmaster.yahooinc.com (earlier postmaster.verizonmedia.com,
        // and help pages on postmaster.yahoo.com for the [TS0x] codes).
        marks: &[
            "delivery error: dd",
            "postmaster.yahooinc.com",
            "postmaster.yahoo.com",
            "postmaster.verizonmedia.com",
            "yahoo.com account",
        ],
        source: "https://senders.yahooinc.com/smtp-error-codes/ (SMTP error codes)",
        replies: &[
            // 553 5.7.1 [BL21]/[BL22]/[BL23] "Connections will not be accepted from ...,
            // because the ip is in Spamhaus's list".
            ("[bl21]", "blocked"),
            ("[bl22]", "blocked"),
            ("[bl23]", "blocked"),
            // 554 5.7.9 "Message not accepted for policy reasons".
            ("accepted for policy reasons", "policyviolation"),
            // 554 "This mailbox is disabled (554.30)".
            ("mailbox is disabled", "suspend"),
            // 554 "delivery error: dd This user doesn't have a yahoo.com account".
            ("user doesn't have a", "userunknown"),
            // 552 1 "Requested mail action aborted, mailbox not found".
            ("mailbox not found", "userunknown"),
            // 421 "Max message per connection reached".
            ("max message per connection", "ratelimited"),
            // 554 "Message not allowed - Headers are not RFC compliant".
            ("headers are not rfc", "notcompliantrfc"),
            // 451 "temporarily deferred due to unresolvable RFC.5321 from domain".
            ("unresolvable rfc.5321 from", "rejected"),
            // 421 4.7.0 [TSS04] "Messages from <ip> temporarily deferred due to unexpected
            // volume or user complaints", and its older codes [TS01]/[TS02] ("temporarily
            // deferred") and [TS03] ("All messages from <ip> permanently deferred": Yahoo's help
            // article, a volume "characteristic of unsolicited, bulk emails"): a deferral for
            // what the sending IP's traffic and complaints say of it, its reputation.
            ("[tss04]", "badreputation"),
            ("[ts01]", "badreputation"),
            ("[ts02]", "badreputation"),
            ("[ts03]", "badreputation"),
        ],
    },
    Provider {
        family: "spectrum's aup codes",
        complete: false,
        remote: None,
        writers: &[],
        wrappers: &[],
        generic: false,
        // Spectrum (Charter, Roadrunner) ends its refusals with an Acceptable Use Policy code
        // ("... for more information. AUP#In-1020") and links its page of error codes.
        marks: &[
            "aup#",
            "spectrum.net/support/internet/understanding-email-error-codes",
        ],
        source: "https://www.spectrum.net/support/internet/understanding-email-error-codes (linked from every refusal; read through https://www.suped.com/knowledge/email-deliverability/technical/how-to-interpret-aupi-1300-cloudmark-email-bounce-codes-from-charter and .../how-to-resolve-email-throttling-issues-with-spectrumtwc, which quote it)",
        replies: &[
            // AUP#1310, 1320, 1330 (a block of 5 minutes, 1 hour, 24 hours), 1340 (too many
            // concurrent connections), 1380: Cloudmark's rate limits on the sender's stream,
            // with or without the "In-"/"I-" of the inbound servers.
            ("aup#13", "ratelimited"),
            ("aup#in-13", "ratelimited"),
            ("aup#i-13", "ratelimited"),
        ],
    },
    Provider {
        family: "orange's published replies",
        complete: false,
        remote: Some("orange"),
        writers: &[],
        wrappers: &[],
        generic: false,
        // Orange's inbound servers (smtp-in.orange.fr, mwinf*.orange.fr) end every refusal
        // with an OFR code ("OFR006_102", "OFR_416") that its postmaster page explains.
        marks: &["ofr0", "ofr1", "ofr_"],
        source: "https://postmaster.orange.fr (its table of OFR codes; read through https://bentonow.com/smtp-errors/orange and https://www.postmastery.com, which quote it, and the replies the codes come with)",
        replies: &[
            // 421 OFR004_104 / OFR102_104 "Too many connections, slow down".
            ("ofr004_104", "ratelimited"),
            ("ofr102_104", "ratelimited"),
            // 421 OFR_999: the sending address suspended for some hours after earlier
            // breaches of the policy.
            ("ofr_999", "blocked"),
            // 550 OFR006_102 "Client host blocked for spamming issues" (its Cloudmark listing).
            ("ofr006_102", "blocked"),
            // 550 5.1.0 OFR_415 "Emetteur invalide. Invalid sender".
            ("ofr_415", "rejected"),
            // 550 5.1.1 OFR_416 "Adresse d au moins un destinataire invalide. Invalid
            // recipient".
            ("ofr_416", "userunknown"),
            // 552 OFR_417 "Boite du destinataire pleine. Recipient overquota".
            ("ofr_417", "mailboxfull"),
            // OFR_514 "Taille limite du message atteinte. Maximum size of the message reached".
            ("ofr_514", "emailtoolarge"),
        ],
    },
    Provider {
        family: "cox's published error codes",
        complete: false,
        remote: Some("cox"),
        writers: &[],
        wrappers: &[],
        generic: false,
        // "554 cmsmtp ... blocked. Refer to Error Codes section at
        // https://www.cox.com/... AUP#CXBL": the code after "AUP#".
        marks: &["aup#cx", "aup#cd", "aup#ipbl", "postmaster.cox.net"],
        source: "http://postmaster.cox.net/confluence/display/postmaster/Error+Codes (Cox's error codes: CXBL, CDRBL, the IPBL family, the 452 threshold); CXCNCT and CXMXRT as Cox's replies state them, quoted on forums.cox.com and suped.com",
        replies: &[
            // CXBL: the sending address blocked for behaviour like spam's; CDRBL: the same
            // for up to 24 hours; IPBL0001-IPBL1000: listed by Spamhaus ZEN, Return Path,
            // Invaluement or Cloudmark CSI.
            ("aup#cxbl", "blocked"),
            ("aup#cdrbl", "blocked"),
            ("aup#ipbl", "blocked"),
            // 452 "[message threshold exceeded]": over Cox's rate limit for a while.
            ("message threshold exceeded", "ratelimited"),
            // CXCNCT: too many concurrent connections; CXMXRT: too many messages.
            ("aup#cxcnct", "ratelimited"),
            ("aup#cxmxrt", "ratelimited"),
        ],
    },
    Provider {
        family: "comcast's published error codes",
        complete: false,
        remote: Some("comcast"),
        writers: &[],
        wrappers: &[],
        generic: false,
        // Comcast's refusals link its page of codes ("... see
        // http://postmaster.comcast.net/smtp-error-codes.php#BL000000").
        marks: &["postmaster.comcast.net", "comcast.net/smtp-error-codes"],
        source: "http://postmaster.comcast.net/mail-error-codes.html and https://es.xfinity.com/support/articles/email-errors (Comcast's error codes)",
        replies: &[
            // ES000001 / ES000010: mail from dynamic or residential address space.
            ("es000001", "blocked"),
            ("es000010", "blocked"),
            // BL000000: patterns characteristic of spam; BL000001-BL000111: listed by
            // Spamhaus ZEN, Cloudmark CSI, SenderScore.
            ("bl000", "blocked"),
        ],
    },
    Provider {
        family: "at&t's published error codes",
        complete: false,
        remote: Some("att"),
        writers: &[],
        wrappers: &[],
        generic: false,
        marks: &["rbl.att.net", "att.net/block", "postmaster.bellsouth.net"],
        source: "http://rbl.att.net/block_enduser.html and http://postmaster.bellsouth.net/error.htm (AT&T's and BellSouth's error messages)",
        replies: &[
            // 421 "Failure in DNS look-up": the sending address has no valid reverse DNS.
            ("failure in dns look-up", "requireptr"),
            // 550 "Unauthorized interface for <ip>", "blocked by ldap:ou=rblmx", "Error.
            // Blocked for abuse": a source of spam, not a valid mail source. (Its "[SUSPEND]
            // Mailbox currently suspended", its DNSBL "attrbl", are read alike by the generic
            // families.)
            ("unauthorized interface for", "blocked"),
            ("ou=rblmx", "blocked"),
            ("blocked for abuse", "blocked"),
        ],
    },
    Provider {
        family: "godaddy's published bounces",
        complete: false,
        remote: Some("godaddy"),
        writers: &[],
        wrappers: &[],
        generic: false,
        // Its inbound hosts (*.secureserver.net) name themselves in their replies.
        marks: &["secureserver.net"],
        source: "https://www.godaddy.com/help/fix-rejected-email-with-a-bounce-error-40685 (GoDaddy's bounce errors; the IB codes as copies of that page quote them)",
        replies: &[
            // "Account storage limit".
            ("account storage limit", "mailboxfull"),
            // IB506 "From: domain is invalid" (no valid MX or address for it).
            ("ib506", "rejected"),
            // IB508 the sender's SPF record does not allow the address.
            ("ib508", "authfailure"),
            // IB108 "Temporarily rejected. Reverse DNS for this IP failed".
            ("ib108", "requireptr"),
            // IB212 "rejected due to content judged to be spam by the internet community".
            ("ib212", "spamdetected"),
        ],
    },
    Provider {
        family: "zoho's published replies",
        complete: false,
        remote: Some("zoho"),
        writers: &[],
        wrappers: &[],
        generic: false,
        marks: &["zoho.com/mail/help"],
        source: "https://www.zoho.com/mail/help/spam-reason.html and Zoho Mail's replies as https://smtp.codes/zoho quotes them",
        // Its "541 5.4.1 Mail rejected by destination domain" and "Email flagged as spam" are
        // read alike by the generic families.
        replies: &[
            // 552 5.7.1 "Virus ... detected by Zoho Mail".
            ("detected by zoho mail", "virusdetected"),
        ],
    },
    Provider {
        family: "united internet's published replies",
        complete: false,
        remote: Some("gmx"),
        writers: &[],
        wrappers: &[],
        generic: false,
        // GMX, WEB.DE and mail.com ("Nemesis ESMTP") end their refusals with a link to
        // their postmaster pages.
        marks: &[
            "postmaster.gmx",
            "postmaster.web.de",
            "postmaster.mail.com",
            "nemesis esmtp",
        ],
        source: "https://postmaster.gmx.com/en/error-messages, https://postmaster.mail.com/en/error-messages, https://postmaster.web.de/de/fehlermeldungen (GMX, mail.com, WEB.DE)",
        replies: &[
            // 554 "Bad DNS PTR resource record" (case rdns).
            ("dns ptr resource record", "requireptr"),
            // 5xx "Reject due to SPF policy".
            ("due to spf policy", "authfailure"),
            // "User has too many messages on the server".
            ("messages on the server", "mailboxfull"),
        ],
    },
    Provider {
        family: "yandex's published replies",
        complete: false,
        remote: Some("yandex"),
        writers: &[],
        wrappers: &[],
        generic: false,
        marks: &["yandex.com/support", "yandex.ru/support"],
        source: "https://yandex.com/support/mail/bounces/yandex.html (Report on non-delivery to Yandex)",
        replies: &[
            // 550 5.7.1 "Policy rejection on the target address": the recipient's account
            // is blocked.
            ("policy rejection on the", "suspend"),
        ],
    },
    Provider {
        family: "tencent's published replies",
        complete: false,
        remote: Some("tencent"),
        writers: &[],
        wrappers: &[],
        generic: false,
        // QQ Mail's refusals link its help pages.
        marks: &["service.mail.qq.com", "service.exmail.qq.com"],
        source: "QQ Mail's help pages on bounces (service.exmail.qq.com ... id=20022), as https://smtp.codes/qq quotes them",
        replies: &[
            // 550 "Mail is rejected by recipients": on the recipient's own block list.
            ("rejected by recipients", "rejected"),
            // 550 "Mail content denied": reported as spam by many users.
            ("mail content denied", "spamdetected"),
        ],
    },
    Provider {
        family: "mimecast's published replies",
        complete: false,
        remote: Some("mimecast"),
        writers: &[],
        wrappers: &[],
        generic: false,
        // Mimecast, a gateway in front of many companies' mail, ends each refusal with a link
        // to its list ("... - https://community.mimecast.com/docs/DOC-1369#550").
        marks: &[
            "community.mimecast.com",
            "mimecastsupport.zendesk.com",
            "doc-1369",
        ],
        source: "https://community.mimecast.com/s/article/Mimecast-SMTP-Error-Codes-842605754 (formerly DOC-1369), https://mimecastsupport.zendesk.com/hc/en-us/articles/34000709564691 (Mimecast SMTP Error Codes)",
        // Each reply read by the cause Mimecast gives. Left out: "Email rejected due to
        // security policies" (a virus signature or a spam score over the threshold: two
        // reasons), "Recipient temporarily unavailable" and "IP temporarily blacklisted" (a
        // block list for too many invalid connections, or recipient validation not
        // answering), and the replies the generic families read the same way ("Invalid
        // Recipient", "Mail loop detected", "Too many recipients").
        replies: &[
            // 421 "Sender address blocked": the sending IP is on a Blocked Senders policy.
            ("sender address blocked", "blocked"),
            // 421 "Unable to process connection at this time": Mimecast at its maximum load.
            ("unable to process connection", "systemerror"),
            // 451 "Internal resource temporarily unavailable" (also "... resource is ...",
            // "... resources are ..."): greylisting, or the sending IP's poor reputation; the
            // page's remedy for both is to exempt the sender from the reputation checks, which
            // decide either way.
            ("internal resource temporarily", "badreputation"),
            ("internal resource is", "badreputation"),
            ("internal resources are", "badreputation"),
            // 451 "Account service is temporarily unavailable": more concurrent connections
            // than the customer's account allows.
            ("account service is temporarily", "ratelimited"),
            // 550 "Exceeding outbound thread limit": too many concurrent connections.
            ("outbound thread limit", "ratelimited"),
            // 451 "Open relay not allowed": neither domain is the customer's.
            ("open relay not allowed", "norelaying"),
            ("open relay is not", "norelaying"),
            // 451 "Account inbounds disabled": the customer's inbound mail is switched off.
            ("account inbounds disabled", "notaccept"),
            // "The incorrect hostname used for inbounds": the domain's MX names a host that
            // does not take its inbound mail.
            ("incorrect hostname used", "networkerror"),
            // 550 "SPF Sender Invalid - envelope rejected", "DKIM Sender Invalid ...", "DMARC
            // Sender Invalid ...": the sender failed the check.
            ("spf sender invalid", "authfailure"),
            ("dkim sender invalid", "authfailure"),
            ("dmarc sender invalid", "authfailure"),
            // 550 "Local CT IP Reputation - (reject)": the sending IP's poor reputation.
            ("local ct ip reputation", "badreputation"),
            // 550 "Administrative prohibition - envelope blocked", "Envelope blocked - User
            // Entry" (the recipient's own block list), "Rejected by header based (manually)
            // Blocked Senders", "... Block policy for envelope from address", "Policy level
            // block list in force": the sender is on a block list the customer or the
            // recipient keeps.
            ("envelope blocked", "rejected"),
            ("blocked senders", "rejected"),
            ("block policy for", "rejected"),
            ("policy level block list", "rejected"),
            // 550 "Anti-Spoofing policy - inbound not allowed": mail from outside in the
            // customer's own name; 550 "Message bounced due to Content Examination policy";
            // 554 "Host network not allowed": a Geographical Restriction policy. The
            // customer's policies.
            ("spoofing policy", "policyviolation"),
            ("content examination policy", "policyviolation"),
            ("host network not allowed", "policyviolation"),
            ("host network, not allowed", "policyviolation"),
            // 550 "Journal message past the expiration": kept past the expiry threshold.
            ("journal message past", "expired"),
            ("journal messages past", "expired"),
            // 553 "This route requires encryption (TLS)", "... requires TLS version 1.2 or
            // greater", "... requires high-strength ciphers": the sender did not use TLS as
            // the route asks.
            ("this route requires", "failedstarttls"),
            // 554 "Maximum email size exceeded": the size policy or the service's limit.
            ("maximum email size exceeded", "emailtoolarge"),
            // 535 "Incorrect authentication data", 550 "Submitter failed to authenticate".
            ("incorrect authentication data", "securityerror"),
            ("submitter failed to authenticate", "securityerror"),
        ],
    },
];

/// The MTAs' own messages, from their source code: what each writes in a bounce or a delay
/// report of its own, or answers as a server, each read by what the code that writes it does.
/// Most lists are a choice (the messages that name a reason); a list marked
/// [`Provider::complete`] is every message of the source it names.
pub static MTAS: &[Provider] = &[
    Provider {
        family: "qmail-remote's messages",
        // Not marked complete: qmail-remote.c differs between the patch sets that add TLS and
        // AUTH (control/outgoingip or control/domainips, "but STARTTLS was rejected", ...),
        // and "failed on DATA command" / "failed after I sent the message" say no reason.
        complete: false,
        remote: None,
        marks: &[],
        writers: &["qmail"],
        wrappers: &[
            "but greeting failed",
            "my name was rejected",
            "but sender was rejected",
            "authentication was rejected",
        ],
        generic: false,
        source: "qmail-remote.c (netqmail 1.06, and a TLS/AUTH-patched copy): the messages of temp_*(), perm_*(), dropped() and the quit() calls of smtp() that name a reason",
        replies: &[
            // temp_noconn (#4.4.1): no SMTP connection could be made.
            ("able to establish an", "networkerror"),
            // dropped(), dropped_tls() (#4.4.2): "Connected to ... but connection died."
            ("but connection died", "networkerror"),
            ("tls connection died", "networkerror"),
            // temp_dnscanon (#4.4.3): "CNAME lookup failed temporarily."
            ("cname lookup failed", "networkerror"),
            // perm_ambigmx, perm_looping (#5.4.6).
            ("best-preference mx", "networkerror"),
            ("message is looping within", "networkerror"),
            // temp_dns (#4.1.2), perm_dns (#5.1.2), perm_nomx (#5.4.4).
            ("find any host by", "hostunknown"),
            ("find any host named", "hostunknown"),
            ("a mail exchanger or", "hostunknown"),
            // temp_nomem, temp_oserr, temp_read, temp_chdir, temp_control, temp_noip,
            // perm_usage (#4.3.0, #5.3.5).
            ("out of memory", "systemerror"),
            ("system resources temporarily unavailable", "systemerror"),
            ("unable to read message", "systemerror"),
            ("switch to home directory", "systemerror"),
            ("unable to read control", "systemerror"),
            ("invalid ipaddr in control/outgoingip", "systemerror"),
            ("was invoked improperly", "systemerror"),
            // perm_partialline (#5.6.2): the message cannot be sent as it is.
            ("partial final lines", "contenterror"),
            // "TLS not available: ..." (the session could not be secured).
            ("tls not available", "failedstarttls"),
            // quit(): refused at the greeting or at HELO, the sender refused, AUTH refused
            // (sentences that wrap the server's quoted reply).
            ("but greeting failed", "blocked"),
            ("my name was rejected", "blocked"),
            ("but sender was rejected", "rejected"),
            ("authentication was rejected", "securityerror"),
        ],
    },
    Provider {
        family: "qmail-local's and qmail-send's messages",
        complete: false,
        remote: None,
        marks: &[],
        writers: &["qmail"],
        wrappers: &[],
        generic: false,
        source: "netqmail 1.06 qmail-local.c, qmail-send.c",
        replies: &[
            // qmail-local: "Sorry, no mailbox here by that name. (#5.1.1)"; "This message is
            // looping: it already has my Delivered-To line. (#5.4.6)".
            ("no mailbox here by", "userunknown"),
            ("already has my delivered-to", "networkerror"),
            // qmail-send: "I'm not going to try again; this message has been in the queue
            // too long."
            ("queue too long", "expired"),
        ],
    },
    Provider {
        family: "postfix's own messages",
        complete: false,
        remote: None,
        marks: &[],
        writers: &["postfix"],
        wrappers: &["refused to talk to"],
        generic: false,
        source: "Postfix 3.x src/smtp/smtp_proto.c, smtp_connect.c, smtp_addr.c; src/smtpd/smtpd_check.c; src/local, src/pipe",
        replies: &[
            // smtp_addr.c: "Host or domain name not found. Name service error for name=%s
            // type=%s: Host not found" (the domain does not exist), but "Host not found, try
            // again" (TRY_AGAIN: the resolver failed for now), like any other name service
            // error.
            ("not found, try again", "networkerror"),
            ("host or domain name", "hostunknown"),
            ("name service error", "networkerror"),
            // smtp_proto.c: "lost connection with %s while %s"; smtp_connect.c: "mail for %s
            // loops back to myself".
            ("lost connection with", "networkerror"),
            ("loops back to myself", "networkerror"),
            // smtp_proto.c: "host %s refused to talk to me: %s" (no 220 greeting: the server
            // turned the client away before any envelope).
            ("refused to talk to", "blocked"),
            // smtpd_check.c (reject_unknown_client_hostname / reverse_client_hostname).
            ("find your reverse hostname", "requireptr"),
            ("find your hostname", "requireptr"),
            ("helo command rejected", "blocked"),
            ("service unavailable; client host", "blocked"),
            ("relay access denied", "norelaying"),
            // smtpd: "452 4.3.1 Insufficient system storage"; "552 5.3.4 Message size exceeds
            // fixed maximum message size"; anvil: "too many connections from" ("too much mail
            // from" is read by the rate-limit family).
            ("insufficient system storage", "systemfull"),
            ("exceeds fixed maximum", "emailtoolarge"),
            ("too many connections from", "ratelimited"),
            // pipe / local: "Command died with status %d", "Command time limit exceeded",
            // "mail transport unavailable".
            ("command died with", "mailererror"),
            ("command time limit exceeded", "mailererror"),
            ("mail transport unavailable", "systemerror"),
        ],
    },
    Provider {
        family: "exim's own messages",
        complete: false,
        remote: None,
        marks: &[],
        writers: &["exim"],
        wrappers: &[],
        generic: false,
        source: "Exim 4 src/transports/smtp.c, src/deliver.c, src/retry.c, src/routers (messages set on addr->message)",
        replies: &[
            // smtp.c / retry.c: the retry period is over.
            ("retry time not reached", "expired"),
            ("have been failing for", "expired"),
            ("retry timeout exceeded", "expired"),
            // Routers: the domain cannot be routed, its MX records lead nowhere.
            ("unrouteable mail domain", "hostunknown"),
            ("point to non-existent hosts", "hostunknown"),
            ("host lookup did not", "networkerror"),
            // The local part cannot be routed.
            ("unrouteable address", "userunknown"),
            // deliver.c: 'Too many "Received" headers - suspected mail loop'.
            ("suspected mail loop", "networkerror"),
            // appendfile: "mailbox is full (MTA-imposed quota exceeded while writing to ...)".
            ("mailbox is full", "mailboxfull"),
            // Transports: "message is too big", pipe and local delivery failures.
            ("message is too big", "emailtoolarge"),
            ("local delivery failed", "mailererror"),
            ("child process of", "mailererror"),
            // An address it cannot parse: "malformed address: ... may not follow ...".
            ("malformed address", "syntaxerror"),
            // ACL verification of the sender.
            ("sender verify failed", "rejected"),
        ],
    },
    Provider {
        family: "sendmail's own messages",
        complete: false,
        remote: None,
        marks: &[],
        writers: &["sendmail", "sendmail v5"],
        wrappers: &[],
        generic: false,
        source: "sendmail 8 srvrsmtp.c, deliver.c, queue.c, err.c",
        replies: &[
            // srvrsmtp.c: "452 4.4.5 Insufficient disk space; try again later".
            ("insufficient disk space", "systemfull"),
            // queue.c / savemail: "Message could not be delivered for %s".
            ("not be delivered for", "expired"),
            // deliver.c: "Too many hops %d (%d max)".
            ("too many hops", "networkerror"),
            // "Domain of sender address %s does not exist" (check_mail).
            ("domain of sender address", "rejected"),
        ],
    },
    Provider {
        family: "sendmail's sysexits replies",
        complete: true,
        remote: None,
        marks: &[],
        writers: &["sendmail", "sendmail v5"],
        // Generic words all ("User unknown", "Service unavailable", written after the
        // remote's own reply): read after the phrase families, the status code and the reply
        // code, before the generic single words.
        wrappers: &[],
        generic: true,
        source: "sendmail 8 sendmail/sysexits.c SysExMsg: the reply for each mailer exit status, but EX_TEMPFAIL (\"Deferred\", a prefix to its cause) and EX_PROTOCOL (\"Remote protocol error\", the remote's failure, read by the phrase families)",
        replies: &[
            ("bad usage", "systemerror"),
            ("data format error", "contenterror"),
            ("cannot open input", "systemerror"),
            ("user unknown", "userunknown"),
            ("host unknown", "hostunknown"),
            ("service unavailable", "systemerror"),
            ("internal error", "systemerror"),
            ("operating system error", "systemerror"),
            ("system file missing", "systemerror"),
            ("can't create output", "mailererror"),
            ("i/o error", "systemerror"),
            ("insufficient permission", "mailererror"),
            ("local configuration error", "systemerror"),
        ],
    },
    Provider {
        family: "opensmtpd's mta.c failures",
        complete: true,
        remote: None,
        marks: &[],
        writers: &["opensmtpd"],
        wrappers: &[],
        generic: false,
        source: "OpenSMTPD (6.4 and later: \"Could not retrieve credentials\") usr.sbin/smtpd/mta.c: every relay->failstr of mta_on_mx, mta_on_secret and mta_on_source, and mta_on_smarthost's \"Cannot retrieve smarthost\"",
        replies: &[
            // The MX lookup (mta_on_mx): DNS_ENONAME, DNS_EINVAL, DNS_ENOTFOUND, DNS_NULLMX,
            // DNS_RETRY.
            ("domain does not exist", "hostunknown"),
            ("invalid domain name", "hostunknown"),
            // DNS_ENOTFOUND for a host given as the relay, not a domain's MX.
            ("host not found", "hostunknown"),
            ("no mx found for", "notaccept"),
            ("domain does not accept", "notaccept"),
            ("temporary failure in mx", "networkerror"),
            // No route left (mta_on_source): every MX refused our sessions, or the network,
            // the address family or a block stood in the way.
            ("seem to reject all", "notaccept"),
            ("network error on destination", "networkerror"),
            ("address family mismatch on", "networkerror"),
            ("all routes to destination", "networkerror"),
            ("no valid route to", "networkerror"),
            ("could not retrieve credentials", "securityerror"),
            ("could not retrieve source", "networkerror"),
            ("cannot retrieve smarthost", "systemerror"),
        ],
    },
    Provider {
        family: "opensmtpd's other messages",
        complete: false,
        remote: None,
        marks: &[],
        writers: &["opensmtpd"],
        wrappers: &[],
        generic: false,
        source: "OpenSMTPD usr.sbin/smtpd/mta_session.c (\"Loop detected\"), queue.c (\"Envelope expired\")",
        replies: &[
            ("loop detected", "networkerror"),
            ("envelope expired", "expired"),
        ],
    },
    Provider {
        family: "amazon ses's own messages",
        complete: false,
        remote: None,
        marks: &[],
        writers: &["amazon ses"],
        wrappers: &[],
        generic: false,
        source: "Amazon SES Developer Guide, SMTP issues and error messages (docs.aws.amazon.com/ses/latest/dg/troubleshoot-smtp.html)",
        replies: &[
            // "Email address is not verified. The following identities failed the check in
            // region ...": SES relays only for verified identities.
            ("address is not verified", "norelaying"),
            // The account-level suppression list.
            ("on the suppression list", "suppressed"),
            // Sending quotas: "Daily message quota exceeded", "Maximum sending rate exceeded".
            ("daily message quota exceeded", "ratelimited"),
            ("maximum sending rate exceeded", "ratelimited"),
        ],
    },
];

/// Every list, the providers' and the MTAs'.
fn all() -> impl Iterator<Item = &'static Provider> {
    PROVIDERS.iter().chain(MTAS.iter())
}

/// True when `family` is a provider's list or an MTA's messages.
pub fn is_family(family: &str) -> bool {
    all().any(|p| p.family == family)
}

/// The providers' lists, by family name.
pub fn provider_families() -> impl Iterator<Item = &'static str> {
    PROVIDERS.iter().map(|p| p.family)
}

/// The family a fragment belongs to (the first list that holds it).
pub fn family_of(fragment: &str) -> Option<&'static str> {
    all()
        .find(|p| p.replies.iter().any(|(f, _)| *f == fragment))
        .map(|p| p.family)
}

/// True when `fragment` is a provider's published reply (which says what it means whatever
/// the command it answered).
pub fn is_provider_reply(fragment: &str) -> bool {
    PROVIDERS
        .iter()
        .any(|p| p.replies.iter().any(|(f, _)| *f == fragment))
}

/// The units of evaluation, with the reason each stands for: every list by family; by
/// wording, every fragment, but a complete list whole when `whole_lists`.
pub fn units(by_family: bool, whole_lists: bool) -> Vec<(&'static str, &'static str)> {
    all()
        .flat_map(|p| {
            p.replies.iter().map(move |(fragment, reason)| {
                (
                    *reason,
                    if by_family || (whole_lists && p.complete) {
                        p.family
                    } else {
                        *fragment
                    },
                )
            })
        })
        .collect()
}

/// True when `fragment` is a stock reply of a generic list (decided as weakly as a status).
pub fn is_generic(fragment: &str) -> bool {
    MTAS.iter()
        .any(|p| p.generic && p.replies.iter().any(|(f, _)| *f == fragment))
}

/// True when `family` is a complete list (see [`Provider::complete`]).
pub fn is_complete(family: &str) -> bool {
    all().any(|p| p.family == family && p.complete)
}

/// Every fragment of every list.
pub fn fragments() -> impl Iterator<Item = &'static str> {
    all().flat_map(|p| p.replies.iter().map(|(f, _)| *f))
}

/// True when a fragment of `family` standing for `reason` occurs in `text` (lower case,
/// squeezed), whoever answered or wrote it: for evaluation.
pub fn fires(family: &str, reason: &str, text: &str) -> bool {
    all()
        .filter(|p| p.family == family)
        .flat_map(|p| p.replies.iter())
        .any(|(f, r)| *r == reason && text.contains(f))
}

/// What decided: the reason, the family and the fragment.
pub type Decided = (&'static str, &'static str, &'static str);

/// The reason a provider's published reply stands for, when the reply (`text`: lower case,
/// squeezed) is that provider's: its server answered (`remote`) or the reply bears its mark.
/// `skip(family, fragment)` says whether an entry is left out (evaluation).
pub fn provider_reason(
    remote: Option<&str>,
    text: &str,
    skip: impl Fn(&str, &str) -> bool,
) -> Option<Decided> {
    let answered = |p: &Provider| {
        p.remote.is_some_and(|r| remote == Some(r)) || p.marks.iter().any(|m| text.contains(m))
    };
    let index = &indexes()[0];
    index
        .automaton
        .find_overlapping_iter(text)
        .map(|hit| index.origin[hit.pattern().as_usize()])
        .filter(|&(i, j)| {
            let p = &PROVIDERS[i];
            answered(p) && !skip(p.family, p.replies[j].0)
        })
        .min()
        .map(|(i, j)| decided(&PROVIDERS[i], j))
}

fn decided(p: &'static Provider, j: usize) -> Decided {
    (p.replies[j].1, p.family, p.replies[j].0)
}

/// Where an MTA's message is read: its own statement of a cause, a sentence that wraps a
/// quoted reply, its giving up, or a stock reply in generic words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Cause,
    Wrapper,
    GivenUp,
    Generic,
}

/// The MTA's own messages a text (lower case, squeezed) holds, for a report that MTA wrote;
/// found once and read by tier ([`MtaMessages::reason`]).
pub struct MtaMessages(Vec<(usize, usize)>);

impl MtaMessages {
    pub fn in_text(text: &str, writer: Option<&str>) -> MtaMessages {
        // Most reports are written by no MTA these lists know: no scan then.
        let Some(writer) = writer.filter(|w| MTAS.iter().any(|p| p.writers.contains(w))) else {
            return MtaMessages(Vec::new());
        };
        let index = &indexes()[1];
        let mut hits: Vec<(usize, usize)> = index
            .automaton
            .find_overlapping_iter(text)
            .map(|hit| index.origin[hit.pattern().as_usize()])
            .filter(|&(i, _)| MTAS[i].writers.contains(&writer))
            .collect();
        hits.sort_unstable();
        MtaMessages(hits)
    }

    /// The first message of the tier found, not skipped (`skip(family, fragment)`).
    pub fn reason(&self, tier: Tier, skip: impl Fn(&str, &str) -> bool) -> Option<Decided> {
        self.0
            .iter()
            .find(|&&(i, j)| {
                let p = &MTAS[i];
                let (fragment, reason) = p.replies[j];
                let its = if p.generic {
                    Tier::Generic
                } else if reason == "expired" {
                    Tier::GivenUp
                } else if p.wrappers.contains(&fragment) {
                    Tier::Wrapper
                } else {
                    Tier::Cause
                };
                its == tier && !skip(p.family, fragment)
            })
            .map(|&(i, j)| decided(&MTAS[i], j))
    }
}

/// The automatons over the providers' fragments and over the MTAs'.
fn indexes() -> &'static [Matcher; 2] {
    static INDEXES: std::sync::OnceLock<[Matcher; 2]> = std::sync::OnceLock::new();
    // Contiguous NFAs: built in a fraction of a DFA's time (a classifier process may read one
    // message), scanned about as fast for these few hundred short fragments.
    let over = |lists: &'static [Provider]| {
        Matcher::over(
            lists.iter().map(|p| p.replies.iter().map(|(f, _)| *f)),
            Some(aho_corasick::AhoCorasickKind::ContiguousNFA),
        )
    };
    INDEXES.get_or_init(|| [over(PROVIDERS), over(MTAS)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_providers_reply_is_read_only_when_that_provider_gave_it() {
        let google = "550-5.7.1 our system has detected that this message is likely unsolicited mail. - gsmtp";
        assert_eq!(
            provider_reason(None, google, |_, _| false),
            Some((
                "spamdetected",
                "google's published replies",
                "likely unsolicited mail"
            ))
        );
        // The same words from another server are not Google's reply.
        let other = "550 5.7.1 this message is likely unsolicited mail";
        assert_eq!(provider_reason(None, other, |_, _| false), None);
        assert_eq!(
            provider_reason(Some("google"), other, |_, _| false).map(|(r, _, _)| r),
            Some("spamdetected")
        );
        // Left out (evaluation): not consulted.
        assert_eq!(
            provider_reason(None, google, |family, _| is_family(family)),
            None
        );
    }

    #[test]
    fn the_providers_published_codes_are_read_by_their_marks_or_hosts() {
        let none = |_: &str, _: &str| false;
        let reason = |remote, text| provider_reason(remote, text, none).map(|(r, _, _)| r);
        // Codes in a reply that names its provider's page or code family.
        let cases = [
            (
                "554 cmsmtp 192.0.2.1 blocked. refer to error codes section at https://www.cox.com/business/support/cox-postmaster-administration.html aup#cxbl",
                "blocked",
            ),
            (
                "421 cmsmtp connection rate limit exceeded aup#cxcnct",
                "ratelimited",
            ),
            (
                "554 resimta-ch2-01v.sys.comcast.net comcast 192.0.2.1 comcast block for spam. please see http://postmaster.comcast.net/smtp-error-codes.php#bl000001",
                "blocked",
            ),
            // BL000100-BL000111: SenderScore's listings.
            (
                "554 resimta-ch2-01v.sys.comcast.net comcast block for spam. please see http://postmaster.comcast.net/smtp-error-codes.php#bl000100",
                "blocked",
            ),
            (
                "421 mwinf5c04 me trop de connexions, ralentissez. too many connections, slow down. ofr004_104 [104]",
                "ratelimited",
            ),
            (
                "552 mwinf5c11 me boite du destinataire pleine. recipient overquota. ofr_417 [417]",
                "mailboxfull",
            ),
            (
                "554-gmx.net (mxgmx104) nemesis esmtp service not available 554-no smtp service 554-bad dns ptr resource record. 554 for explanation visit https://postmaster.gmx.net/en/case?c=rdns",
                "requireptr",
            ),
            // Google's, marked "gsmtp": a limit for failed authentication, a block.
            (
                "421-4.7.27 this mail has been rate limited because spf did not pass. for more information, go to https://support.google.com/mail/answer/81126 - gsmtp",
                "authfailure",
            ),
            (
                "550-5.7.1 our system has detected an unusual rate of unsolicited mail originating from your ip address. to protect our users from spam, mail sent from your ip address has been blocked. - gsmtp",
                "blocked",
            ),
            (
                "550-5.7.1 messages missing a valid message-id header are not accepted. - gsmtp",
                "notcompliantrfc",
            ),
            (
                "550-5.7.29 your email has been blocked because this message wasn't sent over a tls connection. - gsmtp",
                "failedstarttls",
            ),
            // Microsoft's, marked by its hosts.
            (
                "550 5.4.310 dns domain example.com does not exist [message=infodomainnonexistent] [bn8nam11ft066.eop-nam11.prod.protection.outlook.com]",
                "hostunknown",
            ),
            (
                "550 5.7.511 access denied, banned sender[192.0.2.1]. to request removal from this list, forward this message to delist@microsoft.com [bn8nam11ft066.eop-nam11.prod.protection.outlook.com]",
                "blocked",
            ),
            // Mimecast's replies carry its page's link.
            (
                "554 host network not allowed - https://community.mimecast.com/docs/doc-1369#554 [z7qzw5bpd1zldyhka4589ru.us222]",
                "policyviolation",
            ),
            (
                "451 internal resource is temporarily unavailable - https://community.mimecast.com/docs/doc-1369#451",
                "badreputation",
            ),
            (
                "550 envelope blocked - user entry - https://community.mimecast.com/docs/doc-1369#550",
                "rejected",
            ),
            (
                "550 dmarc sender invalid - envelope rejected - https://community.mimecast.com/docs/doc-1369#550",
                "authfailure",
            ),
            (
                "553 this route requires high-strength ciphers - https://community.mimecast.com/docs/doc-1369#553",
                "failedstarttls",
            ),
            (
                "550 journal message past the expiration - https://community.mimecast.com/docs/doc-1369#550",
                "expired",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(reason(None, text), Some(want), "{text}");
        }
        let att = "550 blocked by ldap:ou=rblmx,dc=att,dc=net";
        assert_eq!(reason(Some("att"), att), Some("blocked"));
        // Words without a mark: only the provider's own server makes them its reply.
        let zoho = "552 5.7.1 virus eicar-test-signature detected by zoho mail";
        assert_eq!(reason(None, zoho), None);
        assert_eq!(reason(Some("zoho"), zoho), Some("virusdetected"));
        assert_eq!(reason(Some("google"), zoho), None);
        let yandex = "550 5.7.1 policy rejection on the target address";
        assert_eq!(reason(None, yandex), None);
        assert_eq!(reason(Some("yandex"), yandex), Some("suspend"));
        // Without the link, only a host of Mimecast's makes them its reply.
        let unmarked = "451 account service is temporarily unavailable";
        assert_eq!(reason(None, unmarked), None);
        assert_eq!(reason(Some("mimecast"), unmarked), Some("ratelimited"));
        // Another provider's code family is not Cox's: Spectrum's AUP codes stay its own.
        assert_eq!(
            reason(None, "550 please see spectrum.net aup#in-1310"),
            Some("ratelimited")
        );
        assert_eq!(reason(None, "550 refused aup#cxsndr"), None);
    }

    #[test]
    fn an_mtas_messages_are_read_in_its_own_reports_by_tier() {
        let none = |_: &str, _: &str| false;
        let qmail = "<a@example.org>: connected to 192.0.2.1 but sender was rejected. remote host said: 553 sorry, your envelope sender is in my badmailfrom list";
        let found = MtaMessages::in_text(qmail, Some("qmail"));
        // The sentence wraps the server's reply: not a cause of its own.
        assert_eq!(found.reason(Tier::Cause, none), None);
        assert_eq!(
            found.reason(Tier::Wrapper, none).map(|d| d.0),
            Some("rejected")
        );
        // Another MTA's report that quotes the same words: not qmail's message.
        assert_eq!(
            MtaMessages::in_text(qmail, Some("postfix")).reason(Tier::Wrapper, none),
            None
        );
        assert_eq!(
            MtaMessages::in_text(qmail, None).reason(Tier::Wrapper, none),
            None
        );
        // Postfix's TRY_AGAIN: the resolver failed for now, the domain may well exist.
        let postfix = "host or domain name not found. name service error for name=example.org type=mx: host not found, try again";
        assert_eq!(
            MtaMessages::in_text(postfix, Some("postfix"))
                .reason(Tier::Cause, none)
                .map(|d| d.0),
            Some("networkerror")
        );
        // Sendmail's stock reply for a mailer's exit status is read last of all.
        let sendmail = "554 5.7.9 header error ... <a@example.org>... service unavailable";
        let found = MtaMessages::in_text(sendmail, Some("sendmail"));
        assert_eq!(found.reason(Tier::Cause, none), None);
        assert_eq!(found.reason(Tier::Wrapper, none), None);
        assert_eq!(
            found.reason(Tier::Generic, none).map(|d| d.0),
            Some("systemerror")
        );
        // A give-up message waits for its tier.
        let given_up = "i'm not going to try again; this message has been in the queue too long.";
        let found = MtaMessages::in_text(given_up, Some("qmail"));
        assert_eq!(found.reason(Tier::Cause, none), None);
        assert_eq!(
            found.reason(Tier::GivenUp, none).map(|d| d.0),
            Some("expired")
        );
    }

    #[test]
    fn fragments_are_short_and_lower_case() {
        for f in fragments() {
            assert_eq!(f, f.to_ascii_lowercase(), "{f}");
            assert!(f.split(' ').count() <= 4, "{f}");
        }
    }
}
