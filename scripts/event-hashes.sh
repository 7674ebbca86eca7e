#!/bin/sh
# The event-log hash of every virtual scenario: `scripts/event-hashes.sh [BINARY]` prints
# "NAME SHA256" lines (sorted). A refactoring leaves them unchanged; a fix or feature says
# which ones it changed. BINARY defaults to target/debug/mailsim (copy it elsewhere first when
# building at the same time).
set -eu
bin=${1:-target/debug/mailsim}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for f in $(grep -l '^mode = "virtual"' scenarios/*.toml); do
    name=$(basename "$f" .toml)
    "$bin" run "$f" --out "$work/$name" >/dev/null 2>&1
    echo "$name $("$bin" events "$work/$name" | sha256sum | cut -d' ' -f1)"
    rm -rf "$work/$name"
done | sort
