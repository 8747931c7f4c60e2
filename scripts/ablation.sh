#!/usr/bin/env bash
# The model ablations of docs/model.md: backtests (weekly, horizon 8, 3 origins, seed 42) of the
# weekly sets in ../shared/data with and without the price plan and the weight average.
#   scripts/ablation.sh [SET...]     (default: dunnhumby_btf_dev walmart_store_dept)
# "without the plan" replays the set with an empty prices.csv beside its files, so no plan is
# derived from the sales' prices; everything else is the same data (a set without prices runs
# once). Prints one markdown row per run with its CPU seconds; the reports go to target/ablation/.
set -euo pipefail
cd "$(dirname "$0")/.."
sets=("$@")
[ ${#sets[@]} -gt 0 ] || sets=(dunnhumby_btf_dev walmart_store_dept)
cargo build --release --locked --quiet
bin=target/release/stockcast
out=target/ablation
mkdir -p "$out"
echo "| set | price plan | weight average | WAPE | pinball90 | bias | coverage90 | CPU s |"
echo "|---|---|---|---|---|---|---|---|"
for set in "${sets[@]}"; do
    src=../shared/data/$set
    bare=$out/$set-without-plan
    rm -rf "$bare" && mkdir -p "$bare"
    for f in "$src"/*; do ln -s "$(realpath "$f")" "$bare/"; done
    echo "price_id,store_id,sku_id,start,end,price" > "$bare/prices.csv"
    plans=(with without)
    # A set whose sales carry no prices has no plan either way: one run is enough.
    head -1 "$src/sales.csv" | tr ',' '\n' | grep -qx -e price -e unit_price || plans=(with)
    for plan in "${plans[@]}"; do
        data=$src
        [ $plan = with ] || data=$bare
        for avg in 0.999 0; do
            report=$out/$set-$plan-plan-avg-$avg
            line=$( { TIMEFORMAT='cpu %U %S'; time "$bin" backtest --data "$data" --period week \
                --horizon 8 --origins 3 --weight-average "$avg" --out "$report" 2>/dev/null; } 2>&1 )
            read -r wape p90 bias cov < <(echo "$line" | grep '^stockcast ' | awk '{print $3, $11, $7, $13}')
            cpu=$(echo "$line" | awk '/^cpu/ {printf "%.0f", $2 + $3}')
            echo "| $set | $plan | $avg | $wape | $p90 | $bias | $cov | $cpu |"
        done
    done
done
