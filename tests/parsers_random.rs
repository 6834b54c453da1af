//! Randomized tests of the two parsers that read untrusted input: the control-message parser (every datagram
//! of the right shape from the network) and the command line (whatever an init script passes). Seeded (fixed,
//! unless `RUT_SEED=N` or `RUT_SEED=clock`: see `sim::seed`); the seed is printed.

mod sim;

use rut::cli::{self, Command};
use rut::wire::{Instance, Key, Kind, Message, LEN};
use sim::{seed, Rng};
use std::ffi::OsString;

const DATAGRAMS: u64 = 300_000;
const COMMAND_LINES: u64 = 100_000;

#[test]
fn random_and_mutated_datagrams_never_panic_and_only_exact_seals_verify() {
    let seed = seed();
    println!("control parser random test: seed {seed}");
    let mut rng = Rng::new(seed);
    let key = Key::new(b"k");
    let kinds = [
        Kind::Keepalive,
        Kind::Challenge,
        Kind::Response,
        Kind::Ack,
        Kind::Close,
        Kind::Drop,
    ];
    let mut verified = 0;
    for i in 0..DATAGRAMS {
        let mut m = Message::new(
            kinds[rng.below(6)],
            Instance([rng.next() as u8; 16]),
            rng.next() as u32,
            rng.next(),
        );
        m.active = rng.chance(500);
        let valid = key.seal(&m);
        let datagram: Vec<u8> = match rng.below(5) {
            0 => valid.to_vec(),
            1 => {
                let mut b = valid.to_vec();
                for _ in 0..1 + rng.below(3) {
                    let at = rng.below(LEN);
                    b[at] ^= 1 + rng.below(255) as u8;
                }
                b
            }
            2 => valid[..rng.below(LEN + 1)].to_vec(),
            3 => {
                let mut b = rng.bytes(LEN);
                b[..5].copy_from_slice(&valid[..5]);
                b
            }
            _ => {
                let len = rng.below(200);
                rng.bytes(len)
            }
        };
        match key.open(&datagram) {
            Ok(msg) => {
                verified += 1;
                assert_eq!(
                    key.seal(&msg).to_vec(),
                    datagram,
                    "seed {seed}, datagram {i}: verified but not a seal"
                );
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    println!("control parser random test: {DATAGRAMS} datagrams, {verified} verified, seed {seed}");
    assert!(verified > DATAGRAMS / 10, "the valid ones verify");
}

#[test]
fn random_command_lines_never_panic_and_errors_are_one_line() {
    let seed = seed();
    println!("command-line random test: seed {seed}");
    let mut rng = Rng::new(seed);
    let words = [
        "-s",
        "-o",
        "-l",
        "-n",
        "-k",
        "--keyFile",
        "--key-file",
        "--spares",
        "--keepaliveInterval",
        "--keepalive-interval",
        "--connectionTimeout",
        "--statusInterval",
        "--logLevel",
        "--log-level",
        "--name",
        "--syslog",
        "-h",
        "--help",
        "-V",
        "--keyfile",
        "--",
        "-",
        "--logLevel=",
        "--name=x",
        "-n=3",
    ];
    let values = [
        "1",
        "0",
        "65535",
        "65536",
        "-1",
        "localhost:51820",
        "[::1]:5",
        "[::1",
        "::1:5",
        "a:b",
        "",
        " ",
        "x y",
        "relay.example.com:1234",
        "1234",
        "[::]:1234",
        "99999999999999999999",
        "/nonexistent",
        "\u{e9}",
        "ok-name",
    ];
    let mut ok = 0;
    for i in 0..COMMAND_LINES {
        let n = rng.below(7);
        // A third start from a valid role, so the option checks behind it are reached too.
        let base: &[&str] = match rng.below(3) {
            0 => &["-l", "1234"],
            1 => &["-s", "localhost:51820", "-o", "relay.example:1234"],
            _ => &[],
        };
        let mut args: Vec<OsString> = base.iter().map(Into::into).collect();
        args.extend((0..n).map(|_| {
            if rng.chance(500) {
                words[rng.below(words.len())].into()
            } else if rng.chance(900) {
                values[rng.below(values.len())].into()
            } else {
                {
                    let len = 1 + rng.below(6);
                    String::from_utf8_lossy(&rng.bytes(len)).into_owned().into()
                }
            }
        }));
        match cli::parse(&args, None) {
            Ok(Command::Run(..)) => ok += 1,
            Ok(_) => {}
            Err(e) => assert!(
                !e.contains('\n') && !e.is_empty(),
                "seed {seed}, line {i}: {args:?} gave {e:?}"
            ),
        }
    }
    println!("command-line random test: {COMMAND_LINES} command lines, {ok} valid, seed {seed}");
}
