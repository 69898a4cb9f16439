#!/usr/bin/env bash
# A private sshd on loopback for the `ssh` facility's tests: key login only, its own config.
#
#   bash scripts/sshd.sh start    install openssh-server if missing, make keys, start on 127.0.0.1:$PORT
#   bash scripts/sshd.sh stop     stop it
#   bash scripts/sshd.sh status   exit 0 when a key login works
#
# Nothing of the system's ssh setup is touched: host keys, the authorized_keys file and the
# client key live in $STATE (mode 0700); the client key is $STATE/id_ed25519 and the
# known_hosts file $STATE/known_hosts. Port: ESAP_SSHD_PORT (default 2222).
set -euo pipefail

STATE=${ESAP_SSHD_STATE:-/var/lib/esap-sshd}
PORT=${ESAP_SSHD_PORT:-2222}
PIDFILE=$STATE/sshd.pid

log() { printf 'sshd.sh: %s\n' "$*" >&2; }

running() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

can_login() {
    ssh -p "$PORT" -i "$STATE/id_ed25519" -o BatchMode=yes -o ConnectTimeout=3 \
        -o UserKnownHostsFile="$STATE/known_hosts" -o StrictHostKeyChecking=yes \
        "$(id -un)@127.0.0.1" true 2>/dev/null
}

start() {
    if [[ ! -x /usr/sbin/sshd ]]; then
        log "installing openssh-server from the Debian archive"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null
    fi
    install -d -m 0700 "$STATE"
    mkdir -p /run/sshd
    [[ -f $STATE/host_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -f "$STATE/host_ed25519"
    [[ -f $STATE/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -f "$STATE/id_ed25519"
    install -m 0600 "$STATE/id_ed25519.pub" "$STATE/authorized_keys"
    printf '[127.0.0.1]:%s %s\n' "$PORT" "$(cut -d' ' -f1,2 "$STATE/host_ed25519.pub")" \
        >"$STATE/known_hosts"
    cat >"$STATE/sshd_config" <<EOF
# Written by esap-dask scripts/sshd.sh: loopback only, key login only.
ListenAddress 127.0.0.1
Port $PORT
HostKey $STATE/host_ed25519
PidFile $PIDFILE
AuthorizedKeysFile $STATE/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
StrictModes yes
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp internal-sftp
EOF
    if ! running; then
        log "starting sshd on 127.0.0.1:$PORT"
        /usr/sbin/sshd -f "$STATE/sshd_config" -E "$STATE/sshd.log"
    fi
    for _ in $(seq 50); do
        can_login && { log "key login to 127.0.0.1:$PORT works"; return; }
        sleep 0.1
    done
    log "sshd does not accept the key login; see $STATE/sshd.log"
    exit 1
}

stop() {
    if running; then kill "$(cat "$PIDFILE")"; fi
    rm -f "$PIDFILE"
    log "stopped"
}

status() {
    if running && can_login; then
        log "sshd on 127.0.0.1:$PORT accepts key login"
    else
        log "no sshd here; run: bash scripts/sshd.sh start"
        return 1
    fi
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
