"""Real clients against a running mailsim mailbox server (Python's smtplib, imaplib, poplib).

Usage: clients.py SMTP_PORT SUBMISSION_PORT IMAP_PORT POP3_PORT
Prints one "ok: ..." line per check and exits non-zero at the first failure.
"""
import imaplib
import poplib
import smtplib
import ssl
import sys

smtp_port, sub_port, imap_port, pop_port = map(int, sys.argv[1:5])
HOST = "127.0.0.1"
tls = ssl.create_default_context()
tls.check_hostname = False
tls.verify_mode = ssl.CERT_NONE


def check(cond, what):
    if not cond:
        print("FAILED: " + what)
        sys.exit(1)
    print("ok: " + what)


# Inbound SMTP (the MX role): local users only, never an open relay.
s = smtplib.SMTP(HOST, smtp_port)
s.ehlo("client.test")
refused = s.sendmail("carol@other.test", ["bob@example.test"],
                     b"From: carol@other.test\r\nTo: bob@example.test\r\n"
                     b"Subject: hello bob\r\nMessage-ID: <m1@other.test>\r\n\r\nHi Bob.\r\n.dot line\r\n")
check(refused == {}, "smtplib delivered to bob over inbound SMTP")
try:
    s.sendmail("carol@other.test", ["eve@elsewhere.test"], b"Subject: relay\r\n\r\nx\r\n")
    check(False, "relay to a foreign domain refused")
except smtplib.SMTPRecipientsRefused as e:
    code, text = e.recipients["eve@elsewhere.test"]
    check(code == 554 and text.startswith(b"5.7.1"), "relay to a foreign domain refused with 554 5.7.1")
try:
    s.sendmail("carol@other.test", ["nobody@example.test"], b"Subject: x\r\n\r\nx\r\n")
    check(False, "unknown local user refused")
except smtplib.SMTPRecipientsRefused as e:
    check(e.recipients["nobody@example.test"][0] == 550, "unknown local user refused with 550")
s.quit()

# Submission: no AUTH before STARTTLS, then AUTH, then the sender must be the user's.
s = smtplib.SMTP(HOST, sub_port)
s.ehlo("client.test")
check("starttls" in s.esmtp_features and "auth" not in s.esmtp_features,
      "submission offers STARTTLS and no AUTH in clear")
code, _ = s.docmd("AUTH", "PLAIN AGJvYgBzZWNyZXQ=")
check(code == 538, "AUTH before STARTTLS answered 538")
code, _ = s.docmd("MAIL", "FROM:<bob@example.test>")
check(code == 530, "MAIL before STARTTLS answered 530")
s.starttls(context=tls)
s.ehlo("client.test")
check("auth" in s.esmtp_features, "AUTH offered after STARTTLS")
try:
    s.login("bob", "wrong")
    check(False, "wrong password refused")
except smtplib.SMTPAuthenticationError as e:
    check(e.smtp_code == 535, "wrong password refused with 535")
code, _ = s.docmd("MAIL", "FROM:<bob@example.test>")
check(code == 530, "MAIL without AUTH answered 530")
s.rset()
s.login("bob", "secret")
try:
    s.sendmail("alice@example.test", ["alice@example.test"], b"Subject: forged\r\n\r\nx\r\n")
    check(False, "forged envelope sender refused")
except smtplib.SMTPSenderRefused as e:
    check(e.smtp_code == 553, "sending as another user refused with 553")
refused = s.sendmail("bob@example.test", ["alice@example.test"],
                     b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: to alice\r\n\r\nhey alice\r\n")
check(refused == {}, "authenticated submission delivered to alice")
s.quit()

# IMAP: login, the message sent in by SMTP, flags, search, isolation.
m = imaplib.IMAP4(HOST, imap_port)
typ, _ = m.login("bob", "secret")
check(typ == "OK", "imaplib LOGIN")
typ, data = m.select("INBOX")
check(typ == "OK" and data == [b"1"], "SELECT INBOX shows 1 message")
typ, data = m.fetch("1", "(BODY.PEEK[] FLAGS UID)")
body = data[0][1]
check(b"Subject: hello bob" in body and b"Hi Bob." in body, "imaplib fetched the message sent by SMTP")
check(b"Authentication-Results:" in body, "Authentication-Results header added on delivery")
check(b"\\Seen" not in data[0][0], "BODY.PEEK leaves \\Seen unset")
typ, data = m.search(None, "FROM", "carol")
check(data == [b"1"], "SEARCH FROM")
m.store("1", "+FLAGS", "(\\Flagged)")
typ, data = m.fetch("1", "(FLAGS)")
check(b"\\Flagged" in data[0], "STORE +FLAGS")
typ, _ = m.create("Archive")
typ, _ = m.copy("1", "Archive")
check(typ == "OK", "COPY to a new mailbox")
typ, data = m.status("Archive", "(MESSAGES)")
check(b"MESSAGES 1" in data[0], "STATUS of the copy")
typ, data = m.list()
check(any(b"Archive" in d for d in data), "LIST shows the new mailbox")
m.logout()

m = imaplib.IMAP4(HOST, imap_port)
m.login("alice", "secret2")
m.select("INBOX")
typ, data = m.search(None, "ALL")
check(data == [b"1"], "alice sees only her own message")
typ, data = m.fetch("1", "(BODY[TEXT])")
check(b"hey alice" in data[0][1], "alice reads the submitted message")
typ, data = m.select("bob@example.test/Archive")
check(typ == "NO", "alice cannot open bob's mailbox")
m.logout()

try:
    imaplib.IMAP4(HOST, imap_port).login("bob", "nope")
    check(False, "IMAP wrong password refused")
except imaplib.IMAP4.error:
    check(True, "IMAP wrong password refused")

m = imaplib.IMAP4(HOST, imap_port)
m.starttls(ssl_context=tls)
m.login("bob", "secret")
check(m.select("INBOX")[0] == "OK", "IMAP STARTTLS then LOGIN")
m.logout()

# POP3: the same message, then DELE.
p = poplib.POP3(HOST, pop_port)
p.user("bob")
p.pass_("secret")
count, size = p.stat()
check(count == 1, "poplib STAT")
resp, lines, octets = p.retr(1)
check(b"Hi Bob." in lines and b".dot line" in lines, "poplib RETR (dot-stuffing undone)")
resp, lines, _ = p.top(1, 0)
check(b"Subject: hello bob" in lines and b"Hi Bob." not in lines, "poplib TOP 0")
uidl = p.uidl()
check(len(uidl[1]) == 1, "poplib UIDL")
p.quit()

p = poplib.POP3(HOST, pop_port)
try:
    p.user("alice")
    p.pass_("wrong")
    check(False, "POP3 wrong password refused")
except poplib.error_proto:
    check(True, "POP3 wrong password refused")
p.quit()

p = poplib.POP3(HOST, pop_port)
p.stls(context=tls)
p.user("alice")
p.pass_("secret2")
check(p.stat()[0] == 1, "POP3 STLS then login")
p.dele(1)
p.quit()
p = poplib.POP3(HOST, pop_port)
p.user("alice")
p.pass_("secret2")
check(p.stat()[0] == 0, "POP3 DELE removed the message at QUIT")
p.quit()
print("all client checks passed")
