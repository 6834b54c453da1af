# shellcheck shell=bash
# Helpers for tests/e2e/run.sh: the namespace topology, processes, WireGuard, agents, probes.
# Sourced, not run. Every address used lives inside the namespaces created here (see README.md).

# ---- names and constants -------------------------------------------------------------------------
for _ in 1 2 3 4 5 6 7 8; do      # a name prefix no leftover of an earlier run uses
  RUN_ID=$(od -An -N2 -tx2 /dev/urandom | tr -d ' \n')
  compgen -G "/var/run/netns/rut${RUN_ID}-*" >/dev/null || compgen -G "/var/run/wireguard/w${RUN_ID}*" >/dev/null || break
done
P="rut${RUN_ID}"
NS_HOME=$P-home NS_HNAT=$P-hnat NS_CGN=$P-cgnat NS_NET=$P-inet NS_RELAY=$P-relay NS_ATK=$P-atk
CLIENTS=(1 2 3 6)               # c1..c3: IPv4 clients; c6: IPv6-only client
ALL_NS=("$NS_HOME" "$NS_HNAT" "$NS_CGN" "$NS_NET" "$NS_RELAY" "$NS_ATK")
for _c in "${CLIENTS[@]}"; do ALL_NS+=("$P-c$_c"); done
# The second home and its clients (homes_* scenarios only; built on first use by home2_up, see README.md).
NS_HOME2=$P-home2 NS_HNAT2=$P-hnat2
HOME2_NS=("$NS_HOME2" "$NS_HNAT2" "$P-c4" "$P-c5")
HOME2_UP=""

BR0_MAC=02:00:00:00:02:01       # the internet router's bridge (fixed: see topo_up)
RELAY_V4=203.0.113.10 RELAY_V6=2001:db8:1::10 RELAY_NAME=relay.e2e.test RELAY_PORT=1234
CGN_PUBLIC=198.51.100.2
ATK_NET=198.18.0.0/21 ATK_BASE=198.18.0.1 ATK_SOURCES=2000   # the attacker's spoofed sources (2047 usable)
WG_PORT=51820 WG_SRV_IF=w${RUN_ID}srv WG_SRV_ADDR=10.99.0.1
KEY="e2e-secret-$RUN_ID"
CGN_UDP_TIMEOUT=10              # baseline CG-NAT UDP conntrack timeout (s), > every keepalive used
KA=2 CONN_TIMEOUT=20            # agents' default --keepaliveInterval / --connectionTimeout
RELAY_ARGS=() INSIDE_ARGS=()    # extra options of a scenario (e.g. --wireguard KEY, -n 8)
HOMES_FILE=""                   # set: the relay runs with --homes HOMES_FILE instead of -k

TMPD=$(mktemp -d /tmp/rut-e2e.XXXXXX)
SD=$TMPD                        # per-scenario log directory, set by run.sh
declare -A PID_OF=()            # name -> pid of every background process we started
WARNINGS=()

# ---- small utilities ---------------------------------------------------------------------------
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
now_us() { echo "${EPOCHREALTIME/./}"; }
s_to_us() { awk -v s="$1" 'BEGIN { printf "%.0f", s * 1000000 }'; }
fmt_s() { printf '%d.%03d' $(($1 / 1000000)) $((($1 % 1000000) / 1000)); }
log() { printf '%s %s\n' "$(date +%H:%M:%S.%3N)" "$*" >&2; }

# wait_until SECONDS CMD...: run CMD every 0.1 s until it succeeds (0) or SECONDS have passed (1).
wait_until() {
  local end=$(($(now_us) + $(s_to_us "$1"))); shift
  until "$@" >/dev/null 2>&1; do
    (($(now_us) < end)) || return 1
    sleep 0.1
  done
}

# ---- background processes ----------------------------------------------------------------------
# bg_start NAME LOGFILE NS CMD...: start CMD in namespace NS, stdout+stderr appended to LOGFILE.
bg_start() {
  local name=$1 logf=$2 ns=$3; shift 3
  ip netns exec "$ns" "$@" >>"$logf" 2>&1 &
  PID_OF[$name]=$!
}
alive() { [[ -n ${PID_OF[$1]:-} ]] && kill -0 "${PID_OF[$1]}" 2>/dev/null; }

