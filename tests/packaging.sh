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
	SIGNALS 'STATUS LINE' TROUBLESHOOTING 'SEE ALSO'; do
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
	# (the commented-out alternatives too: --homes, --metrics)
	for opt in $(grep -E '^#?OPTIONS=' "$conf" | grep -oE -- '(^|[ =])--?[A-Za-z]+' | tr -d ' ='); do
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

# Stand-ins for what OpenWrt gives an init script, enough to run start_service and service_triggers:
# - /lib/functions.sh: config_load parses $UCI_FILE into $UCI_DB ("S name type" and "O section option
#   value" lines); config_get, config_get_bool, config_foreach; user_exists looks the name up in $PASSWD.
# - /lib/functions/procd.sh: procd_* print what the instance would be ("<instance> <param> <values>", the
#   command last); procd_add_validation writes to $VALIDATION. uci_load_validate does what procd's does:
#   makes the option variables local, sets them from validate_data's output (and on failure lets its
#   diagnostics through to stderr), then calls back with the section and validate_data's status.
# - procd_running: whether the instance is a line of $RUNNING; procd_send_signal prints "signal <args>";
#   start (rc.common's) runs start_service.
# - logger: appends "PRIORITY TAG: MESSAGE" to $SYSLOG, with -s also "TAG: MESSAGE" to stderr.
# - /sbin/validate_data: $tmp/bin/validate_data below, on PATH.
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
user_exists() { grep -qs "^$1:" "$PASSWD"; }
logger() {
	_echo= _tag= _prio=user.notice
	while [ $# -gt 1 ]; do
		case "$1" in
		-s) _echo=1 && shift ;;
		-t) _tag=$2 && shift 2 ;;
		-p) _prio=$2 && shift 2 ;;
		*) break ;;
		esac
	done
	echo "$_prio $_tag: $*" >>"$SYSLOG"
	[ -z "$_echo" ] || echo "$_tag: $*" >&2
}
uci_load_validate() {
	_package=$1 _type=$2 _section=$3 _callback=$4
	shift 4
	for _tuple in "$@"; do eval "local ${_tuple%%:*}"; done
	_assignments=$(validate_data "$_package" "$_type" "$_section" "$@" 2>/dev/null)
	_status=$?
	eval "$_assignments"
	[ "$_status" = 0 ] || validate_data "$_package" "$_type" "$_section" "$@" >/dev/null
	[ -n "$_callback" ] || return "$_status"
	"$_callback" "$_section" "$_status"
}
procd_open_instance() { _inst=$1 _cmd=; }
procd_set_param() {
	_t=$1
	shift
	if [ "$_t" = command ]; then _cmd="$*"; else echo "$_inst $_t${*:+ $*}"; fi
}
procd_append_param() {
	_t=$1
	shift
	if [ "$_t" = command ]; then _cmd="$_cmd $*"; else echo "$_inst +$_t $*"; fi
}
procd_close_instance() { echo "$_inst command $_cmd"; }
procd_add_reload_trigger() { echo "reload_trigger $*"; }
procd_running() { grep -qsxF "$2" "$RUNNING"; }
procd_send_signal() { echo "signal $*"; }
start() { start_service; }
procd_add_validation() { "$@" >>"$VALIDATION"; }
json_add_object() { echo "{${1:+ $1:}"; }
json_add_string() { echo "$1=$2"; }
json_close_object() { echo "}"; }
EOF

# validate_data PACKAGE TYPE SECTION OPTION:DATATYPE[:DEFAULT]...: what OpenWrt's prints (ubox
# validate/cli.c) for the datatypes the init script uses: assignments on stdout, a diagnostic per option
# on stderr, status 255 if an option does not validate; with an empty SECTION, jshn calls describing the
# options. Options come from $UCI_DB. (range() here takes decimal digits only; otherwise checked equal to
# the real one, built from openwrt/ubox, libubox and uci, on valid, invalid, missing and unset options.)
mkdir -p "$tmp/bin"
cat >"$tmp/bin/validate_data" <<'EOF'
#!/usr/bin/env bash
set -u
package=$1 type=$2 section=$3
shift 3
if [ -z "$section" ]; then
	printf 'json_add_object; json_add_string "package" "%s"; json_add_string "type" "%s"; ' "$package" "$type"
	printf 'json_add_object "data"; '
	for tuple in "$@"; do
		IFS=: read -r option datatype _ <<<"$tuple"
		printf 'json_add_string "%s" "%s"; ' "$option" "$datatype"
	done
	printf 'json_close_object; json_close_object; '
	exit 0
