#!/usr/bin/env python3
"""Write bad/RULE.zone: clean.zone with one mistake planted per `mailsim auth check` rule.

Each plant replaces, removes or adds lines of clean.zone; the test (sim/tests/auth_check.rs)
expects exactly the rule the file is named after (RULE~variant.zone: a second plant of RULE).
A first line "; args: ..." replaces the test's default arguments. Run from this directory:
python3 plant.py (the files are kept in the repository; this says how each was made).
"""
import os

R1024 = "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC/+A/xosAUCeeAyQ7Mx16AcWC1lg95O6C2FLLoY9FN3it8PIQwUfur/wGYcSzcIzJOpFZIXY+SI7FSsO9fKgCHfeFOCRLbEbxV4+oleF9tqN0yhOZE1iiKbN6qyQvfqAnvPEhurtQeiOx6zAD2q2wU7r3Ax5t0g7vPG10q4QDLlQIDAQAB"
R512 = "MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAPDIem9NvQfj7S5Cw+04OKQOdmwT74nDDA1LRjryfUy5b4o1nOkFNZKRCpfHx3GeAAg0vZJuVj4/Iiakni+kItkCAwEAAQ=="

SPF = '@              TXT  "v=spf1 ip4:192.0.2.0/24 include:_spf.esp.example -all"'
DMARC_PREFIX = "_dmarc "
SEL = "sel2026._domainkey"


def spf(text):
    # A quoted string holds at most 255 bytes (RFC 1035 section 3.3): longer records in parts.
    parts = " ".join(f'"{text[i:i + 250]}"' for i in range(0, len(text), 250))
    return {"replace": {SPF: f'@              TXT  {parts}'}}


def dkim(text):
    return {"replace_prefix": {SEL: f'{SEL} TXT "{text}"'}}


def dmarc(text):
    return {"replace_prefix": {DMARC_PREFIX: f'_dmarc         TXT  "{text}"'}}


RUA = "rua=mailto:dmarc@shop.example,mailto:agg@reports.example.net"

