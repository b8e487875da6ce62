#!/usr/bin/env bash
# Network namespace for the shaped-link benchmark: a veth pair between the
# host and a namespace of our own, 10.x addresses on that pair only, and a
# token bucket on both ends so the namespace is reached at RATE (1gbit).
#   bench/netns.sh up   NS HOSTIF NSIF HOSTADDR NSADDR RATE
#   bench/netns.sh down NS HOSTIF
# Touches nothing but the namespace and the veth pair it creates.
set -euo pipefail
cmd=${1:?up|down}
case "$cmd" in
up)
  ns=$2 hif=$3 nif=$4 haddr=$5 naddr=$6 rate=${7:-1gbit}
  ip netns add "$ns"
  ip link add "$hif" type veth peer name "$nif"
  ip link set "$nif" netns "$ns"
  ip addr add "$haddr/30" dev "$hif"
  ip link set "$hif" up
  ip netns exec "$ns" ip link set lo up
  ip netns exec "$ns" ip addr add "$naddr/30" dev "$nif"
  ip netns exec "$ns" ip link set "$nif" up
  # veth has no GSO limits that tbf cares about here; turn off offloads so the
  # shaper sees wire-sized packets (best effort: ethtool may be missing).
  if command -v ethtool >/dev/null; then
    ethtool -K "$hif" tso off gso off gro off >/dev/null 2>&1 || true
    ip netns exec "$ns" ethtool -K "$nif" tso off gso off gro off >/dev/null 2>&1 || true
  fi
  # 1 Gbit/s each way; burst ~ 1 ms of traffic at that rate, queue ≤ 20 ms.
  tc qdisc add dev "$hif" root tbf rate "$rate" burst 128kb latency 20ms
  ip netns exec "$ns" tc qdisc add dev "$nif" root tbf rate "$rate" burst 128kb latency 20ms
  ;;
down)
  ns=$2 hif=$3
  ip link del "$hif" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  ;;
*)
  echo "usage: $0 up NS HOSTIF NSIF HOSTADDR NSADDR RATE | down NS HOSTIF" >&2; exit 2 ;;
esac