# bg_stop NAME [SIGNAL]: stop a process (SIGTERM by default), SIGKILL after 3 s; sets STOP_RC, STOP_MS.
bg_stop() {
  local name=$1 sig=${2:-TERM} pid=${PID_OF[$1]:-} t0 i
  STOP_RC=0 STOP_MS=0
  [[ -n $pid ]] || return 0
  t0=$(now_us)
  [[ $sig == KILL ]] && disown "$pid"   # no "Killed" job notice on stderr; the status is not needed
  kill -s "$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < 30; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || STOP_RC=$?
  STOP_MS=$((($(now_us) - t0) / 1000))
  unset "PID_OF[$name]"
}

# ---- topology ----------------------------------------------------------------------------------
# veth NS_A IF_A NS_B IF_B: a cable between two namespaces (never touches the host namespace).
veth() {
  ip -n "$1" link add "$2" type veth peer name "$4" netns "$3"
  ip -n "$1" link set "$2" up
  ip -n "$3" link set "$4" up
}
addr() { ip -n "$1" addr add "$3" dev "$2" nodad 2>/dev/null || ip -n "$1" addr add "$3" dev "$2"; }
v4only() { nsx "$1" sysctl -qw "net.ipv6.conf.$2.disable_ipv6=1"; }

cgn_timeout() {                 # cgn_timeout SECONDS: UDP conntrack timeouts in the CG-NAT namespace
  nsx "$NS_CGN" sysctl -qw net.netfilter.nf_conntrack_udp_timeout="$1" \
    net.netfilter.nf_conntrack_udp_timeout_stream="$1"
}

