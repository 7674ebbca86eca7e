"""Validate DMARC aggregate reports against RFC 7489's XML schema (Appendix C).

usage: dmarc_schema_check.py SCHEMA.xsd FILE...
The schema is Debian's copy in libmail-dmarc-perl (share/rua-schema.xsd), unpacked by the
test command; lxml (in parsedmarc's virtualenv) validates. RFC 7489's schema has a target
namespace but no default namespace, so its references to its own types (type="RowType")
resolve to no namespace and no validator loads it as printed: the target namespace is declared
as the default before loading, which is what the appendix means. It has no elementFormDefault
either, so only the root element is qualified; reports as
receivers send them (and as mailsim writes them) have an unqualified <feedback>, so the root
is put into the schema's namespace before validating, as report readers do. Prints one line
per file ("ok" or the schema's errors with their lines) and exits 1 if any file is invalid.
"""
import sys

from lxml import etree

NS = "http://dmarc.org/dmarc-xml/0.1"

with open(sys.argv[1], "rb") as f:
    text = f.read()
text = text.replace(b'targetNamespace="%s"' % NS.encode(),
                    b'targetNamespace="%s" xmlns="%s"' % (NS.encode(), NS.encode()), 1)
schema = etree.XMLSchema(etree.fromstring(text))
failed = 0
for path in sys.argv[2:]:
    tree = etree.parse(path)
    root = tree.getroot()
    if root.tag == "feedback":
        root.tag = "{%s}feedback" % NS
    if schema.validate(tree):
        print(f"{path}: ok")
    else:
        failed += 1
        for e in schema.error_log:
            print(f"{path}:{e.line}: {e.message}")
sys.exit(1 if failed else 0)
