#!/usr/bin/env bash
# Packaging checks: man page, make install/uninstall, systemd units, the OpenWrt init script's
# UCI-to-command-line translation, and the static binaries of five architectures (each run under
# qemu-user as relay and as inside agent around a UDP echo service on loopback, and paired with x86_64).
# Usage: bash tests/packaging.sh        (from anywhere; builds what it needs)
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=reverse-udp-tunnel
# cargo's output directory as the Makefile sees it (CARGO_TARGET_DIR if set), relative to here: later
# checks put $PWD/ in front of $RELEASE.
TARGET_DIR=$(realpath -m --relative-to=. "${CARGO_TARGET_DIR:-target}")
RELEASE=$TARGET_DIR/release/$BIN
# Size budgets of the stripped static binaries, KiB (issue 10); MIPS32 code is about 1.5 times as large.
declare -A BUDGET_KIB=([x86_64]=400 [aarch64]=400 [armv7]=400 [mipsel]=560 [mips]=560)

tmp=$(mktemp -d)
pids=()
cleanup() {
	local pid
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$tmp"
}
trap cleanup EXIT

passed=0
failed=0
ok() {
	echo "ok - $*"
	passed=$((passed + 1))
}
die() {
	echo "FAIL - $*" >&2
	echo "packaging: $passed passed, $((failed + 1)) failed"
	exit 1
}
fail() { # a failure that does not stop the remaining checks
	echo "FAIL - $*" >&2
	failed=$((failed + 1))
}
quiet() { # runs a command, showing its output only if it fails
	"$@" >"$tmp/cmd.log" 2>&1 || die "$* failed:
$(tail -n 30 "$tmp/cmd.log")"
}

# ---------------------------------------------------------------- build
quiet make -s build
"$RELEASE" --help >"$tmp/help" 2>&1 || die "$RELEASE --help exited $?"
# Option tokens of --help: -x and --long words that start a word.
{ grep -oE -- '(^|[[:space:],[(])--?[A-Za-z][A-Za-z0-9]*' "$tmp/help" || true; } | sed -E 's/^[^-]+//' |
	sort -u >"$tmp/help-options"
[ -s "$tmp/help-options" ] || die "--help shows no options (is the core built?)"

# ---------------------------------------------------------------- man page
man_page=man/$BIN.8
lint=$(mandoc -T lint -W style "$man_page" 2>&1) || die "mandoc -T lint: $lint"
[ -z "$lint" ] || die "mandoc -T lint: $lint"
ok "mandoc -T lint is clean"

# Rendered text (no overstrike), one word per line, to look options up as whole words.
mandoc -T ascii "$man_page" | sed 's/.\x08//g' >"$tmp/man.txt"
has_word() { grep -qE -- "(^|[^[:alnum:]-])$1([^[:alnum:]-]|$)" "$2"; }
contract="-s -o -l -n -k --keyFile --spares --keepaliveInterval --connectionTimeout
	--statusInterval --logLevel -h --help -V --version"
for opt in $contract $(cat "$tmp/help-options"); do
	has_word "$opt" "$tmp/man.txt" || die "option $opt (contract or --help) is missing from $man_page"
done
ok "man page names every option of the contract and of --help ($(wc -l <"$tmp/help-options") tokens)"
for section in NAME SYNOPSIS DESCRIPTION OPTIONS SECURITY EXAMPLES ENVIRONMENT FILES 'EXIT STATUS' \
	SIGNALS 'STATUS LINE' 'SEE ALSO'; do
	grep -qE "^ *$section\$" "$tmp/man.txt" || die "man page has no section $section"
done
ok "man page has all sections"

# ---------------------------------------------------------------- make install / uninstall
root=$tmp/root
quiet make -s install DESTDIR="$root" PREFIX=/usr
[ -x "$root/usr/bin/$BIN" ] || die "make install did not install an executable $root/usr/bin/$BIN"
[ "$(stat -c %a "$root/usr/share/man/man8/$BIN.8")" = 644 ] || die "man page not installed mode 0644"
"$root/usr/bin/$BIN" --version >/dev/null || die "installed binary: --version failed"
MANPATH=$root/usr/share/man MANWIDTH=80 man "$BIN" 2>/dev/null | grep -q '^SYNOPSIS' ||
	die "man $BIN does not find the installed page"
ok "make install: binary and man page; man $BIN works"

