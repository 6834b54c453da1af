# reverse-udp-tunnel — see README.md. Every target is safe to run as often as you like.
PREFIX  ?= /usr/local
DESTDIR ?=
CARGO   ?= cargo
BIN     := reverse-udp-tunnel
RELEASE := target/release/$(BIN)

.PHONY: build test unit e2e bench demo static install uninstall clean lint

build:
	$(CARGO) build --release

# Everything CI runs: unit + integration tests (loopback), then the network-namespace suite.
test: build lint
	$(CARGO) test --release
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

demo: build
	$(CARGO) run --release --example demo -- $(RELEASE)

# Fully static, stripped binaries for routers and small hosts: target/static/$(BIN)-{x86_64,aarch64}.
# aarch64 links with rust-lld (.cargo/config.toml); needs `rustup target add <arch>-unknown-linux-musl`.
static:
	$(CARGO) build --release --target x86_64-unknown-linux-musl
	$(CARGO) build --release --target aarch64-unknown-linux-musl
	mkdir -p target/static
	cp target/x86_64-unknown-linux-musl/release/$(BIN) target/static/$(BIN)-x86_64
	cp target/aarch64-unknown-linux-musl/release/$(BIN) target/static/$(BIN)-aarch64

# Binary and man page; `man reverse-udp-tunnel` works once $(PREFIX)/share/man is on the man path.
install: build
	install -D -m 0755 $(RELEASE) $(DESTDIR)$(PREFIX)/bin/$(BIN)
	install -D -m 0644 man/$(BIN).8 $(DESTDIR)$(PREFIX)/share/man/man8/$(BIN).8

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/$(BIN) $(DESTDIR)$(PREFIX)/share/man/man8/$(BIN).8

clean:
	$(CARGO) clean
