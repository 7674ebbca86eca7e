#!/usr/bin/env bash
# HTTP injection against SMTP submission, the same campaign into the same MTA (issue 18):
#   benches/inject.sh [MESSAGES] [SIZE_BYTES] [ROUNDS] [PER_REQUEST]
# Each round starts a fresh fleet and a fresh `mailsim mta --http` (release build, own spool),
# then submits the campaign either by SMTP (`mailsim send --to`, 8 connections, one message
# per transaction) or through POST /api/inject/v1 (`mailsim send --http`, 4 keep-alive
# connections, PER_REQUEST recipients per request, the MTA building each message from the
# template), alternating, ROUNDS times each. Two figures per round: injection (messages
# acknowledged per second, the sender's own clock, requests built beforehand) and end to end
# (from the start of the send to the last message stored by the fleet, read from the fleet's
# stored count). Last line: medians and the HTTP/SMTP ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-20000}
SIZE=${2:-5120}
ROUNDS=${3:-3}
PER_REQUEST=${4:-100}
cargo build --release --quiet
BIN=$PWD/target/release/mailsim
WORK=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
cat > "$WORK/inject.toml" <<TOML
name = "inject"
seed = 18
[[sender]]
domain = "news.example.test"
[[domain]]
name = "a.test"
[[domain]]
name = "b.test"
[[domain]]
name = "c.test"
[[domain]]
name = "d.test"
[campaign]
messages = $MESSAGES
size_bytes = $SIZE
TOML
head -c 24 /dev/urandom | base64 > "$WORK/tokens"

wait_line() {  # FILE WORD: until FILE has a line with WORD
  for _ in $(seq 300); do grep -q "$2" "$1" 2>/dev/null && return; sleep 0.1; done
  echo "no '$2' in $1:" >&2; cat "$1" >&2; exit 1
}
value() { grep -o "$2=[^ ]*" "$1" | head -1 | cut -d= -f2; }

round() {  # smtp|http
  local dir=$WORK/$1-$2 start_ms end_ms stored
  mkdir -p "$dir"
  "$BIN" fleet "$WORK/inject.toml" --out "$dir/fleet" > "$dir/fleet.out" 2>/dev/null &
  local fleet=$!
  wait_line "$dir/fleet.out" ready
  "$BIN" mta --spool "$dir/spool" --dns "$(value "$dir/fleet.out" dns)" \
    --remote-port "$(value "$dir/fleet.out" smtp_port)" --tls off \
    --submission 127.0.0.1:0 --http 127.0.0.1:0 --http-tokens "$WORK/tokens" \
    > "$dir/mta.out" 2>/dev/null &
  local mta=$!
  wait_line "$dir/mta.out" ready
  start_ms=$(date +%s%3N)
  if [ "$1" = smtp ]; then
    "$BIN" send "$WORK/inject.toml" --to "$(value "$dir/mta.out" submission)" --connections 8 \
      > "$dir/send.out"
  else
    "$BIN" send "$WORK/inject.toml" --http "$(value "$dir/mta.out" http)" \
      --token-file "$WORK/tokens" --per-request "$PER_REQUEST" --connections 4 > "$dir/send.out"
  fi
  [ "$(value "$dir/send.out" acked)" = "$MESSAGES" ] || { cat "$dir/send.out" >&2; exit 1; }
  while true; do
    stored=$(cat "$dir/fleet/stored.count" 2>/dev/null || echo 0)
    [ "${stored:-0}" -ge "$MESSAGES" ] 2>/dev/null && break
    sleep 0.05
  done
  end_ms=$(date +%s%3N)
  kill -INT $mta $fleet; wait $mta $fleet 2>/dev/null || true
  local secs inject e2e
  secs=$(value "$dir/send.out" seconds)
  inject=$(python3 -c "print(round($MESSAGES / $secs))")
  e2e=$(python3 -c "print(round($MESSAGES * 1000 / ($end_ms - $start_ms)))")
  echo "round $2 $1: injection=$inject msg/s end_to_end=$e2e msg/s"
  echo "$1 $inject $e2e" >> "$WORK/results"
  rm -rf "$dir"
}

for r in $(seq "$ROUNDS"); do
  round smtp "$r"
  round http "$r"
done
python3 - "$WORK/results" "$MESSAGES" "$SIZE" "$PER_REQUEST" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = lambda kind, i: statistics.median(int(r[i]) for r in rows if r[0] == kind)
si, se, hi, he = med("smtp", 1), med("smtp", 2), med("http", 1), med("http", 2)
print(f"inject: smtp={si:.0f} http={hi:.0f} ratio={hi / si:.2f} (injection, msg/s); "
      f"end_to_end smtp={se:.0f} http={he:.0f} ratio={he / se:.2f}; "
      f"messages={sys.argv[2]} size={sys.argv[3]} per_request={sys.argv[4]}")
PY