# ---------------------------------------------------------------- systemd units
unit_dir=init/systemd
for role in inside outside; do
	unit=$unit_dir/$BIN-$role@.service
	for line in DynamicUser=yes NoNewPrivileges=yes ProtectSystem=strict CapabilityBoundingSet= \
		'RestrictAddressFamilies=AF_INET AF_INET6' Restart=on-failure \
		'EnvironmentFile=/etc/reverse-udp-tunnel/%i.conf'; do
		grep -qxF "$line" "$unit" || die "$unit lacks the line $line"
	done
	# Every variable ExecStart uses is set in the example configuration, and its options exist.
	conf=$unit_dir/$role.conf.example
	mapfile -t vars < <(grep '^ExecStart=' "$unit" | grep -oE '\$\{?[A-Z_]+' | grep -oE '[A-Z_]+')
	for var in "${vars[@]}"; do
		grep -q "^$var=" "$conf" || die "$conf does not set $var used by $unit"
	done
	grep -q '^REVERSE_UDP_TUNNEL_KEY=' "$conf" || die "$conf does not set the key"
	for opt in $(grep '^OPTIONS=' "$conf" | grep -oE -- '(^|[ =])--?[A-Za-z]+' | tr -d ' ='); do
		grep -qxF -- "$opt" "$tmp/help-options" || die "$conf uses $opt, which --help does not show"
	done
	if command -v systemd-analyze >/dev/null; then
		# verify checks that ExecStart is executable and that the Documentation= man page exists.
		# (The page is the one make install put into $root above.)
		mkdir -p "$tmp/units"
		sed "s#/usr/local/bin/$BIN#$PWD/$RELEASE#" "$unit" >"$tmp/units/$BIN-$role@.service"
		out=$(MANPATH=$root/usr/share/man systemd-analyze verify "$tmp/units/$BIN-$role@.service" 2>&1) ||
			die "systemd-analyze verify $unit: $out"
		[ -z "$out" ] || die "systemd-analyze verify $unit: $out"
		ok "$unit: hardening lines present, systemd-analyze verify clean"
	else
		ok "$unit: hardening lines present (systemd-analyze not installed: verify skipped)"
	fi
done

quiet make -s uninstall DESTDIR="$root" PREFIX=/usr
left=$(find "$root" -type f)
[ -z "$left" ] || die "make uninstall left: $left"
ok "make uninstall removes binary and man page"

# ---------------------------------------------------------------- OpenWrt procd init script
initscript=init/openwrt/$BIN
uci_sample=init/openwrt/$BIN.config
head -n1 "$initscript" | grep -qxF '#!/bin/sh /etc/rc.common' || die "$initscript: wrong shebang"
grep -qxF 'USE_PROCD=1' "$initscript" || die "$initscript: no USE_PROCD=1"
if command -v shellcheck >/dev/null; then
	shellcheck "$initscript" tests/packaging.sh || die "shellcheck"
	ok "shellcheck $initscript tests/packaging.sh"
fi

# Stubs of OpenWrt's /lib/functions.sh (UCI) and procd.sh, enough to run start_service():
# config_load parses $UCI_FILE into "S name type" / "O section option value" lines;
# procd_* print what the instance would be: "<instance> <param> <values>", the command last.
cat >"$tmp/stubs.sh" <<'EOF'
config_load() {
	awk '
		function unquote(s) {
			if (s ~ /^'\''/) { sub(/^'\''/, "", s); sub(/'\''.*$/, "", s); return s }
			if (s ~ /^"/) { sub(/^"/, "", s); sub(/".*$/, "", s); return s }
			sub(/[ \t].*$/, "", s); return s
		}
		{ sub(/^[ \t]+/, "") }
		/^config[ \t]/ {
			n++; sec = $3 == "" ? "cfg" n : unquote($3)
			printf "S\t%s\t%s\n", sec, unquote($2)
		}
		/^option[ \t]/ {
			v = $0; sub(/^option[ \t]+[^ \t]+[ \t]+/, "", v)
			printf "O\t%s\t%s\t%s\n", sec, $2, unquote(v)
		}' "$UCI_FILE" >"$UCI_DB"
}
config_get() {
	_v=$(awk -F '\t' -v s="$2" -v o="$3" '$1 == "O" && $2 == s && $3 == o { v = $4 } END { print v }' "$UCI_DB")
	[ -n "$_v" ] || _v="${4-}"
	eval "$1=\$_v"
}
config_get_bool() {
	config_get _b "$2" "$3" "${4-}"
	case "$_b" in
	1 | on | true | yes | enabled) _b=1 ;;
	0 | off | false | no | disabled) _b=0 ;;
	*) _b="${4-}" ;;
	esac
	eval "$1=\$_b"
}
config_foreach() {
	_fn=$1 _type=$2
	shift 2
	for _s in $(awk -F '\t' -v t="$_type" '$1 == "S" && $3 == t { print $2 }' "$UCI_DB"); do
		"$_fn" "$_s" "$@"
	done
}
procd_open_instance() { _inst=$1 _cmd=; }
procd_set_param() {
	_t=$1
	shift
	if [ "$_t" = command ]; then _cmd="$*"; else echo "$_inst $_t $*"; fi
}
procd_append_param() {
	_t=$1
	shift
	if [ "$_t" = command ]; then _cmd="$_cmd $*"; else echo "$_inst +$_t $*"; fi
}
procd_close_instance() { echo "$_inst command $_cmd"; }
procd_add_reload_trigger() { echo "reload_trigger $*"; }
EOF

