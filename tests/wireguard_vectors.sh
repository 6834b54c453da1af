#!/usr/bin/env bash
# Regenerate the known-answer vector pinned in src/relay/admission/tests.rs (tests `vector_*`) with a real wireguard-go.
#
# In a network namespace of its own, a wireguard-go "client" has one peer: a WireGuard server that does not exist,
# whose public key is freshly generated and whose endpoint is 127.0.0.1:PORT in the same namespace. There
# tests/wireguard_capture.rs plays the relay under load: it checks the client's initiation (mac1), answers it with
# this crate's cookie reply (fixed seed), and waits for the client's retry, whose mac2 must verify with that cookie.
# A persistent keepalive makes the client start the handshake at once. Nothing leaves the namespace.
#
# Needs root, wireguard-go and wireguard-tools (apt-get install wireguard-go wireguard-tools). CI does not run this;
# it runs the unit tests on the recorded bytes. Paste the printed lines into src/relay/admission/tests.rs.
#
# NS and IFACE may be overridden; IFACE must be unique on the machine (wireguard-go's control socket lives in
# /var/run/wireguard, shared by all namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."

NS=${NS:-rut-wgvec-$$}
IFACE=${IFACE:-wgv$$}
PORT=${PORT:-51999}
CLIENT_PORT=${CLIENT_PORT:-51820}
export WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1

for tool in wireguard-go wg ip; do
	command -v "$tool" >/dev/null || { echo "wireguard_vectors: $tool not found" >&2; exit 2; }
done

bin=$(cargo test --release --test wireguard_capture --no-run --message-format=json 2>/dev/null |
	grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d'"' -f4)
[[ -x $bin ]] || { echo "wireguard_vectors: could not build tests/wireguard_capture.rs" >&2; exit 2; }

pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	ip netns del "$NS" 2>/dev/null || true
	rm -f "/var/run/wireguard/$IFACE.sock" "/var/run/wireguard/$IFACE.name"
}
trap cleanup EXIT

ip netns add "$NS"
in_ns() { ip netns exec "$NS" "$@"; }
in_ns ip link set lo up

in_ns wireguard-go -f "$IFACE" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do [[ -S /var/run/wireguard/$IFACE.sock ]] && break; sleep 0.1; done
[[ -S /var/run/wireguard/$IFACE.sock ]] || { echo "wireguard_vectors: wireguard-go did not start" >&2; exit 1; }

server_pk=$(wg genkey | wg pubkey)
in_ns wg set "$IFACE" listen-port "$CLIENT_PORT" private-key <(wg genkey) \
	peer "$server_pk" endpoint "127.0.0.1:$PORT" allowed-ips 10.99.0.2/32
in_ns ip addr add 10.99.0.1/24 dev "$IFACE"
in_ns ip link set "$IFACE" up

out=$(mktemp)
in_ns env WG_CAPTURE_PK="$server_pk" WG_CAPTURE_PORT="$PORT" \
	"$bin" --ignored --exact capture --nocapture >"$out" 2>&1 &
capture=$!
pids+=("$capture")
# Start the handshake once the relay side listens (an initiation sent earlier is only retried 5 s later).
for _ in $(seq 100); do in_ns ss -Hlun "sport = :$PORT" | grep -q . && break; sleep 0.1; done
in_ns wg set "$IFACE" peer "$server_pk" persistent-keepalive 1

status=0
wait "$capture" || status=$?
if ((status != 0)); then
	cat "$out" >&2
	echo "wireguard_vectors: no vector (see above)" >&2
	exit 1
fi
echo "public_key $server_pk"
grep -E '^(source|initiation1|reply|initiation2) ' "$out"
rm -f "$out"