topo_up() {
  local ns c
  for ns in "${ALL_NS[@]}"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
  # home host --- home router (NAT) --- CG-NAT --- internet router --- relay / clients
  veth "$NS_HOME" eth0 "$NS_HNAT" lan0
  veth "$NS_HNAT" wan0 "$NS_CGN" in0
  veth "$NS_CGN" out0 "$NS_NET" cgn0
  veth "$NS_NET" rly0 "$NS_RELAY" eth0
  for ns in "$NS_HOME" "$NS_HNAT" "$NS_CGN"; do nsx "$ns" sysctl -qw net.ipv4.ip_forward=1; done
  v4only "$NS_HOME" eth0; v4only "$NS_HNAT" lan0; v4only "$NS_HNAT" wan0
  v4only "$NS_CGN" in0; v4only "$NS_CGN" out0; v4only "$NS_NET" cgn0

  addr "$NS_HOME" eth0 10.0.1.2/24
  ip -n "$NS_HOME" route add default via 10.0.1.1
  addr "$NS_HNAT" lan0 10.0.1.1/24
  addr "$NS_HNAT" wan0 100.64.0.2/24
  ip -n "$NS_HNAT" route add default via 100.64.0.1
  nsx "$NS_HNAT" iptables -t nat -A POSTROUTING -o wan0 -j MASQUERADE
  addr "$NS_CGN" in0 100.64.0.1/24
  addr "$NS_CGN" out0 "$CGN_PUBLIC/24"
  ip -n "$NS_CGN" route add default via 198.51.100.1
  nsx "$NS_CGN" iptables -t nat -A POSTROUTING -o out0 -j MASQUERADE --random-fully
  cgn_timeout "$CGN_UDP_TIMEOUT"

  # The internet router: no default route and no route to 100.64.0.0/10 or 10.0.0.0/8.
  nsx "$NS_NET" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
  addr "$NS_NET" cgn0 198.51.100.1/24
  addr "$NS_NET" rly0 203.0.113.1/24
  addr "$NS_NET" rly0 2001:db8:1::1/64
  # A fixed MAC: a bridge without one takes its lowest port's, so home2_up's new ports could change it, and a
  # client whose ARP entry still names another port's MAC is then dropped as "other host" (PACKET_OTHERHOST)
  # until that entry expires (15-45 s): c1 lost the relay that way in about one full run in four.
  ip -n "$NS_NET" link add br0 address "$BR0_MAC" type bridge
  ip -n "$NS_NET" link set br0 up
  addr "$NS_NET" br0 192.0.2.1/24
  addr "$NS_NET" br0 2001:db8:2::1/64
  addr "$NS_RELAY" eth0 "$RELAY_V4/24"
  addr "$NS_RELAY" eth0 "$RELAY_V6/64"
  ip -n "$NS_RELAY" route add default via 203.0.113.1
  ip -n "$NS_RELAY" -6 route add default via 2001:db8:1::1

  # The attacker: its own cable to the internet router, which routes the spoofed sources' network to it (so
  # answers to them reach the attacker's namespace, which does not forward them and has no such addresses:
  # they are dropped there, as for a spoofed source that never answers).
  veth "$NS_NET" atk0 "$NS_ATK" eth0
  v4only "$NS_NET" atk0; v4only "$NS_ATK" eth0
  addr "$NS_NET" atk0 198.19.0.1/24
  addr "$NS_ATK" eth0 198.19.0.2/24
  ip -n "$NS_ATK" route add default via 198.19.0.1
  ip -n "$NS_NET" route add "$ATK_NET" via 198.19.0.2

  for c in "${CLIENTS[@]}"; do
    ns=$P-c$c
    veth "$ns" eth0 "$NS_NET" "c$c"
    ip -n "$NS_NET" link set "c$c" master br0
    if [[ $c == 6 ]]; then        # IPv6 only
      addr "$ns" eth0 "2001:db8:2::1$c/64"
      ip -n "$ns" -6 route add default via 2001:db8:2::1
    else
      v4only "$ns" eth0
      addr "$ns" eth0 "192.0.2.1$c/24"
      ip -n "$ns" route add default via 192.0.2.1
    fi
  done

  # The inside agent reaches the relay by name: ip netns exec bind-mounts /etc/netns/NS/hosts.
  mkdir -p "/etc/netns/$NS_HOME"
  printf '127.0.0.1 localhost\n::1 localhost ip6-localhost\n%s %s\n' "$RELAY_V4" "$RELAY_NAME" \
    >"/etc/netns/$NS_HOME/hosts"

  mkdir -p "$TMPD/keys"
  for c in srv "${CLIENTS[@]}" hd cd; do
    (umask 077 && wg genkey >"$TMPD/keys/$c.key")
    wg pubkey <"$TMPD/keys/$c.key" >"$TMPD/keys/$c.pub"
  done
}

