#!/usr/bin/env bash
# Two test "servers" as Linux network namespaces joined by a veth pair, for multi-node tests.
#
#   scripts/netns_hosts.sh up [--hosts]   # idempotent; --hosts: a hosts file per namespace naming both
#   scripts/netns_hosts.sh link down|up   # cut / restore the link between them
#   scripts/netns_hosts.sh status
#   scripts/netns_hosts.sh down           # remove namespaces, link and hosts files
#
#   host1: namespace trn-h1, interface trn-v1, 10.77.0.1/24
#   host2: namespace trn-h2, interface trn-v2, 10.77.0.2/24
# Run a command "on" a host: ip netns exec trn-h1 CMD. Traffic stays between these namespaces.
# They share the machine's hostname, which resolves to 127.0.0.1: give torchrun --local-addr
# and --rdzv-conf=is_host=1/0, and set GLOO_SOCKET_IFNAME=trn-v1 / trn-v2.
# Needs root (CAP_NET_ADMIN). Names and subnet can be changed with NETNS_PREFIX / NETNS_SUBNET.
set -euo pipefail

PREFIX=${NETNS_PREFIX:-trn}
SUBNET=${NETNS_SUBNET:-10.77.0}
NS=("$PREFIX-h1" "$PREFIX-h2")
IF=("$PREFIX-v1" "$PREFIX-v2")
ADDR=("$SUBNET.1" "$SUBNET.2")

die() { echo "netns_hosts: $*" >&2; exit 1; }
have_ns() { ip netns list | awk '{print $1}' | grep -qx "$1"; }

write_hosts() {
  # `ip netns exec NAME` bind-mounts /etc/netns/NAME/hosts over /etc/hosts for the command it runs.
  for i in 0 1; do
    mkdir -p "/etc/netns/${NS[$i]}"
    cat > "/etc/netns/${NS[$i]}/hosts" <<EOF
127.0.0.1 localhost
${ADDR[$i]} $(hostname)
${ADDR[0]} host1
${ADDR[1]} host2
EOF
  done
}

up() {
  [ "$(id -u)" = 0 ] || die "needs root"
  command -v ip >/dev/null || die "ip not found: apt-get install iproute2"
  for i in 0 1; do have_ns "${NS[$i]}" || ip netns add "${NS[$i]}"; done
  if ! ip -n "${NS[0]}" link show "${IF[0]}" >/dev/null 2>&1; then
    ip link del "${IF[0]}" 2>/dev/null || true  # a half-made pair left in the root namespace
    ip link add "${IF[0]}" netns "${NS[0]}" type veth peer name "${IF[1]}" netns "${NS[1]}"
  fi
  for i in 0 1; do
    ip -n "${NS[$i]}" link set lo up
    ip -n "${NS[$i]}" addr replace "${ADDR[$i]}/24" dev "${IF[$i]}"
    ip -n "${NS[$i]}" link set "${IF[$i]}" up
  done
  if [ "${1:-}" = "--hosts" ]; then write_hosts; fi
  # Wait for the link: a veth end reports UP only once both ends are up.
  for _ in $(seq 1 50); do
    if ip -n "${NS[0]}" -br link show "${IF[0]}" | grep -q " UP " \
      && ip -n "${NS[1]}" -br link show "${IF[1]}" | grep -q " UP "; then
      echo "netns_hosts: up"
      return 0
    fi
    sleep 0.1
  done
  die "the link between the namespaces did not come up"
}

link() {
  case "${1:-}" in
    down|up) for i in 0 1; do ip -n "${NS[$i]}" link set "${IF[$i]}" "$1"; done ;;
    *) die "usage: $0 link down|up" ;;
  esac
}

down() {
  for i in 0 1; do
    if have_ns "${NS[$i]}"; then
      # Processes left in a namespace keep it alive: end them by PID before deleting it.
      for pid in $(ip netns pids "${NS[$i]}" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
      ip netns del "${NS[$i]}"
    fi
    rm -rf "/etc/netns/${NS[$i]}"
  done
  echo "netns_hosts: down"
}

status() {
  for i in 0 1; do
    if have_ns "${NS[$i]}"; then
      echo "${NS[$i]}: $(ip -n "${NS[$i]}" -br addr show "${IF[$i]}" 2>/dev/null || echo 'no link')"
    else
      echo "${NS[$i]}: absent"
    fi
  done
}

case "${1:-}" in
  up) up "${2:-}" ;;
  down) down ;;
  link) link "${2:-}" ;;
  status) status ;;
  *) echo "usage: $0 up [--hosts] | down | link down|up | status" >&2; exit 2 ;;
esac
