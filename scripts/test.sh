#!/usr/bin/env bash
# Installs the system tools the tests use (Debian packages), then runs formatting, lint and the
# whole test suite. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v dig >/dev/null 2>&1 || need+=(dnsutils)
/usr/bin/python3 -c 'import dkim' >/dev/null 2>&1 || need+=(python3-dkim)
/usr/bin/python3 -c 'import nacl' >/dev/null 2>&1 || need+=(python3-nacl)
/usr/bin/python3 -c 'import authres' >/dev/null 2>&1 || need+=(python3-authres)
command -v swaks >/dev/null 2>&1 || need+=(swaks)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v python3 >/dev/null 2>&1 || need+=(python3)
/usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# The other MTAs of sim/tests/other_mtas.rs. Postfix is installed without a system
# configuration (the test gives it its own). Exim's package would remove Postfix (both provide
# mail-transport-agent), so its daemon is unpacked into .test-tools/, with the libraries it
# links and the user it runs as.
command -v postfix >/dev/null 2>&1 || need+=(postfix)
# NATS with JetStream for the multi-node tests (cluster/tests/stream.rs, sim/tests/cluster.rs).
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
EXIM=.test-tools/exim4/usr/sbin/exim4
for lib in libidn12 libgnutls-dane0 libdb5.3 libpcre2-8-0 libnsl2; do
  dpkg -s "$lib" >/dev/null 2>&1 || need+=("$lib")
done
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if [ ${#need[@]} -gt 0 ] || [ ! -x "$EXIM" ]; then
  echo "installing: ${need[*]} ${EXIM}"
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  $SUDO apt-get update -qq
  if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi
if [ ! -x "$EXIM" ]; then
  tmp=$(mktemp -d); chmod 755 "$tmp"
  (cd "$tmp" && apt-get download -qq exim4-daemon-light 2>/dev/null)
  mkdir -p .test-tools/exim4
  dpkg-deb -x "$tmp"/exim4-daemon-light_*.deb .test-tools/exim4
  rm -rf "$tmp"
fi
# RFC 7489's aggregate-report schema (Appendix C), as Debian ships it in libmail-dmarc-perl:
# only the schema file is unpacked, the Perl module is not installed.
if [ ! -f .test-tools/mail-dmarc/rua-schema.xsd ]; then
  tmp=$(mktemp -d); chmod 755 "$tmp"
  (cd "$tmp" && apt-get download -qq libmail-dmarc-perl 2>/dev/null)
  dpkg-deb -x "$tmp"/libmail-dmarc-perl_*.deb "$tmp/x"
  mkdir -p .test-tools/mail-dmarc
  cp "$tmp"/x/usr/share/perl5/auto/share/dist/Mail-DMARC/rua-schema.xsd .test-tools/mail-dmarc/
  rm -rf "$tmp"
fi
id Debian-exim >/dev/null 2>&1 || $SUDO useradd --system --no-create-home \
  --home-dir /nonexistent --shell /usr/sbin/nologin Debian-exim
# parsedmarc (PyPI), an independent reader of the DMARC aggregate reports, in a virtualenv of
# its own (Debian's python3-venv).
if [ ! -x .test-tools/parsedmarc/bin/python ] || \
   ! .test-tools/parsedmarc/bin/python -c 'import parsedmarc' >/dev/null 2>&1; then
  /usr/bin/python3 -m venv .test-tools/parsedmarc
  .test-tools/parsedmarc/bin/pip install -q parsedmarc
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
# The fuzz targets are a workspace of their own (cargo-fuzz's layout): they must keep compiling.
# (Their bodies, fuzz/src/lib.rs, run on seeds and mutations in sim/tests/fuzz_targets.rs.)
# Checked in the same target directory, so the dependencies clippy just checked are reused.
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}" cargo check --manifest-path fuzz/Cargo.toml --bins --locked
cargo test --workspace --all-features --locked
