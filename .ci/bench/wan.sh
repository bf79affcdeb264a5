#!/usr/bin/env bash
# Issue 16: a city network on one machine. The agency's server and each
# station run in their own Linux network namespace, joined by veth pairs to a
# bridge; every link is shaped with a token-bucket filter (tbf): 100 Mbit/s
# each way for a station, 1 Gbit/s for the agency; stations lose LOSS% of
# packets each way (random drop: delayline's per wire packet where it runs,
# else nftables on the stations, which sees TSO/GSO batches and so drops
# fewer, larger units). Then the real processes run
# (deploy_rounds.py with NETNS=1) with QUIC Cubic and BBR and with f16 / int8
# update compression, and the same bytes move over TCP + TLS 1.3 in the same
# namespaces (tls_round.py) for reference. Each figure comes with the
# bandwidth bound of its round: the model down to every station and the
# updates back through the agency's link.
#
# Needs root, iproute2 with veth, bridge and tbf, and nftables for loss
# (installed here by apt when missing).
#
# Delay: DELAY_MS is the one-way delay, one number or a range A-B spread
# evenly over the stations (default 10-25: round-trip times of 20-50 ms).
# Where tc's netem qdisc exists, a range's middle value goes on every link.
# Where it does not (this project's machines: "Specified qdisc kind is
# unknown"), the agency sits behind a router namespace (fc-wan) whose policy
# routing passes every packet between the agency and the stations through a
# TUN device. `delayline` (.ci/bench/delayline, built here with cargo) holds
# each packet for its station's one-way delay, then hands it back to the
# kernel. DELAY_MS=0 turns delay off (RTT ~0.1 ms).
#
#   cargo build --release -p fedcrime-server -p fedcrime-client -p fedcrime-sim -p fedcrime-certs
#   sudo .ci/bench/wan.sh                     # 21 stations, 1M and 10M parameters
#   STATIONS=8 SIZES=1m .ci/bench/wan.sh      # smaller
#   SIZES=10m VARIANTS="bbr:f32" TCP_CC=bbr LOSS=0 DELAY_MS=10-25 .ci/bench/wan.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
STATIONS=${STATIONS:-21}
SIZES=${SIZES:-1m,10m}
ROUNDS=${ROUNDS:-4}
LOSS=${LOSS:-1}
DELAY_MS=${DELAY_MS:-10-25}
DELAY_LOW=${DELAY_MS%-*}
DELAY_HIGH=${DELAY_MS#*-}
STATION_RATE=${STATION_RATE:-100mbit}
AGENCY_RATE=${AGENCY_RATE:-1gbit}
# QUIC runs as CONGESTION:UPDATE_ENCODING, and TCP + TLS runs per congestion control.
VARIANTS=${VARIANTS:-cubic:f32 bbr:f32 bbr:f16 bbr:int8}
TCP_CC=${TCP_CC:-cubic bbr}

if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null; then
  echo "wan.sh: skipped: needs root and iproute2 (ip netns)" >&2
  exit 0
fi
if ! command -v nft >/dev/null; then
  apt-get install -y -q nftables >/dev/null 2>&1 || true
fi

BR=fcbr0
cleanup() {
  pkill -f "delayline --dev fcd0" 2>/dev/null || true
  for ns in $(ip netns list | awk '/^fc-/{print $1}'); do ip netns del "$ns" 2>/dev/null || true; done
  ip link del "$BR" 2>/dev/null || true
}
trap cleanup EXIT
cleanup

netem_ok=0
delayline=0
if [ "$DELAY_HIGH" != 0 ]; then
  ip link add fcprobe0 type dummy 2>/dev/null || true
  if tc qdisc add dev fcprobe0 root netem delay 1ms 2>/dev/null; then netem_ok=1; fi
  ip link del fcprobe0 2>/dev/null || true
  if [ "$netem_ok" = 0 ]; then
    echo "wan.sh: this kernel has no netem qdisc: delay comes from delayline (a TUN device in a router namespace)" >&2
    cargo build -q --release --manifest-path .ci/bench/delayline/Cargo.toml \
      --target-dir target/delayline
    delayline=1
  fi
fi

ip link add "$BR" type bridge
ip link set "$BR" up

# shape DEV RATE: token bucket on DEV's egress (plus delay where netem exists).
shape() {
  local nsarg=$1 dev=$2 rate=$3
  if [ "$netem_ok" = 1 ]; then
    tc $nsarg qdisc add dev "$dev" root handle 1: netem delay "$(( (DELAY_LOW + DELAY_HIGH) / 2 ))ms" limit 100000
    tc $nsarg qdisc add dev "$dev" parent 1: handle 2: tbf rate "$rate" burst 256kb latency 400ms
  else
    tc $nsarg qdisc add dev "$dev" root tbf rate "$rate" burst 256kb latency 400ms
  fi
}

# node NAME IP/PREFIX RATE LOSS [GATEWAY]: a namespace on the bridge.
node() {
  local ns=$1 ip=$2 rate=$3 loss=$4 gw=${5:-}
  ip netns add "$ns"
  ip link add "v-$ns" type veth peer name eth0 netns "$ns"
  ip link set "v-$ns" master "$BR" up
  ip -n "$ns" addr add "$ip" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  if [ -n "$gw" ]; then ip -n "$ns" route add 10.77.0.0/24 via "$gw"; fi
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

if [ "$delayline" = 1 ]; then
  # agency 10.77.0.1/24 -- ra [fc-wan: delayline on fcd0] rb -- bridge -- stations 10.77.1.x/24
  ip netns add fc-agency
  ip netns add fc-wan
  ip -n fc-wan link set lo up
  ip netns exec fc-wan sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
    net.ipv4.conf.default.rp_filter=0
  ip link add ra netns fc-wan type veth peer name eth0 netns fc-agency
  ip -n fc-wan addr add 10.77.0.254/24 dev ra
  ip -n fc-wan link set ra up
  ip -n fc-agency addr add 10.77.0.1/24 dev eth0
  ip -n fc-agency link set eth0 up
  ip -n fc-agency link set lo up
  ip -n fc-agency route add 10.77.1.0/24 via 10.77.0.254
  shape "-n fc-agency" eth0 "$AGENCY_RATE"   # what the agency sends
  shape "-n fc-wan" ra "$AGENCY_RATE"        # what it receives
  ip link add v-fc-wan type veth peer name rb netns fc-wan
  ip link set v-fc-wan master "$BR" up
  ip -n fc-wan addr add 10.77.1.254/24 dev rb
  ip -n fc-wan link set rb up
  ip netns exec fc-wan target/delayline/release/delayline --dev fcd0 \
    --delay-ms "$DELAY_LOW-$DELAY_HIGH" --stations "$STATIONS" --subnet 10.77.1 --loss "$LOSS" &
  for _ in $(seq 50); do ip -n fc-wan link show fcd0 >/dev/null 2>&1 && break; sleep 0.1; done
  ip -n fc-wan link set fcd0 up
  ip netns exec fc-wan sysctl -qw net.ipv4.conf.fcd0.rp_filter=0
  # Packets arriving from either side go into the TUN device; what delayline
  # writes back arrives on fcd0 and the main table forwards it.
  ip -n fc-wan route add default dev fcd0 table 200
  ip -n fc-wan rule add iif ra lookup 200 pref 100
  ip -n fc-wan rule add iif rb lookup 200 pref 101
  # Loss is delayline's (per wire packet), not the stations' filters.
  for i in $(seq 0 $((STATIONS - 1))); do
    node "fc-st$i" "10.77.1.$((i + 1))/24" "$STATION_RATE" 0 10.77.1.254
  done
else
  node fc-agency 10.77.0.1/16 "$AGENCY_RATE" 0
  for i in $(seq 0 $((STATIONS - 1))); do
    node "fc-st$i" "10.77.1.$((i + 1))/16" "$STATION_RATE" "$LOSS"
  done
fi
ip netns exec fc-st0 python3 -c "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((\"10.77.0.1\", 9)); s.send(b\"x\")"

if [ "$netem_ok" = 1 ]; then
  delay="$(( (DELAY_LOW + DELAY_HIGH) / 2 )) ms each way (netem)"; rtt_ms=$(( DELAY_LOW + DELAY_HIGH ))
elif [ "$delayline" = 1 ]; then
  delay="$DELAY_LOW-$DELAY_HIGH ms each way (delayline)"; rtt_ms=$(( 2 * DELAY_HIGH ))
else
  delay="no added delay"; rtt_ms=0
fi
echo "## WAN: $STATIONS stations at $STATION_RATE, agency at $AGENCY_RATE, ${LOSS}% loss each way, $delay"
export NETNS=1 NETNS_STATIONS=$STATIONS SERVER_HOST=10.77.0.1
for size in ${SIZES//,/ }; do
  for variant in $VARIANTS; do
    set -- ${variant/:/ }
    CONGESTION=$1 UPDATE_ENCODING=$2 python3 .ci/bench/deploy_rounds.py --stations "$STATIONS" \
      --rounds "$ROUNDS" --sizes "$size" --json --no-reference --one-pass \
      --label "quic-$1-$2" --bound "$STATION_RATE,$AGENCY_RATE" --rtt-ms "$rtt_ms"
  done
  for cc in $TCP_CC; do
    python3 .ci/bench/tls_round.py --stations "$STATIONS" --size "$size" --rounds "$ROUNDS" \
      --bound "$STATION_RATE,$AGENCY_RATE" --rtt-ms "$rtt_ms" --congestion "$cc"
  done
done
