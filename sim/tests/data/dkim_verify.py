"""Verify DKIM signatures with dkimpy, an implementation independent of mailsim's.

usage: dkim_verify.py TXT_RECORD FILE...
Every FILE is verified with the given DKIM key record standing in for DNS. Prints one line per
file, "PASS path" or "FAIL path", and exits 1 if any failed.
"""
import sys

import dkim

record = sys.argv[1].encode()


def dnsfunc(name, timeout=5):
    return record


failed = 0
for path in sys.argv[2:]:
    with open(path, "rb") as f:
        message = f.read()
    ok = dkim.verify(message, dnsfunc=dnsfunc)
    print(("PASS " if ok else "FAIL ") + path)
    failed += 0 if ok else 1
sys.exit(1 if failed else 0)