fi
quote() { printf "'%s'" "${1//"'"/"'\"'\"'"}"; }
shown() { # DATATYPE VALUE: prints VALUE as validate_data exports it; fails if it does not validate
	case "$1" in
	bool)
		case "$2" in
		1 | on | true | yes | enabled) echo 1 ;;
		0 | off | false | no | disabled) echo 0 ;;
		*) return 1 ;;
		esac
		;;
	string) quote "$2" ;;
	file) [ -f "$2" ] && quote "$2" ;;
	range\(*,*\))
		local bounds=${1#range(}
		bounds=${bounds%)}
		[[ $2 =~ ^[0-9]{1,9}$ ]] && ((10#$2 >= ${bounds%,*} && 10#$2 <= ${bounds#*,})) && echo "$2"
		;;
	*)
		echo "validate_data stand-in: no datatype $1" >&2
		exit 3
		;;
	esac
}
status=0
for tuple in "$@"; do
	IFS=: read -r option datatype default <<<"$tuple"
	value=$(awk -F '\t' -v s="$section" -v o="$option" '$1 == "O" && $2 == s && $3 == o { v = $4 }
		END { print v }' "$UCI_DB")
	if [ -n "$value" ]; then
		if out=$(shown "$datatype" "$value"); then
			printf '%s=%s; ' "$option" "$out"
			verdict=true
		else
			printf 'unset -v %s; ' "$option"
			verdict=false
			status=255
		fi
		echo "$package.$section.$option=$value validates as $datatype with $verdict" >&2
	else
		if [ -z "$default" ]; then
			printf 'unset -v %s; ' "$option"
		elif out=$(shown "$datatype" "$default"); then
			printf '%s=%s; ' "$option" "$out"
		else
			printf '%s=%s; ' "$option" "$(quote "$default")"
		fi
		echo "$package.$section.$option is unset and defaults to $datatype ${default:-(null)}" >&2
	fi
done
exit "$status"
EOF
chmod 755 "$tmp/bin/validate_data"

# A passwd with the user the package creates; key files where the configs below point.
printf 'root:x:0:0:root:/root:/bin/ash\nrutunnel:x:32768:32768:rutunnel:/var/run/rutunnel:/bin/false\n' \
	>"$tmp/passwd"
keys=$tmp/keys
mkdir -p "$keys"
for name in home game relay good; do echo "key-$name" >"$keys/$name.key"; done
# The homes file of the sample relay of several homes (what is in it is the program's to check).
echo "home home.key xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg= 20" >"$keys/homes"

# The shell OpenWrt runs init scripts with is busybox ash; without busybox, /bin/sh.
rc_shell=(sh)
! command -v busybox >/dev/null || rc_shell=(busybox ash)

# Runs the init script's start_service and service_triggers with that shell against UCI file $1: the procd
# calls on stdout, the init script's stderr on stderr; its system log in $tmp/syslog, the validation
# description in $tmp/validation.
uci_translate() {
	: >"$tmp/syslog"
	: >"$tmp/validation"
	# shellcheck disable=SC2016 # $1 and $2 are the inner shell's
	PATH=$tmp/bin:$PATH UCI_FILE=$1 UCI_DB=$tmp/uci.db PASSWD=$tmp/passwd SYSLOG=$tmp/syslog \
		VALIDATION=$tmp/validation "${rc_shell[@]}" -c '. "$1"; . "$2"; start_service; service_triggers' \
		sh "$tmp/stubs.sh" "$initscript"
}
# Runs the init script's reload_service like uci_translate against UCI file $1, procd running the instances
# named by the other arguments.
uci_reload() {
	local uci_file=$1
	shift
	printf '%s\n' "$@" >"$tmp/running"
	: >"$tmp/syslog"
	# shellcheck disable=SC2016 # $1 and $2 are the inner shell's
	PATH=$tmp/bin:$PATH UCI_FILE=$uci_file UCI_DB=$tmp/uci.db PASSWD=$tmp/passwd SYSLOG=$tmp/syslog \
		RUNNING=$tmp/running "${rc_shell[@]}" -c '. "$1"; . "$2"; reload_service' sh "$tmp/stubs.sh" "$initscript"
}
expect() { # name, expected text on stdin, actual in $tmp/actual
	diff -u - "$tmp/actual" >"$tmp/diff" || die "$1: init script output differs:
$(cat "$tmp/diff")"
}

# As shipped, every sample section is disabled: nothing starts, nothing is logged.
uci_translate "$uci_sample" >"$tmp/actual" 2>"$tmp/stderr"
expect "sample config as shipped" <<'EOF'
reload_trigger reverse-udp-tunnel
EOF
if [ -s "$tmp/syslog" ] || [ -s "$tmp/stderr" ]; then
	die "sample config as shipped: logged $(cat "$tmp/syslog" "$tmp/stderr")"
fi
ok "sample UCI config as shipped (${rc_shell[*]}): every section disabled, nothing started or logged"

# procd learns both section types' options and datatypes (procd_add_validation).
cp "$tmp/validation" "$tmp/actual"
expect "validation description" <<'EOF'
{
package=reverse-udp-tunnel
type=inside
{ data:
enabled=bool
service=string
relay=string
spares=range(1,10000)
connection_timeout=range(1,86400)
key_file=file
user=string
max_tunnels=range(1,100000)
keepalive_interval=range(1,86400)
status_interval=range(0,86400)
log_level=range(0,3)
metrics=string
}
}
{
package=reverse-udp-tunnel
type=outside
{ data:
enabled=bool
listen=string
homes=file
key_file=file
user=string
max_tunnels=range(1,100000)
keepalive_interval=range(1,86400)
status_interval=range(0,86400)
log_level=range(0,3)
metrics=string
}
}
EOF
ok "procd_add_validation describes both section types with every option's datatype"

# Every sample section enabled, its key file present, its commented-out metrics line in: the exact procd instances.
sed -e "s/option enabled '0'/option enabled '1'/" -e "s#/etc/reverse-udp-tunnel/#$keys/#" \
	-e "s/^#\(	option metrics \)/\1/" "$uci_sample" >"$tmp/all-enabled"
uci_translate "$tmp/all-enabled" >"$tmp/all-enabled.out" 2>"$tmp/stderr"
cp "$tmp/all-enabled.out" "$tmp/actual"
expect "sample config, all enabled" <<EOF
home respawn
home stderr 1
home user rutunnel
home file $keys/home.key
home command /usr/bin/reverse-udp-tunnel --syslog --name home -s 127.0.0.1:51820 -o relay.example.com:1234 --keyFile $keys/home.key -n 20 --spares 4 --keepaliveInterval 20 --connectionTimeout 120 --statusInterval 600 --logLevel 2 --metrics 127.0.0.1:9902
game respawn
game stderr 1
game file $keys/game.key
game command /usr/bin/reverse-udp-tunnel --syslog --name game -s 192.168.1.20:27015 -o [2001:db8::1]:1235 --keyFile $keys/game.key
relay respawn
relay stderr 1
relay user rutunnel
relay file $keys/relay.key
relay command /usr/bin/reverse-udp-tunnel --syslog --name relay -l 1234 --keyFile $keys/relay.key -n 20 --keepaliveInterval 20 --statusInterval 600 --logLevel 1 --metrics 127.0.0.1:9901
homes respawn
homes stderr 1
homes user rutunnel
homes command /usr/bin/reverse-udp-tunnel --syslog --name homes -l 1235 --homes $keys/homes --statusInterval 600
reload_trigger reverse-udp-tunnel
EOF
if [ -s "$tmp/syslog" ] || [ -s "$tmp/stderr" ]; then
	die "sample config, all enabled: logged $(cat "$tmp/syslog" "$tmp/stderr")"
fi
ok "sample UCI config, every section enabled: exact instances (--syslog --name SECTION, user, key file, homes, metrics)"

# reload: SIGHUP to each running relay with option homes (it re-reads the file and keeps the unchanged homes'
# tunnels), then start, for procd to restart what changed; no signal to the others, nor to one not running.
uci_reload "$tmp/all-enabled" home game relay homes >"$tmp/actual" 2>"$tmp/stderr"
{
	echo "signal reverse-udp-tunnel homes HUP"
	grep -v '^reload_trigger ' "$tmp/all-enabled.out"
} | expect "reload, every instance running"
uci_reload "$tmp/all-enabled" home relay >"$tmp/actual" 2>>"$tmp/stderr"
grep -v '^reload_trigger ' "$tmp/all-enabled.out" | expect "reload, the relay of several homes not running"
if [ -s "$tmp/syslog" ] || [ -s "$tmp/stderr" ]; then
	die "reload: logged $(cat "$tmp/syslog" "$tmp/stderr")"
fi
ok "reload: SIGHUP to the running instances with option homes, then start (procd restarts what changed)"

# Bad values: each such section is not started and says why in the system log (daemon.err) and on
# stderr; good sections around them start; a disabled section is not checked. Also: enabled defaults to
# 1, double-quoted and bare values, an outside section ignores inside-only options, an inside one homes.
cat >"$tmp/bad" <<EOF
config inside 'good'
	option service "[::1]:51820"
	option relay relay6.example.net:1234
	option key_file '$keys/good.key'
	option homes '$keys/homes'
	option metrics '[::1]:9902'
config inside 'badlevel'
	option service '127.0.0.1:51820'
	option relay 'relay.example.com:1234'
	option log_level '7'
config inside 'badbool'
	option enabled 'maybe'
	option service '127.0.0.1:51820'
	option relay 'relay.example.com:1234'
config inside 'nokey'
	option service '127.0.0.1:51820'
	option relay 'relay.example.com:1234'
	option key_file '$tmp/no-such.key'
config inside 'norelay'
	option service '127.0.0.1:51820'
config inside 'v6bare'
	option service '127.0.0.1:51820'
	option relay '2001:db8::1:1234'
config inside 'nouser'
	option service '127.0.0.1:51820'
	option relay 'relay.example.com:1234'
	option user 'nosuchuser'
config inside 'off'
	option enabled '0'
	option log_level '9'
config outside 'v6'
	option listen '[::]:1234'
	option spares '9'
	option connection_timeout '9'
	option max_tunnels '5'
	option metrics 'localhost:9901'
config inside 'metricsport'
	option service '127.0.0.1:51820'
	option relay 'relay.example.com:1234'
	option metrics '9901'
config outside 'metrics0'
	option listen '1234'
	option metrics '127.0.0.1:0'
config outside 'badlisten'
	option listen 'eth0'
config outside 'port0'
	option listen '0'
config outside 'bign'
	option listen '1234'
	option max_tunnels '100001'
config outside 'homeskey'
	option listen '1235'
	option homes '$keys/homes'
	option key_file '$keys/relay.key'
config outside 'nohomes'
	option listen '1235'
	option homes '$tmp/no-such-homes'
EOF
uci_translate "$tmp/bad" >"$tmp/bad.out" 2>"$tmp/stderr"
cp "$tmp/bad.out" "$tmp/actual"
expect "bad values" <<EOF
good respawn
good stderr 1
good file $keys/good.key
good command /usr/bin/reverse-udp-tunnel --syslog --name good -s [::1]:51820 -o relay6.example.net:1234 --keyFile $keys/good.key --metrics [::1]:9902
v6 respawn
v6 stderr 1
v6 command /usr/bin/reverse-udp-tunnel --syslog --name v6 -l [::]:1234 -n 5 --metrics localhost:9901
reload_trigger reverse-udp-tunnel
EOF
cp "$tmp/syslog" "$tmp/actual"
expect "bad values: system log" <<EOF
daemon.err reverse-udp-tunnel: badlevel: option log_level '7' is not range(0,3); instance not started
daemon.err reverse-udp-tunnel: badbool: option enabled 'maybe' is not bool; instance not started
daemon.err reverse-udp-tunnel: nokey: option key_file '$tmp/no-such.key' is not file; instance not started
daemon.err reverse-udp-tunnel: norelay: option relay (HOST:PORT) is missing; instance not started
daemon.err reverse-udp-tunnel: v6bare: option relay '2001:db8::1:1234' is not HOST:PORT; instance not started
daemon.err reverse-udp-tunnel: nouser: option user 'nosuchuser': no such user; instance not started
daemon.err reverse-udp-tunnel: metricsport: option metrics '9901' is not ADDR:PORT; instance not started
daemon.err reverse-udp-tunnel: metrics0: option metrics '127.0.0.1:0' is not ADDR:PORT; instance not started
daemon.err reverse-udp-tunnel: badlisten: option listen 'eth0' is not [ADDR:]PORT; instance not started
daemon.err reverse-udp-tunnel: port0: option listen '0' is not [ADDR:]PORT; instance not started
daemon.err reverse-udp-tunnel: bign: option max_tunnels '100001' is not range(1,100000); instance not started
daemon.err reverse-udp-tunnel: homeskey: option key_file: not with option homes, whose lines name each home's key file; instance not started
daemon.err reverse-udp-tunnel: nohomes: option homes '$tmp/no-such-homes' is not file; instance not started
EOF
sed 's/^daemon\.err //' "$tmp/syslog" >"$tmp/expected-stderr"
grep -v ' validates as \| is unset and defaults to ' "$tmp/stderr" |
	diff -u "$tmp/expected-stderr" - >"$tmp/diff" ||
	die "bad values: stderr differs from the system log: $(cat "$tmp/diff")"
ok "UCI values that do not validate: section not started, the option and value logged as daemon.err"

# Every flag the init script emitted is one the program knows.
mapfile -t flags < <(cat "$tmp/all-enabled.out" "$tmp/bad.out" | grep ' command ' |
	grep -oE -- ' --?[A-Za-z]+' | tr -d ' ' | sort -u)
for opt in "${flags[@]}"; do
	grep -qxF -- "$opt" "$tmp/help-options" || die "$initscript emits $opt, which --help does not show"
done
ok "every flag the init script emitted (${#flags[@]}) appears in --help"

# ---------------------------------------------------------------- OpenWrt package Makefile
pkg_mk=openwrt/Makefile
# shellcheck disable=SC2016 # make's $(...), literally
for line in 'include $(TOPDIR)/rules.mk' 'include $(INCLUDE_DIR)/package.mk' \
	'include $(TOPDIR)/feeds/packages/lang/rust/rust-package.mk' 'PKG_BUILD_DEPENDS:=rust/host' \
	"define Package/$BIN" "define Package/$BIN/conffiles" "define Package/$BIN/install" \
	"\$(eval \$(call RustBinPackage,$BIN))" "\$(eval \$(call BuildPackage,$BIN))"; do
	grep -qxF -- "$line" "$pkg_mk" || die "$pkg_mk lacks the line $line"
done
ok "$pkg_mk: includes rust-package.mk, defines the package, its conffiles and install, RustBinPackage"

# A dry run of the package with stand-ins for the SDK's make files: unpack the local tree, "build" (the
# release binary stands in for cargo install's), run the package's install recipe into a root, and
# record the package's fields and conffiles. Checks what ends up in the package, file by file.
top=$tmp/sdk
mkdir -p "$top/include" "$top/feeds/packages/lang/rust"
cat >"$top/rules.mk" <<'EOF'
INCLUDE_DIR:=$(TOPDIR)/include
BUILD_DIR:=$(TOPDIR)/build_dir
TAR:=tar
INSTALL_DIR:=install -d -m0755
INSTALL_BIN:=install -m0755
INSTALL_DATA:=install -m0644
INSTALL_CONF:=install -m0600
EOF
cat >"$top/include/package.mk" <<'EOF'
PKG_BUILD_DIR ?= $(BUILD_DIR)/$(PKG_NAME)-$(PKG_VERSION)
PKG_INSTALL_DIR ?= $(PKG_BUILD_DIR)/ipkg-install
PKG_UNPACK ?= true
define BuildPackage
$(eval $(Package/$(1)))
$(file >$(STUB_OUT)/fields,SECTION=$(SECTION) CATEGORY=$(CATEGORY) DEPENDS=$(DEPENDS) USERID=$(USERID))
$(file >$(STUB_OUT)/conffiles,$(Package/$(1)/conffiles))
$(file >$(STUB_OUT)/source,$(PKG_SOURCE_PROTO) $(PKG_SOURCE_URL) $(PKG_SOURCE_VERSION))
stub-install:
	rm -rf $(PKG_BUILD_DIR)
	$(PKG_UNPACK)
	$(Build/Compile)
$(call Package/$(1)/install,$(STUB_ROOT))
endef
EOF
cat >"$top/feeds/packages/lang/rust/rust-package.mk" <<'EOF'
RUST_ARCH_DEPENDS:=@(aarch64||arm||mips||mipsel||x86_64)
define RustBinPackage
endef
Build/Compile=$(INSTALL_DIR) $(PKG_INSTALL_DIR)/bin && $(INSTALL_BIN) $(STUB_BINARY) $(PKG_INSTALL_DIR)/bin/
EOF
pkgroot=$tmp/pkgroot
mkdir -p "$tmp/stub-out"
quiet make -C openwrt -s TOPDIR="$top" STUB_OUT="$tmp/stub-out" STUB_ROOT="$pkgroot" \
	STUB_BINARY="$PWD/$RELEASE" stub-install
check_file() { # path in the package, mode, file it must equal
	[ -f "$pkgroot$1" ] || die "the package lacks $1"
	[ "$(stat -c %a "$pkgroot$1")" = "$2" ] || die "the package's $1 has mode $(stat -c %a "$pkgroot$1"), not $2"
	cmp -s "$pkgroot$1" "$3" || die "the package's $1 differs from $3"
}
check_file /usr/bin/$BIN 755 "$RELEASE"
check_file /etc/init.d/$BIN 755 "$initscript"
check_file /etc/config/$BIN 600 "$uci_sample"
[ "$(cat "$pkgroot/lib/upgrade/keep.d/$BIN")" = /etc/reverse-udp-tunnel/ ] ||
	die "the package does not keep /etc/reverse-udp-tunnel/ across sysupgrade"
[ "$(cat "$tmp/stub-out/conffiles")" = /etc/config/$BIN ] ||
	die "conffiles is not /etc/config/$BIN: $(cat "$tmp/stub-out/conffiles")"
fields="SECTION=net CATEGORY=Network DEPENDS=@(aarch64||arm||mips||mipsel||x86_64) USERID=rutunnel:rutunnel"
[ "$(cat "$tmp/stub-out/fields")" = "$fields" ] ||
	die "package fields: $(cat "$tmp/stub-out/fields")"
[ ! -e "$top/build_dir/$BIN-1.2.0/target" ] || die "the local tree was unpacked with its target/"
ok "$pkg_mk (SDK stand-ins): binary, init script, UCI config (0600, a conffile), keep.d, user rutunnel"

quiet make -C openwrt -s TOPDIR="$top" STUB_OUT="$tmp/stub-out" STUB_ROOT="$tmp/pkgroot-git" \
	STUB_BINARY="$PWD/$RELEASE" RUT_GIT_URL=https://git.example.org/rut.git -n stub-install
[ "$(cat "$tmp/stub-out/source")" = "git https://git.example.org/rut.git v1.2.0" ] ||
	die "RUT_GIT_URL does not make a git source at tag v1.2.0: $(cat "$tmp/stub-out/source")"
ok "$pkg_mk: RUT_GIT_URL fetches the project's git at tag v\$(PKG_VERSION) instead of the local tree"

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