# The second home, behind the same CG-NAT: home2 (10.0.2.2) --- hnat2 (NAT) --- cgnat in1 (100.64.1.1); clients c4,
# c5 on the internet router's bridge. Built once, on first use, by the scenarios that need it (the others do
# not pay for it); torn down with the rest by topo_down.
home2_up() {
  local ns c
  [[ -n $HOME2_UP ]] && return 0
  for ns in "${HOME2_NS[@]}"; do ip netns add "$ns" && ip -n "$ns" link set lo up || return 1; done
  veth "$NS_HOME2" eth0 "$NS_HNAT2" lan0
  veth "$NS_HNAT2" wan0 "$NS_CGN" in1
  nsx "$NS_HNAT2" sysctl -qw net.ipv4.ip_forward=1
  v4only "$NS_HOME2" eth0; v4only "$NS_HNAT2" lan0; v4only "$NS_HNAT2" wan0; v4only "$NS_CGN" in1
  addr "$NS_HOME2" eth0 10.0.2.2/24
  ip -n "$NS_HOME2" route add default via 10.0.2.1
  addr "$NS_HNAT2" lan0 10.0.2.1/24
  addr "$NS_HNAT2" wan0 100.64.1.2/24
  ip -n "$NS_HNAT2" route add default via 100.64.1.1
  nsx "$NS_HNAT2" iptables -t nat -A POSTROUTING -o wan0 -j MASQUERADE
  addr "$NS_CGN" in1 100.64.1.1/24          # the CG-NAT's MASQUERADE out of out0 covers this subscriber too
  for c in 4 5; do
    ns=$P-c$c
    veth "$ns" eth0 "$NS_NET" "c$c"
    ip -n "$NS_NET" link set "c$c" master br0
    v4only "$ns" eth0
    addr "$ns" eth0 "192.0.2.1$c/24"
    ip -n "$ns" route add default via 192.0.2.1
  done
  # the clients of home a keep their ARP entries for 192.0.2.1 (see topo_up)
  ip -n "$NS_NET" -o link show br0 | grep -qF " $BR0_MAC " || { log "br0's MAC changed as ports were added"; return 1; }
  mkdir -p "/etc/netns/$NS_HOME2"
  cp "/etc/netns/$NS_HOME/hosts" "/etc/netns/$NS_HOME2/hosts"
  for c in srvb srvc 4 5; do
    (umask 077 && wg genkey >"$TMPD/keys/$c.key")
    wg pubkey <"$TMPD/keys/$c.key" >"$TMPD/keys/$c.pub"
  done
  wait_until 5 ping_ok "$NS_HOME2" "$RELAY_V4" 1 || { log "home2 cannot ping the relay through both NATs"; return 1; }
  HOME2_UP=1
}

topo_down() {
  local ns pid
  for ns in "${ALL_NS[@]}" "${HOME2_NS[@]}"; do
    [[ -e /var/run/netns/$ns ]] || continue
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  done
  for ns in "${ALL_NS[@]}" "${HOME2_NS[@]}"; do
    if [[ -e /var/run/netns/$ns ]]; then ip netns del "$ns" 2>/dev/null || true; fi
  done
  rm -rf "/etc/netns/$NS_HOME" "/etc/netns/$NS_HOME2"
  rm -f /var/run/wireguard/w"${RUN_ID}"*.sock
}

# ---- WireGuard (wireguard-go) ------------------------------------------------------------------
uapi_listening() { nsx "$1" ss -Hxl | grep -qF "/var/run/wireguard/$2.sock"; }
# wg_iface NS IF CIDR KEYNAME [LISTEN_PORT]: start wireguard-go and give it a key and an address.
wg_iface() {
  local ns=$1 ifc=$2 cidr=$3 keyf=$TMPD/keys/$4.key port=${5:-}
  bg_start "wg-$ifc" "$SD/wg-$ifc.log" "$ns" \
    env WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wireguard-go -f "$ifc"
  # Wait until the control socket listens before `wg` connects to it: `wg` unlinks a socket that refuses its
  # connection (stale, to its mind), and a socket between wireguard-go's bind() and listen() does refuse.
  wait_until 5 uapi_listening "$ns" "$ifc" || { log "wireguard-go $ifc did not start"; return 1; }
  nsx "$ns" wg show "$ifc" >/dev/null || { log "wireguard-go $ifc does not answer"; return 1; }
  nsx "$ns" wg set "$ifc" private-key "$keyf" ${port:+listen-port "$port"} || return 1
  addr "$ns" "$ifc" "$cidr" || return 1
  ip -n "$ns" link set "$ifc" mtu 1420 up
}

wg_server_up() {                # the home WireGuard server, listening on port 51820, all clients as peers
  local c
  wg_iface "$NS_HOME" "$WG_SRV_IF" "$WG_SRV_ADDR/24" srv "$WG_PORT" || return 1
  for c in "${CLIENTS[@]}"; do
    nsx "$NS_HOME" wg set "$WG_SRV_IF" peer "$(cat "$TMPD/keys/$c.pub")" allowed-ips "10.99.0.1$c/32" || return 1
  done
}
wg_server_down() { bg_stop "wg-$WG_SRV_IF"; }