# Runs the init script's start_service and service_triggers against UCI file $1 with /bin/sh.
uci_translate() {
	UCI_FILE=$1 UCI_DB=$tmp/uci.db sh -c '. "$1"; . "$2"; start_service; service_triggers' \
		sh "$tmp/stubs.sh" "$initscript"
}
expect() { # name, expected text on stdin, actual in $tmp/actual
	diff -u - "$tmp/actual" >"$tmp/diff" || die "$1: init script output differs:
$(cat "$tmp/diff")"
}

uci_translate "$uci_sample" >"$tmp/actual"
expect "sample config" <<'EOF'
home respawn 3600 5 5
home stdout 1
home stderr 1
home file /etc/reverse-udp-tunnel/home.key
home command /usr/bin/reverse-udp-tunnel -s 127.0.0.1:51820 -o relay.example.com:1234 --keyFile /etc/reverse-udp-tunnel/home.key -n 20 --spares 4 --keepaliveInterval 20 --connectionTimeout 120 --statusInterval 600 --logLevel 2
reload_trigger reverse-udp-tunnel
EOF
ok "sample UCI config: the one enabled section, exact command line"

sed "s/option enabled '0'/option enabled '1'/" "$uci_sample" >"$tmp/all-enabled"
uci_translate "$tmp/all-enabled" >"$tmp/all-enabled.out"
grep ' command ' "$tmp/all-enabled.out" >"$tmp/actual"
expect "sample config, all enabled" <<'EOF'
home command /usr/bin/reverse-udp-tunnel -s 127.0.0.1:51820 -o relay.example.com:1234 --keyFile /etc/reverse-udp-tunnel/home.key -n 20 --spares 4 --keepaliveInterval 20 --connectionTimeout 120 --statusInterval 600 --logLevel 2
game command /usr/bin/reverse-udp-tunnel -s 192.168.1.20:27015 -o [2001:db8::1]:1235 --keyFile /etc/reverse-udp-tunnel/game.key
relay command /usr/bin/reverse-udp-tunnel -l 1234 --keyFile /etc/reverse-udp-tunnel/relay.key -n 20 --keepaliveInterval 20 --statusInterval 600 --logLevel 1
EOF
ok "sample UCI config with every section enabled: exact command lines"

# Edge cases: enabled defaults to 1; a section missing a required option is skipped with a message;
# inside-only options are not passed to a relay; double-quoted and bare values.
cat >"$tmp/edge" <<'EOF'
config inside 'noenabled'
	option service "[::1]:51820"
	option relay relay6.example.net:1234
config inside 'norelay'
	option service '127.0.0.1:51820'
config outside 'v6'
	option listen '[::]:1234'
	option spares '9'
	option connection_timeout '9'
	option max_tunnels '5'
config outside 'off'
	option enabled 'no'
	option listen '1235'
EOF
uci_translate "$tmp/edge" >"$tmp/edge.out" 2>"$tmp/stderr"
cp "$tmp/edge.out" "$tmp/actual"
expect "edge config" <<'EOF'
noenabled respawn 3600 5 5
noenabled stdout 1
noenabled stderr 1
noenabled command /usr/bin/reverse-udp-tunnel -s [::1]:51820 -o relay6.example.net:1234
v6 respawn 3600 5 5
v6 stdout 1
v6 stderr 1
v6 command /usr/bin/reverse-udp-tunnel -l [::]:1234 -n 5
reload_trigger reverse-udp-tunnel
EOF
grep -q "norelay" "$tmp/stderr" || die "no message for the section without relay: $(cat "$tmp/stderr")"
ok "UCI edge cases: default enabled, missing option skipped with a message, role-specific options"

# Every flag the init script emitted above is one the program knows.
mapfile -t flags < <(cat "$tmp/all-enabled.out" "$tmp/edge.out" | grep ' command ' |
	grep -oE -- ' --?[A-Za-z]+' | tr -d ' ' | sort -u)
