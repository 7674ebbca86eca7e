"""Read the Authentication-Results headers of stored messages with authres (Debian's
python3-authres), an RFC 8601 parser independent of mailsim's.

usage: authres_check.py FILE...
Prints one line per file: path, then for each method its result and properties as
method=result[,ptype.property=value...], tab-separated; the Return-Path address last as
return-path=ADDRESS. Exits 1 if a header does not parse.
"""
import email
import email.policy
import sys

import authres

failed = 0
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        msg = email.message_from_binary_file(f, policy=email.policy.compat32)
    header = msg.get("Authentication-Results")
    fields = [path]
    try:
        parsed = authres.AuthenticationResultsHeader.parse(
            "Authentication-Results: " + " ".join(str(header).split())
        )
    except Exception as e:  # any parse error is a failure of the header
        print(path + "\tERROR " + str(e))
        failed += 1
        continue
    for r in parsed.results:
        props = ["%s.%s=%s" % (p.type, p.name, p.value) for p in r.properties]
        fields.append(",".join(["%s=%s" % (r.method, r.result)] + props))
    fields.append("return-path=" + str(msg.get("Return-Path", "")).strip().strip("<>"))
    print("\t".join(fields))
sys.exit(1 if failed else 0)