# wg_client_up N [PERSISTENT_KEEPALIVE]: client cN, Endpoint = the relay (IPv6 for c6).
wg_client_up() {
  local c=$1 ka=${2:-2} ep="$RELAY_V4:$RELAY_PORT" ns=$P-c$1 ifc=w${RUN_ID}c$1
  [[ $c == 6 ]] && ep="[$RELAY_V6]:$RELAY_PORT"
  wg_iface "$ns" "$ifc" "10.99.0.1$c/24" "$c" || return 1
  nsx "$ns" wg set "$ifc" peer "$(cat "$TMPD/keys/srv.pub")" endpoint "$ep" \
    allowed-ips 10.99.0.0/24 persistent-keepalive "$ka"
}
wg_client_down() { bg_stop "wg-w${RUN_ID}c$1"; }

# wg_home_server NS IF ADDR KEYNAME PORT N...: a home's WireGuard server ADDR/24 on PORT, clients cN as peers
# (each at ADDR's /24, .1N). home A's is wg_server_up's; B's and C's (homes_*) live in home2.
wg_home_server() {
  local ns=$1 ifc=$2 a=$3 k=$4 port=$5 c
  shift 5
  wg_iface "$ns" "$ifc" "$a/24" "$k" "$port" || return 1
  for c; do
    nsx "$ns" wg set "$ifc" peer "$(cat "$TMPD/keys/$c.pub")" allowed-ips "${a%.*}.1$c/32" || return 1
  done
}
# wg_home_client N SRVKEYNAME SRV_ADDR [PERSISTENT_KEEPALIVE]: client cN of the server SRV_ADDR, Endpoint the relay.
wg_home_client() {
  local c=$1 ns=$P-c$1 ifc=w${RUN_ID}c$1 net=${3%.*}
  wg_iface "$ns" "$ifc" "$net.1$c/24" "$c" || return 1
  nsx "$ns" wg set "$ifc" peer "$(cat "$TMPD/keys/$2.pub")" endpoint "$RELAY_V4:$RELAY_PORT" \
    allowed-ips "$net.0/24" persistent-keepalive "${4:-2}"
}
# wg_endpoint NS IF N: the endpoint the WireGuard interface IF has for client cN.
wg_endpoint() {
  nsx "$1" wg show "$2" endpoints | awk -v k="$(cat "$TMPD/keys/$3.pub")" '$1 == k { print $2 }'
}

# srv_endpoint N: the endpoint the WireGuard server currently has for client cN ("(none)" if none).
srv_endpoint() {
  nsx "$NS_HOME" wg show "$WG_SRV_IF" endpoints | awk -v k="$(cat "$TMPD/keys/$1.pub")" '$1 == k { print $2 }'
}

# client_diag N DST: what a client that cannot reach DST looks like, into $SD/diag-cN.log: its addresses, routes,
# neighbours, sockets and WireGuard state, the internet router's and the relay's view, and (if tcpdump is there)
# 6 s of packets on the client's and the relay's cables while it pings once more.
client_diag() {
  local ns=$P-c$1 f=$SD/diag-c$1.log t filter="host 192.0.2.1$1 or arp"
  [[ $1 == 6 ]] && filter="host 2001:db8:2::16 or icmp6"   # only the client's packets (not floods, keepalives)
  {
    echo "== $ns"; ip -n "$ns" addr; ip -n "$ns" route; ip -n "$ns" neigh; nsx "$ns" ss -uanp
    nsx "$ns" wg show all
    echo "== $NS_NET"; ip -n "$NS_NET" neigh; ip -n "$NS_NET" link show br0; bridge -n "$NS_NET" fdb show br br0
    echo "== $NS_RELAY"; ip -n "$NS_RELAY" neigh; nsx "$NS_RELAY" ss -uanp
  } >"$f" 2>&1
  command -v tcpdump >/dev/null || return 0
  for t in "$ns" "$NS_RELAY"; do
    bg_start "diag-$t" "$f.$t" "$t" timeout 6 tcpdump -n -e -l -i eth0 -c 60 "$filter"
  done
  sleep 0.3
  ping_ok "$ns" "$2" 5 || true
  for t in "$ns" "$NS_RELAY"; do
    wait_until 7 eval "! alive diag-$t" || true
    bg_stop "diag-$t"
    { echo "== tcpdump in $t"; cat "$f.$t"; } >>"$f"
    rm -f "$f.$t"
  done
}

