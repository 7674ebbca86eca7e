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
# Postfix, the other MTA of sim/tests/postfix.rs, installed without a system configuration
# (the test gives it its own).
command -v postfix >/dev/null 2>&1 || need+=(postfix)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
# The fuzz targets are a workspace of their own (cargo-fuzz's layout): they must keep compiling.
# Checked in the same target directory, so the dependencies clippy just checked are reused.
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}" cargo check --manifest-path fuzz/Cargo.toml --bins --locked
cargo test --workspace --all-features --locked
