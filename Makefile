# reverse-udp-tunnel — see README.md. Every target is safe to run as often as you like.
PREFIX  ?= /usr/local
DESTDIR ?=
CARGO   ?= cargo
BIN     := reverse-udp-tunnel
# Where cargo puts what it builds: CARGO_TARGET_DIR if set, as for cargo itself.
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
RELEASE := $(TARGET_DIR)/release/$(BIN)

.PHONY: build test unit e2e bench explore demo static cross-test install uninstall clean lint

build:
	$(CARGO) build --release

# Everything CI runs: unit + integration tests (loopback), then the network-namespace suite.
test: build lint
	$(CARGO) test --release
	$(MAKE) cross-test
	$(MAKE) e2e
	bash tests/packaging.sh

unit:
	$(CARGO) test --release

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

e2e: build
	bash tests/e2e/run.sh $(RELEASE)

bench:
	$(CARGO) bench --bench tunnel
	$(CARGO) bench --bench homes

# The randomized invariant tests on new seeds from the clock, RUNS times each; stops at the first failure, whose
# message gives the seed to replay (RUT_SEED=N) and, for the relay, the world to keep in REGRESSIONS. CI runs them on a fixed seed only, so it never fails by chance.
RUNS ?= 20
explore:
	$(CARGO) test --release --no-run
	for i in $$(seq $(RUNS)); do \
	  RUT_SEED=clock $(CARGO) test --release -q --test relay_random --test coordinator_core --test parsers_random \
	    || exit 1; \
	done

demo: build
	$(CARGO) run --release --example demo -- $(RELEASE)

# Fully static, stripped binaries for routers and small hosts: $(TARGET_DIR)/static/$(BIN)-ARCH for each ARCH
# of TARGETS (`make static TARGETS="mipsel mips"`). cargo-zigbuild (pip: ziglang, cargo-zigbuild) links every
# target with zig cc against zig's musl. std is rebuilt from rust-src (`rustup component add rust-src`): no
# prebuilt one exists for MIPS, and one built with optimize_for_size has no backtrace symbolizer, a third of
# the binary. -Z needs RUSTC_BOOTSTRAP=1 on the stable toolchain. The flags per target: .cargo/config.toml.
ARCHES  := x86_64 aarch64 armv7 mipsel mips
TARGETS ?= $(ARCHES)
TRIPLE.x86_64  := x86_64-unknown-linux-musl
TRIPLE.aarch64 := aarch64-unknown-linux-musl
TRIPLE.armv7   := armv7-unknown-linux-musleabihf
TRIPLE.mipsel  := mipsel-unknown-linux-musl
TRIPLE.mips    := mips-unknown-linux-musl
# zig and cargo-zigbuild keep their caches (musl built per target, linker wrappers) in the target dir too.
ZIG_CACHE := $(abspath $(TARGET_DIR))/zig-cache
ZIGBUILD  := RUSTC_BOOTSTRAP=1 XDG_CACHE_HOME=$(ZIG_CACHE) ZIG_GLOBAL_CACHE_DIR=$(ZIG_CACHE)/zig \
	ZIG_LOCAL_CACHE_DIR=$(ZIG_CACHE)/zig cargo-zigbuild
BUILD_STD := -Z build-std=std,panic_abort -Z build-std-features=optimize_for_size
triple     = $(or $(TRIPLE.$*),$(error unknown architecture "$*": one of $(ARCHES)))

static: $(addprefix static-,$(TARGETS))

# MIPS: LLVM writes a .pdr section (procedure descriptors for old debuggers, never loaded) that the linker's
# --strip-all keeps: 89 KiB of the 550. llvm-objcopy, from `rustup component add llvm-tools`, removes it.
OBJCOPY = $(shell rustc --print sysroot)/lib/rustlib/$(shell rustc -vV | sed -n 's/^host: //p')/bin/llvm-objcopy
static-%:
	$(ZIGBUILD) zigbuild --release --bin $(BIN) --target $(triple) $(BUILD_STD)
	mkdir -p $(TARGET_DIR)/static
	cp $(TARGET_DIR)/$(triple)/release/$(BIN) $(TARGET_DIR)/static/$(BIN)-$*
	case $* in mips*) test -x $(OBJCOPY) || { echo "no llvm-objcopy: rustup component add llvm-tools" >&2; exit 1; }; \
		$(OBJCOPY) --remove-section=.pdr $(TARGET_DIR)/static/$(BIN)-$*;; esac

# examples/panic_probe built like the static binaries (tests/packaging.sh: a panic still says where).
panic-probe-%:
	$(ZIGBUILD) zigbuild --release --example panic_probe --target $(triple) $(BUILD_STD)

# The library's unit tests built for other CPUs and run under qemu-user (runners: .cargo/config.toml): by
# default a 32-bit ARM and the big-endian MIPS. Test profile, so overflow checks and debug assertions are on
# (with a 32-bit usize), at opt-level 1: emulated unoptimized code made one test take minutes instead of seconds.
CROSS_TEST ?= armv7 mips
cross-test: $(addprefix cross-test-,$(CROSS_TEST))

cross-test-%:
	CARGO_PROFILE_TEST_OPT_LEVEL=1 $(ZIGBUILD) test --lib --target $(triple) -Z build-std

# Binary and man page; `man reverse-udp-tunnel` works once $(PREFIX)/share/man is on the man path.
install: build
	install -D -m 0755 $(RELEASE) $(DESTDIR)$(PREFIX)/bin/$(BIN)
	install -D -m 0644 man/$(BIN).8 $(DESTDIR)$(PREFIX)/share/man/man8/$(BIN).8

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/$(BIN) $(DESTDIR)$(PREFIX)/share/man/man8/$(BIN).8

clean:
	$(CARGO) clean