for opt in "${flags[@]}"; do
	grep -qxF -- "$opt" "$tmp/help-options" || die "$initscript emits $opt, which --help does not show"
done
ok "every flag the init script emitted (${#flags[@]}) appears in --help"

# ---------------------------------------------------------------- static binaries
# Built by `make static` (cargo-zigbuild, std from rust-src; .ci/run installs what it needs), then each
# run under qemu-user on the baseline CPU of its OpenWrt architecture (x86_64 natively on an x86_64 host).
ARCHES=(x86_64 aarch64 armv7 mipsel mips)
declare -A TRIPLE=([x86_64]=x86_64-unknown-linux-musl [aarch64]=aarch64-unknown-linux-musl
	[armv7]=armv7-unknown-linux-musleabihf [mipsel]=mipsel-unknown-linux-musl [mips]=mips-unknown-linux-musl)
declare -A ELF=([x86_64]='ELF 64-bit LSB executable, x86-64' [aarch64]='ELF 64-bit LSB executable, ARM aarch64'
	[armv7]='ELF 32-bit LSB executable, ARM, EABI5' [mipsel]='ELF 32-bit LSB executable, MIPS, MIPS32 rel2'
	[mips]='ELF 32-bit MSB executable, MIPS, MIPS32 rel2')
declare -A QEMU=([x86_64]=qemu-x86_64 [aarch64]=qemu-aarch64 [armv7]='qemu-arm -cpu cortex-a7'
	[mipsel]='qemu-mipsel -cpu 24Kc' [mips]='qemu-mips -cpu 24Kc')
[ "$(uname -m)" != x86_64 ] || QEMU[x86_64]=
# static_cmd ARCH [FILE]: sets the array cmd to the command line that runs FILE (default: the static binary
# of ARCH) here. An array, not a function, so that $! after "${cmd[@]}" & is the agent's own pid.
static_cmd() {
	local -a emulator
	read -ra emulator <<<"${QEMU[$1]}"
	cmd=("${emulator[@]}" "${2:-$TARGET_DIR/static/$BIN-$1}")
}

quiet make -s static TARGETS="${ARCHES[*]}"
for arch in "${ARCHES[@]}"; do
	f=$TARGET_DIR/static/$BIN-$arch
	desc=$(file -b "$f")
	[[ $desc == "${ELF[$arch]}"* ]] || die "$f is not a ${ELF[$arch]}: $desc"
	[[ $desc == *"statically linked"* ]] || die "$f is not statically linked: $desc"
	[[ $desc == *", stripped"* ]] || die "$f is not stripped: $desc"
	# OpenWrt's mips_24kc and mipsel_24kc are soft-float: no FPU instruction for the kernel to emulate.
	if [[ $arch == mips* ]]; then
		readelf -A "$f" | grep -qE 'FP ABI: *Soft float' ||
			die "$f is not soft-float: $(readelf -A "$f" | grep 'FP ABI')"
	fi
	# The default panic hook (message and location) is linked in; the panic probe below shows it at work.
	grep -qaF 'panicked at' "$f" || die "$f has no panic message text"
	static_cmd "$arch"
	"${cmd[@]}" --version >"$tmp/version" 2>&1 || die "${cmd[*]} --version failed: $(cat "$tmp/version")"
	ok "$f: ${ELF[$arch]}, static, stripped, runs (${cmd[*]} --version)"
	size=$(stat -c %s "$f")
	if ((size <= BUDGET_KIB[$arch] * 1024)); then
		ok "$f: $size bytes ($((size / 1024)) KiB), within the budget of ${BUDGET_KIB[$arch]} KiB"
	else
		fail "$f: $size bytes ($((size / 1024)) KiB), over the budget of ${BUDGET_KIB[$arch]} KiB"
	fi
done

# A panic in a binary built this way (std with optimize_for_size, panic = "abort") still prints its message
# and location: examples/panic_probe.rs, for the big-endian MIPS.
quiet make -s panic-probe-mips
static_cmd mips "$TARGET_DIR/${TRIPLE[mips]}/release/examples/panic_probe"
rc=0 # (through sh, whose report of the abort goes to the log instead of this script's output)
sh -c '"$@"; exit $?' sh "${cmd[@]}" 2>"$tmp/panic.log" || rc=$?
[ "$rc" != 0 ] || die "the panic probe exited 0"
if ! grep -qE "panicked at examples/panic_probe\.rs:[0-9]+:[0-9]+:" "$tmp/panic.log" ||
	! grep -qF "panic probe: deliberate" "$tmp/panic.log"; then
	die "the panic probe did not print its message and location: $(cat "$tmp/panic.log")"
