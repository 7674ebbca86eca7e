"""Read DMARC aggregate reports with parsedmarc (PyPI), a reader nobody here wrote.

usage: parsedmarc_read.py FILE...
Prints one JSON object per file: org_name, domain, xml_schema ("1.0" for a report that follows
RFC 7489's schema, "draft" for one without its version element), fo, and per record count,
disposition, envelope_from and the SPF scopes. Exits 1 if a file does not parse.
"""
import json
import sys

import parsedmarc

failed = 0
for path in sys.argv[1:]:
    try:
        with open(path) as f:
            r = parsedmarc.parse_aggregate_report_xml(f.read(), offline=True)
    except Exception as e:  # any failure to read is the report's
        print(json.dumps({"file": path, "error": str(e)}))
        failed += 1
        continue
    print(json.dumps({
        "file": path,
        "org_name": r["report_metadata"]["org_name"],
        "domain": r["policy_published"]["domain"],
        "xml_schema": r["xml_schema"],
        "fo": r["policy_published"]["fo"],
        "records": [
            {
                "count": x["count"],
                "disposition": x["policy_evaluated"]["disposition"],
                "envelope_from": x["identifiers"]["envelope_from"],
                "spf_scopes": [s["scope"] for s in x["auth_results"]["spf"]],
            }
            for x in r["records"]
        ],
    }))
sys.exit(1 if failed else 0)
