#!/usr/bin/env bash
# Transactional latency while a bulk campaign drains, with lanes and without (issue 18):
#   benches/lanes.sh [BULK] [TRANSACTIONAL_PER_S] [SIZE_BYTES]
# Three runs, each with a fresh fleet (four domains) and a fresh `mailsim mta` (release build,
# plain SMTP to the fleet, no DKIM):
#   alone    the bulk campaign only, injected through the HTTP API (100 recipients a request);
#   lanes    the same, plus transactional mail by SMTP at a steady rate on the MTA's
#            transactional port (`--lanes`);
#   nolanes  the same stream on the ordinary port of an MTA without lanes (one FIFO queue).
# Transactional latency: from the MTA's `injected` event to the fleet's `stored` event of the
# same Message-ID (two logs, one machine clock), p50 and p99 over the transactional messages
# injected while the campaign was still draining.
# Bulk speed: bulk messages over the time from the start of the send to the last bulk
# message stored (the fleet's log). Last line: the figures and the bulk speed ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
BULK=${1:-200000}
RATE=${2:-10}
SIZE=${3:-2000}
cargo build --release --quiet
BIN=$PWD/target/release/mailsim
WORK=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
domains='[[domain]]
name = "a.test"
[[domain]]
name = "b.test"
[[domain]]
name = "c.test"
[[domain]]
name = "d.test"'
printf 'name = "bulk"\nseed = 31\n[[sender]]\ndomain = "shop.example.test"\n%s\n[campaign]\nmessages = %s\nsize_bytes = %s\n' \
  "$domains" "$BULK" "$SIZE" > "$WORK/bulk.toml"
# Enough transactional mail to last most of the drain (about 6,000 msg/s plain alone,
# measured; slower with the stream beside it, so the stream ends before the campaign).
TX=$(python3 -c "print(max(50, int($BULK / 6000 * $RATE * 0.8)))")
printf 'name = "tx"\nseed = 32\n[[sender]]\ndomain = "shop.example.test"\n%s\n[campaign]\nmessages = %s\nsize_bytes = 1000\nsubject = "Your sign-in code"\n' \
  "$domains" "$TX" > "$WORK/tx.toml"
head -c 24 /dev/urandom | base64 > "$WORK/tokens"

wait_line() {
  for _ in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return; sleep 0.1; done
  echo "no '$2' in $1:" >&2; cat "$1" >&2; exit 1
}
value() { grep -o "$2=[^ ]*" "$1" | head -1 | cut -d= -f2; }

run() {  # alone | lanes | nolanes
  local dir=$WORK/$1 expected=$BULK start_ms
  mkdir -p "$dir"
  "$BIN" fleet "$WORK/bulk.toml" --out "$dir/fleet" > "$dir/fleet.out" 2>/dev/null &
  local fleet=$!
  wait_line "$dir/fleet.out" ready
  local lanes=()
  [ "$1" = lanes ] && lanes=(--lanes --submission-transactional 127.0.0.1:0)
  "$BIN" mta --spool "$dir/spool" --dns "$(value "$dir/fleet.out" dns)" \
    --remote-port "$(value "$dir/fleet.out" smtp_port)" --tls off \
    --submission 127.0.0.1:0 --http 127.0.0.1:0 --http-tokens "$WORK/tokens" "${lanes[@]}" \
    > "$dir/mta.out" 2>/dev/null &
  local mta=$!
  wait_line "$dir/mta.out" ready
  start_ms=$(date +%s%3N)
  "$BIN" send "$WORK/bulk.toml" --http "$(value "$dir/mta.out" http)" \
    --token-file "$WORK/tokens" --per-request 100 --connections 4 > "$dir/bulk.out" &
  local bulk=$!
  local txp=""
  if [ "$1" != alone ]; then
    local port
    port=$(value "$dir/mta.out" submission)
    [ "$1" = lanes ] && port=$(value "$dir/mta.out" submission_transactional)
    "$BIN" send "$WORK/tx.toml" --to "$port" --rate "$RATE" --connections 2 > "$dir/tx.out" &
    txp=$!
    expected=$((BULK + TX))
  fi
  wait $bulk
  [ -n "$txp" ] && wait "$txp"
  while true; do  # (the count file is rewritten twice a second: a read may find it empty)
    n=$(cat "$dir/fleet/stored.count" 2>/dev/null || true)
    [ "${n:-0}" -ge "$expected" ] 2>/dev/null && break
    sleep 0.1
  done
  kill -INT $mta $fleet 2>/dev/null || true
  wait $mta $fleet 2>/dev/null || true
  "$BIN" events "$dir/spool" > "$dir/mta.jsonl"
  "$BIN" events "$dir/fleet" > "$dir/fleet.jsonl"
  python3 - "$dir" "$1" "$BULK" "$start_ms" <<'PY' | tee -a "$WORK/results"
import json, sys
d, case, bulk, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
injected = {}
for line in open(f"{d}/mta.jsonl"):
    e = json.loads(line)
    if e["type"] == "injected":
        injected.setdefault(e["message_id"], e["ts"])
stored, last_bulk = [], 0
for line in open(f"{d}/fleet.jsonl"):
    e = json.loads(line)
    if e["type"] != "stored":
        continue
    if ".32@" in e["message_id"]:  # the transactional scenario's seed
        stored.append((injected[e["message_id"]], e["ts"]))
    else:
        last_bulk = max(last_bulk, e["ts"])
# Only what was injected while the campaign was still draining counts.
tx = sorted(s - i for i, s in stored if i < last_bulk)
rank = lambda q: tx[max(1, -(-len(tx) * q // 100)) - 1] if tx else 0
print(f"{case} bulk_rate={bulk * 1000 / (last_bulk - start):.0f} tx={len(tx)}/{len(stored)} "
      f"tx_p50_ms={rank(50)} tx_p99_ms={rank(99)} tx_max_ms={tx[-1] if tx else 0}")
PY
  rm -rf "$dir"
}

run alone
run lanes
run nolanes
python3 - "$WORK/results" "$BULK" "$RATE" "$SIZE" <<'PY'
import sys
r = {l.split()[0]: dict(kv.split("=") for kv in l.split()[1:]) for l in open(sys.argv[1])}
alone = float(r["alone"]["bulk_rate"])
print(f"lanes: bulk alone={alone:.0f} msg/s; with lanes: tx p50={r['lanes']['tx_p50_ms']} ms "
      f"p99={r['lanes']['tx_p99_ms']} ms, bulk {float(r['lanes']['bulk_rate']) / alone:.2f} of alone; "
      f"without lanes: tx p50={r['nolanes']['tx_p50_ms']} ms p99={r['nolanes']['tx_p99_ms']} ms, "
      f"bulk {float(r['nolanes']['bulk_rate']) / alone:.2f} of alone; "
      f"bulk={sys.argv[2]} tx_rate={sys.argv[3]}/s size={sys.argv[4]}")
PY
