#!/usr/bin/env bash
# Makes sure the services the integration tests talk to run on loopback:
#   PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth for loopback), Redis on 127.0.0.1:6379.
# Usage: scripts/services.sh [start]   (idempotent: a service that already answers is left alone)
# A missing server is installed from Debian's packages (postgresql, redis-server) with apt-get.
set -euo pipefail

SUDO=${SUDO-$( [ "$(id -u)" -ne 0 ] && echo sudo || true )}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # port name
    for _ in $(seq 1 100); do
        listening "$1" && return 0
        sleep 0.2
    done
    echo "services: $2 did not come up on 127.0.0.1:$1" >&2
    exit 1
}

apt_install() {
    if ! command -v apt-get >/dev/null; then
        echo "services: $* missing and no apt-get here; install it and start it on loopback" >&2
        exit 1
    fi
    echo "services: installing $* with apt-get" >&2
    $SUDO apt-get install -y "$@" >&2
}

postgres() {
    listening 5432 && return 0
    local installed=no
    if ! command -v pg_ctlcluster >/dev/null || [ ! -d /etc/postgresql ]; then
        apt_install postgresql
        installed=yes
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -1)
    if [ "$installed" = yes ]; then
        # Loopback connections as any user without a password, as the tests expect.
        local hba="/etc/postgresql/$version/main/pg_hba.conf"
        $SUDO sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    fi
    echo "services: starting PostgreSQL $version" >&2
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start
    wait_for 5432 PostgreSQL
}

redis() {
    listening 6379 && return 0
    command -v redis-server >/dev/null || apt_install redis-server
    echo "services: starting Redis" >&2
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >&2
    wait_for 6379 Redis
}

case "${1:-start}" in
start)
    postgres
    redis
    ;;
*)
    echo "usage: $0 [start]" >&2
    exit 2
    ;;
esac
