#!/usr/bin/env bash
# The event stream's cost in a run: the same campaign through one fleet node and the MTA, with
# the stream (`mailsim node` x2 and the coordinator, `mailsim run --nats`: every node publishes
# its log to JetStream, the coordinator follows the MTA's records) and without it (`mailsim
# fleet`, `mailsim mta`, `mailsim send`: the same daemons, no NATS), alternating, ROUNDS times
# each, all on this machine. Both MTAs sign with the same RSA-2048 key (the scenario's PEM,
# given to the daemon with --dkim), the fleet verifies SPF/DKIM/DMARC and stores every copy.
# Per round: the events in every node's log, and the seconds from the MTA's first `injected` to
# its last final outcome: events/s and messages/s.
# Usage: benches/cluster.sh [MESSAGES] [ROUNDS]
# Last line: cluster: stream=<events/s> plain=<events/s> ratio=<stream/plain> messages=<n>
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-20000}
ROUNDS=${2:-3}
cargo build --release --quiet
BIN=$PWD/target/release/mailsim
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
WORK=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/dkim.pem" 2>/dev/null
cat > "$WORK/bench.toml" <<TOML
name = "cluster-bench"
seed = 23
[mta]
run_time_s_max = 3600
retry_interval_s_min = 1
retry_interval_s_max = 4
destination_backoff_s = 2
[[sender]]
domain = "news.example.test"
dmarc = "v=DMARC1; p=none"
dkim_private_key = "$WORK/dkim.pem"
dkim_selector = "bench"
[[domain]]
name = "a.test"
[[domain]]
name = "b.test"
[[domain]]
name = "c.test"
unknown_users = { percent = 3 }
[[domain]]
name = "d.test"
[campaign]
messages = $MESSAGES
size_bytes = 5120
TOML
NATS_PORT=$(free_port)
"$NATS" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/nats" > "$WORK/nats.log" 2>&1 &
URL=nats://127.0.0.1:$NATS_PORT
sleep 1

events_in() { local n=0; for d in "$@"; do n=$((n + $("$BIN" events "$d" | wc -l))); done; echo $n; }
# Seconds from the MTA's first `injected` to its last final outcome (delivered, bounced,
# expired): the campaign's own window, without the daemons' idle time before and after it.
elapsed_of() {
  "$BIN" events "$1" | python3 -c '
import json, sys
first = last = None
for line in sys.stdin:
    e = json.loads(line)
    if e["type"] == "injected" and first is None:
        first = e["ts"]
    if e["type"] in ("delivered", "bounced", "expired"):
        last = e["ts"]
print((last - first) / 1000)'
}
final_of() { "$BIN" replay "$1" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["delivered"]+s["bounced"]+s["expired"])'; }

with_stream() {
  local r=$WORK/s$1 run=r$1
  mkdir -p "$r"
  /usr/bin/time -f "%U %S" -o "$r/f0.cpu" \
    "$BIN" node --nats "$URL" --run "$run" --role fleet --shard 0 --out "$r/f0" 2> "$r/f0.err" &
  local f=$!
  /usr/bin/time -f "%U %S" -o "$r/mta.cpu" \
    "$BIN" node --nats "$URL" --run "$run" --role mta --out "$r/mta" 2> "$r/mta.err" &
  local m=$!
  "$BIN" run "$WORK/bench.toml" --nats "$URL" --run-id "$run" --fleet-nodes 1 --out "$r/run" \
    --quiet > /dev/null 2> "$r/run.err" || { cat "$r/run.err" "$r/f0.err" "$r/mta.err" >&2; exit 1; }
  wait $f $m
  # CPU seconds (user + system) per message of each node, over the whole run.
  local fcpu mcpu
  fcpu=$(awk '{print $1 + $2}' "$r/f0.cpu"); mcpu=$(awk '{print $1 + $2}' "$r/mta.cpu")
  python3 -c "print('stream-cpu fleet_ms_per_message=%.3f mta_ms_per_message=%.3f' % ($fcpu*1000/$MESSAGES, $mcpu*1000/$MESSAGES))" | tee -a "$WORK/cpu"
  report stream "$r/mta" "$r/f0" "$r/mta"
}

without_stream() {
  local r=$WORK/p$1 port sub
  mkdir -p "$r"
  port=$(free_port); sub=$(free_port)
  "$BIN" fleet "$WORK/bench.toml" --out "$r/f0" --port "$port" > "$r/fleet.out" 2>/dev/null &
  local f=$!
  for _ in $(seq 200); do grep -q ready "$r/fleet.out" 2>/dev/null && break; sleep 0.1; done
  local dns
  dns=$(sed -n 's/.*dns=\([^ ]*\).*/\1/p' "$r/fleet.out")
  "$BIN" mta --spool "$r/mta" --dns "$dns" --remote-port "$port" --submission "127.0.0.1:$sub" \
    --retry-interval-s-min 1 --retry-interval-s-max 4 --destination-backoff-s 2 \
    --dkim "news.example.test:bench:$WORK/dkim.pem" > /dev/null 2>&1 &
  local m=$!
  sleep 1
  "$BIN" send "$WORK/bench.toml" --to "127.0.0.1:$sub" --connections 8 > /dev/null
  while [ "$(final_of "$r/mta")" -lt "$MESSAGES" ]; do sleep 0.5; done
  kill $m $f; wait $m $f 2>/dev/null || true
  report plain "$r/mta" "$r/f0" "$r/mta"
}

# report KIND MTA_DIR NODE_DIRS...: one line per round, kept for the medians.
report() {
  local kind=$1 mta=$2; shift 2
  local ev el
  ev=$(events_in "$@"); el=$(elapsed_of "$mta")
  python3 -c "print('$kind events=$ev seconds=$el events_per_s=%.0f messages_per_s=%.0f' % ($ev/$el, $MESSAGES/$el))" | tee -a "$WORK/rounds"
}

for i in $(seq "$ROUNDS"); do
  with_stream "$i"
  without_stream "$i"
done
python3 - "$WORK/rounds" "$MESSAGES" <<'PY'
import re, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {k: statistics.median(float(dict(x.split('=') for x in r[1:])['events_per_s']) for r in rows if r[0] == k)
       for k in ('stream', 'plain')}
print(f"cluster: stream={med['stream']:.0f} plain={med['plain']:.0f} ratio={med['stream']/med['plain']:.2f} messages={sys.argv[2]}")
PY
