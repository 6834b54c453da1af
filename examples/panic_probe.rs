//! Panics on purpose. `make panic-probe-ARCH` builds it exactly as the static router binaries are built (std
//! from rust-src with optimize_for_size, `panic = "abort"`), and tests/packaging.sh runs it under qemu to show
//! that such a binary still prints a panic's message and location, the only clue a router owner can send.

fn main() {
    panic!("panic probe: deliberate");
}
