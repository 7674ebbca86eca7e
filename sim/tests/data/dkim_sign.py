"""Sign messages with dkimpy, an implementation independent of mailsim's.

usage: dkim_sign.py < JOBS
JOBS is JSON: a list of {"in", "out", "selector", "domain", "algorithm" ("rsa-sha256" or
"ed25519-sha256"), "key" (a file: PKCS#1 PEM for RSA, the base64 32-byte seed for Ed25519),
"canonicalize" ("relaxed/simple", ...)}. Each signed message is written to "out".
"""
import json
import sys

import dkim

for job in json.load(sys.stdin):
    with open(job["in"], "rb") as f:
        message = f.read()
    with open(job["key"], "rb") as f:
        key = f.read().strip()
    header, body = job["canonicalize"].split("/")
    signature = dkim.sign(
        message,
        job["selector"].encode(),
        job["domain"].encode(),
        key,
        canonicalize=(header.encode(), body.encode()),
        signature_algorithm=job["algorithm"].encode(),
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    with open(job["out"], "wb") as f:
        f.write(signature + message)