# ---- the agents under test ---------------------------------------------------------------------
relay_start() {                 # outside relay, dual stack on port 1234 (-k, or --homes HOMES_FILE)
  local auth=(-k "$KEY")
  [[ -n $HOMES_FILE ]] && auth=(--homes "$HOMES_FILE")
  bg_start relay "$SD/relay.log" "$NS_RELAY" "$BIN" -l "$RELAY_PORT" "${auth[@]}" \
    --keepaliveInterval "$KA" --logLevel 3 "${RELAY_ARGS[@]}"
  wait_until 5 relay_listening || { log "relay is not listening on UDP $RELAY_PORT"; return 1; }
}
relay_listening() { alive relay && [[ -n $(nsx "$NS_RELAY" ss -Hlun "sport = :$RELAY_PORT") ]]; }

inside_start() { inside_agent inside "$NS_HOME" "$WG_PORT" -k "$KEY"; }   # inside agent on the home host
# inside_agent NAME NS SERVICE_PORT KEY_OPTIONS...: an inside agent (log NAME.log) for localhost:SERVICE_PORT.
inside_agent() {
  local name=$1 ns=$2 port=$3
  shift 3
  bg_start "$name" "$SD/$name.log" "$ns" "$BIN" -s "localhost:$port" -o "$RELAY_NAME:$RELAY_PORT" \
    "$@" --keepaliveInterval "$KA" --connectionTimeout "$CONN_TIMEOUT" --logLevel 3 "${INSIDE_ARGS[@]}"
  sleep 0.1
  alive "$name" || { log "inside agent $name exited at once"; return 1; }
}

# agent_stop NAME: SIGTERM; the contract says exit 0 within 1 s. Deviations become warnings.
agent_stop() {
  [[ -n ${PID_OF[$1]:-} ]] || return 0
  if ! alive "$1"; then
    bg_stop "$1"
    WARNINGS+=("$SCEN: $1 agent had exited by itself (status $STOP_RC)")
    return 0
  fi
  bg_stop "$1"
  if ((STOP_RC != 0 || STOP_MS > 1000)); then
    WARNINGS+=("$SCEN: $1 agent: exit status $STOP_RC ${STOP_MS} ms after SIGTERM (expected 0 within 1000 ms)")
  fi
}

# ---- probes ------------------------------------------------------------------------------------
ping_ok() { nsx "$1" ping -n -q -c 1 -W "${3:-1}" "$2" >/dev/null 2>&1; }

# probe_start NAME NS DST: continuous ping every 0.1 s, replies timestamped (ping -D) in a file.
probe_start() { bg_start "probe-$1" "$SD/probe-$1.txt" "$2" ping -D -n -i 0.1 -W 1 "$3"; }
probe_stop() { bg_stop "probe-$1"; }
# probe_first_after NAME T_US: µs timestamp of the first reply received after T_US (empty if none yet).
probe_first_after() {
  awk -v t="$2" '/bytes from/ && substr($1, 1, 1) == "[" {
      ts = substr($1, 2, length($1) - 2); sub(/\./, "", ts)
      if (ts + 0 > t + 0) { print ts; exit } }' "$SD/probe-$1.txt"
}
probe_replies_after() {
  awk -v t="$2" '/bytes from/ && substr($1, 1, 1) == "[" {
      ts = substr($1, 2, length($1) - 2); sub(/\./, "", ts); if (ts + 0 > t + 0) n++ }
      END { print n + 0 }' "$SD/probe-$1.txt"
}
has_reply_after() { [[ -n $(probe_first_after "$1" "$2") ]]; }