PLANTS = {
    # SPF (RFC 7208)
    "spf.none": {"remove": [SPF]},
    "spf.multiple": {"add": ['@              TXT  "v=spf1 mx -all"']},
    "spf.syntax": spf("v=spf1 ip4:192.0.2.0/24 inlcude:_spf.esp.example -all"),
    "spf.lookups": {
        **spf("v=spf1 ip4:192.0.2.0/24 include:_spf.esp.example "
              + " ".join(f"include:i{n}.shop.example" for n in range(1, 6)) + " -all"),
        "add": [f'i{n} TXT "v=spf1 a:mail.shop.example -all"' for n in range(1, 6)],
    },
    "spf.void-lookups": spf("v=spf1 ip4:192.0.2.0/24 a:old1.shop.example a:old2.shop.example a:old3.shop.example include:_spf.esp.example -all"),
    "spf.include-none": spf("v=spf1 ip4:192.0.2.0/24 include:_spf.gone.example -all"),
    "spf.loop": {"replace": {'_spf.esp.example.                               TXT "v=spf1 ip4:198.51.100.0/24 -all"':
                             '_spf.esp.example. TXT "v=spf1 ip4:198.51.100.0/24 include:shop.example -all"'}},
    "spf.all-pass": spf("v=spf1 ip4:192.0.2.0/24 include:_spf.esp.example +all"),
    "spf.all-neutral": spf("v=spf1 ip4:192.0.2.0/24 include:_spf.esp.example ?all"),
    "spf.no-all": spf("v=spf1 ip4:192.0.2.0/24 include:_spf.esp.example"),
    "spf.ptr": spf("v=spf1 ip4:192.0.2.0/24 ptr include:_spf.esp.example -all"),
    "spf.redirect-ignored": spf("v=spf1 ip4:192.0.2.0/24 include:_spf.esp.example -all redirect=_spf.esp.example"),
    "spf.mx-names": {
        **spf("v=spf1 ip4:192.0.2.0/24 mx:bulk.shop.example include:_spf.esp.example -all"),
        "add": [f"bulk MX 10 h{n}.bulk" for n in range(1, 12)] + [f"h{n}.bulk A 192.0.2.{100 + n}" for n in range(1, 12)],
    },
    "spf.ip-not-authorised": spf("v=spf1 ip4:192.0.2.25 ip4:192.0.2.26 include:_spf.esp.example -all"),
    "spf.open-range": spf("v=spf1 ip4:0.0.0.0/0 include:_spf.esp.example -all"),
    "spf.after-all": spf("v=spf1 ip4:192.0.2.0/24 include:_spf.esp.example -all ip4:198.51.100.99"),
    "spf.size": spf("v=spf1 ip4:192.0.2.0/24 " + " ".join(f"ip4:198.18.{n}.0/24" for n in range(40)) + " include:_spf.esp.example -all"),
    "spf.void-lookups~ipv6": spf("v=spf1 ip4:192.0.2.0/24 a:v4only1.shop.example a:v4only2.shop.example a:v4only3.shop.example -all")
        | {"add": [f"v4only{n} A 192.0.2.{20 + n}" for n in range(1, 4)]},
    # DKIM (RFC 6376, RFC 8301, RFC 8463)
    "dkim.missing": {"remove_prefix": [SEL]},
    "dkim.none": {"args": "--ip 192.0.2.10",
                  "replace_prefix": {SEL: "", "ed2026._domainkey": ""}},
    "dkim.multiple": {"add": [f'{SEL} TXT "v=DKIM1; k=rsa; p={R1024}"']},
    "dkim.syntax": dkim("v=DKIM1; k=rsa; n=key rotated in 2026"),
    "dkim.revoked": dkim("v=DKIM1; k=rsa; p="),
    "dkim.key-type": dkim(f"v=DKIM1; k=dsa; p={R1024}"),
    "dkim.key-size": dkim(f"v=DKIM1; k=rsa; p={R512}"),
    "dkim.key-size~1024": dkim(f"v=DKIM1; k=rsa; p={R1024}"),
    "dkim.testing": {"replace_prefix": {"ed2026._domainkey": None}, "ed_testing": True},
    "dkim.hash": {"edit": (SEL, "k=rsa; p=", "k=rsa; h=sha1; p=")},
    "dkim.service": {"replace_prefix": {"ed2026._domainkey": None}, "ed_service": True},
    # DMARC (RFC 7489)
    "dmarc.none": {"remove_prefix": [DMARC_PREFIX]},
    "dmarc.multiple": {"add": ['_dmarc TXT "v=DMARC1; p=none"']},
    "dmarc.syntax": dmarc(f"v=DMARC1; p=rejected; {RUA}"),
    "dmarc.policy-none": dmarc(f"v=DMARC1; p=none; {RUA}"),
    "dmarc.subdomain-none": dmarc(f"v=DMARC1; p=reject; sp=none; {RUA}"),
    "dmarc.pct": dmarc(f"v=DMARC1; p=quarantine; pct=20; {RUA}"),
    "dmarc.unknown-tag": dmarc(f"v=DMARC1; p=reject; {RUA}; adkm=r"),
    "dmarc.rua-none": dmarc("v=DMARC1; p=reject"),
    "dmarc.rua-uri": dmarc("v=DMARC1; p=reject; rua=dmarc@shop.example"),
    "dmarc.rua-external": {"remove_prefix": ["shop.example._report._dmarc.reports.example.net."]},
    "dmarc.strict-alignment": dmarc(f"v=DMARC1; p=reject; {RUA}; adkim=s"),
    "dmarc.syntax~commas": dmarc(f"v=DMARC1, p=reject, {RUA}"),
    # MX (RFC 5321, RFC 7505, RFC 2181)
    "mx.none": {"remove_prefix": ["@              MX"]},
    "mx.implicit": {"remove_prefix": ["@              MX"], "add": ["@ A 192.0.2.25"]},
    "mx.null": {"remove_prefix": ["@              MX"], "add": ["@ MX 0 ."]},
    "mx.null~beside-others": {"add": ["@ MX 0 ."]},
    "mx.ip": {"replace": {"@              MX   10 mx1": "@              MX   10 192.0.2.25."}},
    "mx.cname": {"replace": {"mx1            A    192.0.2.25": "mx1            CNAME mx2"}},
    "mx.unresolvable": {"remove_prefix": ["mx2            A"]},
    # Reverse DNS of the sending address
    "ptr.none": {"remove_prefix": ["10.2.0.192.in-addr.arpa."]},
    "ptr.mismatch": {"replace": {"mail           A    192.0.2.10": "mail           A    192.0.2.11"}},
    # MTA-STS (RFC 8461) and TLS-RPT (RFC 8460)
    "mta-sts.multiple": {"add": ['_mta-sts TXT "v=STSv1; id=20261130T000000"']},
    "mta-sts.syntax": {"replace_prefix": {"_mta-sts ": '_mta-sts       TXT  "v=STSv1; id=2026-12-01"'}},
    "mta-sts.host": {"remove_prefix": ["mta-sts        A"]},
    "tlsrpt.multiple": {"add": ['_smtp._tls TXT "v=TLSRPTv1; rua=mailto:tls@reports.example.net"']},
    "tlsrpt.syntax": {"replace_prefix": {"_smtp._tls ": '_smtp._tls     TXT  "v=TLSRPTv1; rua=tls-reports@shop.example"'}},
}

