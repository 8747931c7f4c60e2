#!/usr/bin/env bash
# Training at chain scale: generates a chain (default 10 stores x 3,000 SKUs x 1,095 days, i.e.
# 30,000 daily series over three years, about 60M events and 3.3 GB of CSV) unless it is already
# there, trains the default daily model on it and prints the figures of docs/benchmarks.md:
# rows, peak RSS, wall and CPU time, holdout metrics next to the baselines', and the load.
#   scripts/chain-train.sh [STORES SKUS DAYS]
# Needs about 5.5 GB of disk (the CSV, and the spill files training writes under $TMPDIR).
set -euo pipefail
cd "$(dirname "$0")/.."
stores=${1:-10}
skus=${2:-3000}
days=${3:-1095}
cargo build --release --locked --quiet
bin=target/release/stockcast
data=target/chain/${stores}x${skus}x${days}
model=target/chain/model-${stores}x${skus}x${days}
if [ ! -f "$data/sales.csv" ]; then
    "$bin" generate --out "$data" --stores "$stores" --skus "$skus" --days "$days"
fi
rm -rf "$model"
log=$(mktemp)
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
/usr/bin/time -v "$bin" train --data "$data" --out "$model" --workers 2 --log-json 2> "$log" || {
    tail -20 "$log"
    exit 1
}
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$log" "$model/manifest.json" <<'EOF'
import json, re, sys
log, manifest = open(sys.argv[1]).read(), json.load(open(sys.argv[2]))
def timed(label):
    m = re.search(re.escape(label) + r": (.*)", log)
    return m.group(1).strip() if m else "?"
user, system = float(timed("User time (seconds)")), float(timed("System time (seconds)"))
rss = int(timed("Maximum resident set size (kbytes)")) / 1024 / 1024
t, v = manifest["trained_on"], manifest["validation"]
print(f"rows: {t['rows']:,} training + {t['validation_rows']:,} holdout "
      f"(a share of {t['row_share']:.4f} of the series-periods)")
print(f"peak RSS: {rss:.2f} GiB; wall: {timed('Elapsed (wall clock) time (h:mm:ss or m:ss)')}; "
      f"CPU: {user + system:.0f} s")
fields = [json.loads(l).get("fields", {}) for l in log.splitlines() if l.startswith("{")]
for f in fields:
    if f.get("message") == "history snapshotted":
        print(f"history: {f.get('secs')} s")
print(f"holdout: stockcast WAPE {v['wape']:.4f} pinball90 {v['pinball90']:.4f} bias {v['bias']:+.4f}")
for f in fields:
    if f.get("message") == "baseline on the same holdout":
        print(f"holdout: {f['baseline']} WAPE {f['holdout_wape']} pinball90 {f['holdout_pinball90']}")
EOF
rm -f "$log"
