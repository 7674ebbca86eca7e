#!/usr/bin/env bash
# Soak: run scenarios/soak.toml (one hour of virtual time, 120,000 messages, faults switching
# on and off) and sample the process's resident memory while it runs. The last line is
# soak: messages=N delivered=D lost=L drained=yes|no virtual_s=V wall_s=W rss_early_mb=A rss_late_mb=B
# and the script fails when a message is lost, the queue did not drain, or memory grew.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
start=$(date +%s.%N)
./target/release/mailsim run scenarios/soak.toml --out "$OUT/run" --quiet > "$OUT/summary.json" 2>/dev/null &
pid=$!
: > "$OUT/rss"
while kill -0 $pid 2>/dev/null; do
  awk '/VmRSS/ {print $2}' /proc/$pid/status 2>/dev/null >> "$OUT/rss" || true
  sleep 0.2
done
wait $pid
end=$(date +%s.%N)
python3 - "$OUT" "$start" "$end" <<'PY'
import json, sys
out, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
s = json.load(open(f"{out}/summary.json"))
rss = [int(x) for x in open(f"{out}/rss").read().split()]
third = max(1, len(rss) // 3)
early, late = max(rss[:third]) / 1024, max(rss[-third:]) / 1024
lost = s["injected"] - s["delivered"] - s["bounced"] - s["expired"]
drained = s["deferred"] == 0
flat = late <= early * 1.25 + 16
print(f"soak: messages={s['injected']} delivered={s['delivered']} lost={lost} "
      f"drained={'yes' if drained else 'no'} virtual_s={s['elapsed_s']:.0f} "
      f"wall_s={end - start:.1f} rss_early_mb={early:.0f} rss_late_mb={late:.0f}")
sys.exit(0 if lost == 0 and drained and flat else 1)
PY
