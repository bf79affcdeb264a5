#!/usr/bin/env bash
# Issue 16: a city network on one machine. The agency's server and each
# station run in their own Linux network namespace, joined by veth pairs to a
# bridge; every link is shaped with a token-bucket filter (tbf): 100 Mbit/s
# each way for a station, 1 Gbit/s for the agency; stations lose LOSS% of
# packets each way (nftables, random drop). Then the real processes run
# (deploy_rounds.py with NETNS=1) with QUIC Cubic and BBR and with f16 / int8
# update compression, and the same bytes move over TCP + TLS 1.3 in the same
# namespaces (tls_round.py) for reference. Each figure comes with the
# bandwidth bound of its round: the model down to every station and the
# updates back through the agency's link.
#
# Needs root, iproute2 with veth, bridge and tbf, and nftables for loss
# (installed here by apt when missing). Added delay needs tc's netem, which
# the CI kernel lacks ("Specified qdisc kind is unknown"): when netem works
# (DELAY_MS > 0 and the qdisc exists) links get DELAY_MS each way, else the
# script says so and runs with the veth's ~0.1 ms.
#
#   cargo build --release -p fedcrime-server -p fedcrime-client -p fedcrime-sim -p fedcrime-certs
#   sudo .ci/bench/wan.sh                     # 21 stations, 1M and 10M parameters
#   STATIONS=8 SIZES=1m .ci/bench/wan.sh      # smaller
set -euo pipefail
cd "$(dirname "$0")/../.."
STATIONS=${STATIONS:-21}
SIZES=${SIZES:-1m,10m}
ROUNDS=${ROUNDS:-4}
LOSS=${LOSS:-1}
DELAY_MS=${DELAY_MS:-12}
STATION_RATE=${STATION_RATE:-100mbit}
AGENCY_RATE=${AGENCY_RATE:-1gbit}

if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null; then
  echo "wan.sh: skipped: needs root and iproute2 (ip netns)" >&2
  exit 0
fi
if ! command -v nft >/dev/null; then
  apt-get install -y -q nftables >/dev/null 2>&1 || true
fi

BR=fcbr0
cleanup() {
  for ns in $(ip netns list | awk '/^fc-/{print $1}'); do ip netns del "$ns" 2>/dev/null || true; done
  ip link del "$BR" 2>/dev/null || true
}
trap cleanup EXIT
cleanup

netem_ok=0
if [ "$DELAY_MS" -gt 0 ]; then
  ip link add fcprobe0 type dummy 2>/dev/null || true
  if tc qdisc add dev fcprobe0 root netem delay 1ms 2>/dev/null; then netem_ok=1; fi
  ip link del fcprobe0 2>/dev/null || true
  if [ "$netem_ok" = 0 ]; then
    echo "wan.sh: this kernel has no netem qdisc: links get no added delay (RTT ~0.1 ms), rate and loss only" >&2
  fi
fi

ip link add "$BR" type bridge
ip link set "$BR" up

# shape DEV RATE: token bucket on DEV's egress (plus delay where netem exists).
shape() {
  local nsarg=$1 dev=$2 rate=$3
  if [ "$netem_ok" = 1 ]; then
    tc $nsarg qdisc add dev "$dev" root handle 1: netem delay "${DELAY_MS}ms" limit 100000
    tc $nsarg qdisc add dev "$dev" parent 1: handle 2: tbf rate "$rate" burst 256kb latency 400ms
  else
    tc $nsarg qdisc add dev "$dev" root tbf rate "$rate" burst 256kb latency 400ms
  fi
}

# node NAME IP RATE LOSS
node() {
  local ns=$1 ip=$2 rate=$3 loss=$4
  ip netns add "$ns"
  ip link add "v-$ns" type veth peer name eth0 netns "$ns"
  ip link set "v-$ns" master "$BR" up
  ip -n "$ns" addr add "$ip/16" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  shape "-n $ns" eth0 "$rate"   # what the node sends
  shape "" "v-$ns" "$rate"      # what the node receives
  if [ "$loss" != 0 ]; then
    ip netns exec "$ns" nft -f - <<EOF
table inet wan {
  chain in { type filter hook input priority 0; policy accept; iifname "eth0" numgen random mod 1000 < $((loss * 10)) drop; }
  chain out { type filter hook output priority 0; policy accept; oifname "eth0" numgen random mod 1000 < $((loss * 10)) drop; }
}
EOF
  fi
}

node fc-agency 10.77.0.1 "$AGENCY_RATE" 0
for i in $(seq 0 $((STATIONS - 1))); do
  node "fc-st$i" "10.77.1.$((i + 1))" "$STATION_RATE" "$LOSS"
done
ip netns exec fc-st0 python3 -c "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((\"10.77.0.1\", 9)); s.send(b\"x\")"

delay=$([ "$netem_ok" = 1 ] && echo "$DELAY_MS" || echo 0)
echo "## WAN: $STATIONS stations at $STATION_RATE, agency at $AGENCY_RATE, ${LOSS}% loss each way, ${delay} ms added delay each way"
export NETNS=1 NETNS_STATIONS=$STATIONS SERVER_HOST=10.77.0.1
for size in ${SIZES//,/ }; do
  for variant in "cubic f32" "bbr f32" "cubic f16" "cubic int8"; do
    set -- $variant
    CONGESTION=$1 UPDATE_ENCODING=$2 python3 .ci/bench/deploy_rounds.py --stations "$STATIONS" \
      --rounds "$ROUNDS" --sizes "$size" --json --no-reference \
      --label "quic-$1-$2" --bound "$STATION_RATE,$AGENCY_RATE"
  done
  python3 .ci/bench/tls_round.py --stations "$STATIONS" --size "$size" --rounds "$ROUNDS" \
    --bound "$STATION_RATE,$AGENCY_RATE"
done