# Correct setups written other ways: each must give no finding at all.
GOOD = {
    # opendkim-genkey's form: the key over lines in parentheses, with a comment.
    "dkim-in-parentheses": {"replace_prefix": {SEL: 'sel2026._domainkey IN TXT ( "v=DKIM1; k=rsa; "\n\t"p=' + "@KEY@" + '" ) ; ----- DKIM key sel2026'}},
    # Tag values in upper case (ABNF literals are case-insensitive) and decimal escapes.
    "dkim-case-and-escapes": {"replace_prefix": {SEL: f'{SEL} TXT "v=DKIM1\\059 k=RSA\\059 h=SHA256\\059 s=EMAIL\\059 p=' + "@KEY@" + '"'}},
    # Reports to another name of the same organization need no authorisation.
    "dmarc-rua-same-organization": dmarc("v=DMARC1; p=reject; rua=mailto:dmarc@reports.shop.example,mailto:agg@reports.example.net"),
    # A Microsoft 365-style selector: a CNAME to the key.
    "dkim-selector-cname": {"replace_prefix": {SEL: "sel2026._domainkey CNAME sel2026._domainkey.esp.example."},
                            "add": ['sel2026._domainkey.esp.example. TXT "v=DKIM1; k=rsa; p=' + "@KEY@" + '"']},
}


def plant(lines, how):
    out = []
    for line in lines:
        if line in how.get("remove", []):
            continue
        if any(line.startswith(p) for p in how.get("remove_prefix", [])):
            continue
        line = how.get("replace", {}).get(line, line)
        for prefix, new in how.get("replace_prefix", {}).items():
            if line.startswith(prefix):
                if new is None:  # rewritten below
                    key = line.split('p=')[1].rstrip('"')
                    if how.get("ed_testing"):
                        new = f'ed2026._domainkey  TXT "v=DKIM1; k=ed25519; t=y; p={key}"'
                    else:
                        new = f'ed2026._domainkey  TXT "v=DKIM1; k=ed25519; s=tlsrpt; p={key}"'
                line = new
        if "edit" in how and line.startswith(how["edit"][0]):
            line = line.replace(how["edit"][1], how["edit"][2])
        if line:
            out.append(line)
    return out + how.get("add", [])


def main():
    with open("clean.zone") as f:
        clean = f.read().splitlines()
    body = [l for l in clean if not l.startswith(";")]
    os.makedirs("bad", exist_ok=True)
    key = next(l for l in body if l.startswith(SEL)).split("p=")[1]
    key = key.replace('" "', "").rstrip('"')
    os.makedirs("good", exist_ok=True)
    for name, how in GOOD.items():
        # Character strings hold 255 bytes at most (RFC 1035 section 3.3): the key in two.
        lines = [l.replace("@KEY@", key[:200] + '" "' + key[200:]) for l in plant(body, how)]
        with open(f"good/{name}.zone", "w") as f:
            f.write("\n".join([f"; clean.zone written another way: {name} (see plant.py)"] + lines) + "\n")
    for rule, how in PLANTS.items():
        lines = plant(body, how)
        if lines == body:
            raise SystemExit(f"{rule}: the plant changed nothing")
        head = []
        if "args" in how:
            head.append(f"; args: {how['args']}")
        head.append(f"; clean.zone with one mistake planted: {rule.split('~')[0]} (see plant.py)")
        with open(f"bad/{rule}.zone", "w") as f:
            f.write("\n".join(head + lines) + "\n")


main()