# first_ping_ms NS DST TIMEOUT: one ping; its round trip in ms (empty if unanswered). From an idle WireGuard
# client (no PersistentKeepalive, no session yet) the round trip includes the whole handshake: the client holds
# the ping until the handshake completes.
first_ping_ms() {
  nsx "$1" ping -n -c 1 -W "$3" "$2" 2>/dev/null | awk -F'time=' '/bytes from/ { split($2, a, " "); print a[1] }'
}

# ---- the relay's status line (relay started with --statusInterval 1) ----------------------------
status_lines() { grep -c 'status: tunnels' "$SD/relay.log" 2>/dev/null || true; }
# relay_stat FIELD: FIELD's value in the last status line (e.g. active, spare, notinit, cookies).
relay_stat() {
  grep 'status: tunnels' "$SD/relay.log" 2>/dev/null | tail -n 1 |
    awk -v f="$1" '{ for (i = 1; i <= NF; i++) if (index($i, f "=") == 1) print substr($i, length(f) + 2) }'
}
stat_at_least() { local v; v=$(relay_stat "$1"); [[ -n $v ]] && ((v >= $2)); }
# status_after N: a status line written after the first N (so it describes a moment after the caller's).
status_after() { (($(status_lines) > $1)); }
# With --homes: home_stat HOME FIELD, FIELD's value in home HOME's last status line ("home HOME: status: tunnels
# ..."); HOME "-": the relay-wide line ("status: homes=N notinit=.. badmac1=.. badauth=..").
home_status_grep() {
  if [[ $1 == - ]]; then grep -F ' status: homes=' "$SD/relay.log" 2>/dev/null
  else grep -F "home $1: status: tunnels" "$SD/relay.log" 2>/dev/null; fi
}
home_stat() {
  home_status_grep "$1" | tail -n 1 |
    awk -v f="$2" '{ for (i = 1; i <= NF; i++) if (index($i, f "=") == 1) print substr($i, length(f) + 2) }'
}
home_stat_at_least() { local v; v=$(home_stat "$1" "$2"); [[ -n $v ]] && ((v >= $3)); }
home_status_lines() { home_status_grep "$1" | wc -l; }
home_status_after() { (($(home_status_lines "$1") > $2)); }
# home_stats HOME FIELD...: "FIELD=value ..." of home HOME's last status line, for messages.
home_stats() {
  local h=$1 f out=()
  shift
  for f; do out+=("$f=$(home_stat "$h" "$f")"); done
  echo "${out[*]}"
}

# ---- the attacker (tests/e2e/wgflood.py in the attacker's namespace) ------------------------------
WGFLOOD=$(realpath "$(dirname "${BASH_SOURCE[0]}")")/wgflood.py
# flood_start NAME KIND RATE SECONDS ARG: ATK_SOURCES spoofed sources, each RATE datagrams/s, to the relay.
flood_start() {
  bg_start "$1" "$SD/$1.log" "$NS_ATK" python3 "$WGFLOOD" flood "$2" "$RELAY_V4" "$RELAY_PORT" \
    "$ATK_BASE" "$ATK_SOURCES" "$3" "$4" "$5"
}
# capture_start FILE: the first handshake initiation the relay receives, as hex, into FILE (at most 30 s).
capture_start() {
  bg_start capture "$SD/capture.log" "$NS_RELAY" python3 "$WGFLOOD" capture eth0 "$RELAY_PORT" "$1" 30
  wait_until 5 grep -q capturing "$SD/capture.log"
}

# probe_window NAME T0_US T1_US: "answered/sent" of probe NAME between two times (sent: the span of icmp_seq).
probe_window() {
  awk -v a="$2" -v b="$3" '/bytes from/ && substr($1, 1, 1) == "[" {
      ts = substr($1, 2, length($1) - 2); sub(/\./, "", ts)
      if (ts + 0 <= a + 0 || ts + 0 > b + 0) next
      for (i = 1; i <= NF; i++) if ($i ~ /^icmp_seq=/) s = substr($i, 10) + 0
      if (n++ == 0) lo = s; hi = s }
      END { printf "%d/%d", n, n ? hi - lo + 1 : 0 }' "$SD/probe-$1.txt"
}