fi
ok "a panic in a static binary prints its message and location (mips, exit status $rc)"

# UDP echo service on 127.0.0.1 for all the tunnels below; bounded in time, stopped by cleanup.
python3 -u -c '
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
s.settimeout(1)
deadline = time.monotonic() + 1800
while time.monotonic() < deadline:
    try:
        data, peer = s.recvfrom(65535)
    except socket.timeout:
        continue
    s.sendto(data, peer)
' >"$tmp/echo.port" &
pids+=($!)
for _ in $(seq 100); do [ -s "$tmp/echo.port" ] && break; sleep 0.1; done
echo_port=$(cat "$tmp/echo.port")
[ -n "$echo_port" ] || die "UDP echo service did not start"

# One client socket, resending until the echo comes back (spares register asynchronously): <= 30 s each.
cat >"$tmp/client.py" <<'EOF'
import os, socket, sys, time
port = int(sys.argv[1])
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(0.25)
for payload in (b"hello through the tunnel", os.urandom(1400), bytes(range(256))):
    deadline = time.monotonic() + 30
    while True:
        if time.monotonic() > deadline:
            sys.exit("no echo for a %d-byte datagram" % len(payload))
        c.sendto(payload, ("127.0.0.1", port))
        try:
            data, _ = c.recvfrom(65535)
        except socket.timeout:
            continue
        if data == payload:
            break
EOF
free_udp_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_relay ARCH LOG: starts a relay on a free loopback port; sets relay_pid and relay_port once it holds
# the port. The port is free when chosen but could be taken before the relay binds it: then the relay exits
# and another port is tried (3 at most).
start_relay() {
	local attempt
	static_cmd "$1"
	for attempt in 1 2 3; do
		relay_port=$(free_udp_port)
		"${cmd[@]}" -l "127.0.0.1:$relay_port" --logLevel 3 2>"$2" &
		relay_pid=$!
		pids+=("$relay_pid")
		for _ in $(seq 300); do # <= 30 s
			kill -0 "$relay_pid" 2>/dev/null || break
			ss -Hulnp "sport = :$relay_port" | grep -qF "pid=$relay_pid," && return 0
			sleep 0.1
		done
		kill -0 "$relay_pid" 2>/dev/null && die "$1 relay did not bind 127.0.0.1:$relay_port within 30 s"
		echo "# $1 relay exited (attempt $attempt, port $relay_port): $(tail -n 1 "$2")" >&2
	done
	die "$1 relay: no port after 3 attempts"
}

# tunnel_check RELAY_ARCH INSIDE_ARCH: a relay and an inside agent of these architectures around the echo
# service pass datagrams both ways unchanged, then both exit 0 on SIGTERM.
tunnel_check() {
	local what="$1 relay with $2 inside agent" log=$tmp/tunnel-$1-$2 inside_pid pid rc
	start_relay "$1" "$log.relay"
	static_cmd "$2"
	"${cmd[@]}" -s "127.0.0.1:$echo_port" -o "127.0.0.1:$relay_port" --logLevel 3 2>"$log.inside" &
	inside_pid=$!
	pids+=("$inside_pid")
	python3 "$tmp/client.py" "$relay_port" 2>"$log.client" || die "$what: no echo through the tunnel
$(cat "$log.client")
--- relay log:
$(tail -n 20 "$log.relay")
--- inside log:
$(tail -n 20 "$log.inside")"
	ok "$what (${QEMU[$1]:-native} / ${QEMU[$2]:-native}): datagrams echoed unchanged"
	# SIGTERM: both exit 0 (a generous bound: emulated, on a shared machine).
	kill -TERM "$inside_pid" "$relay_pid"
	for pid in "$inside_pid" "$relay_pid"; do
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
		kill -0 "$pid" 2>/dev/null && die "$what: agent $pid still running 5 s after SIGTERM"
		rc=0
		wait "$pid" || rc=$?
		[ "$rc" = 0 ] || die "$what: agent $pid exited $rc after SIGTERM, expected 0"
	done
	ok "$what: both exit 0 on SIGTERM"
}

export REVERSE_UDP_TUNNEL_KEY=packaging-test-key
for arch in "${ARCHES[@]}"; do tunnel_check "$arch" "$arch"; done
# The wire format is big-endian by specification: a big-endian agent works with a little-endian one.
tunnel_check x86_64 mips
tunnel_check mips x86_64
if ((failed > 0)); then
	echo "packaging: $passed passed, $failed failed"
	exit 1
fi
echo "packaging: $passed passed, 0 failed"
