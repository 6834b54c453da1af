//! The options both agents take, in one table: their spellings (getopts has no aliases, so kebab-case is
//! rewritten here), which side takes each, and the --help text made from it.

use getopts::Options;
use std::ffi::OsString;

/// Which role takes an option; the other role refuses it with one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    Inside,
    Outside,
    Both,
}

/// One option: short and long name (either may be ""), the value's name (None: a flag), who takes it, and
/// its --help text (lines after the first are continued under it). The help says "inside:" or "outside:"
/// by itself, from `side`.
pub(super) struct Opt {
    pub(super) short: &'static str,
    pub(super) long: &'static str,
    pub(super) value: Option<&'static str>,
    pub(super) side: Side,
    pub(super) help: &'static str,
}

pub(super) const fn opt(
    short: &'static str,
    long: &'static str,
    value: Option<&'static str>,
    side: Side,
    help: &'static str,
) -> Opt {
    Opt {
        short,
        long,
        value,
        side,
        help,
    }
}

pub(super) use Side::{Both, Inside, Outside};

/// Every option, in --help order. A new option is one line here (and its use in `parse`).
pub(super) const OPTIONS: &[Opt] = &[
    opt("s", "", Some("HOST:PORT"), Inside, "the service to reach, e.g. localhost:51820"),
    opt("o", "", Some("HOST:PORT"), Inside, "the relay's public address, e.g. relay.example.com:1234"),
    opt("l", "", Some("[ADDR:]PORT"), Outside, "port to listen on, all addresses (IPv6 and IPv4);\nor one address: 0.0.0.0:1234, [::]:1234, [::1]:1234"),
    opt("n", "", Some("NUMBER"), Both, "most tunnels open at once (default 10); same on both sides"),
    opt("k", "", Some("SECRET"), Both, "shared key that authenticates every control message; same on both sides"),
    opt("", "keyFile", Some("PATH"), Both, "read the key from the first line of PATH instead of -k"),
    opt("", "spares", Some("NUMBER"), Inside, "spare tunnels kept ready at the relay (default 4)"),
    opt("", "keepaliveInterval", Some("SECONDS"), Both, "keepalive period (default 25); same on both sides"),
    opt("", "connectionTimeout", Some("SECONDS"), Inside, "close a tunnel idle this long, +-20% (default 60)"),
    opt("", "statusInterval", Some("SECONDS"), Both, "log a status line this often, and at exit (default 0: only at exit)"),
    opt("", "logLevel", Some("LEVEL"), Both, "0 errors, 1 warnings, 2 info (default), 3 debug"),
    opt("", "name", Some("NAME"), Both, "instance name, put in front of every log line (up to 32 characters)"),
    opt("", "wireguard", Some("PUBLIC_KEY"), Outside, "admit only WireGuard handshakes for this server public key\n(base64, as in the clients' [Peer] PublicKey)"),
    opt("", "homes", Some("FILE"), Outside, "serve several homes on this port, one a line of FILE:\nNAME KEYFILE WIREGUARD_PUBLIC_KEY [TUNNELS]; SIGHUP re-reads it"),
    opt("", "metrics", Some("ADDR:PORT"), Both, "serve Prometheus metrics at http://ADDR:PORT/metrics,\ne.g. 127.0.0.1:9901 (default: off)"),
    opt("", "syslog", None, Both, "log to the system log (/dev/log) instead of standard error"),
    opt("h", "help", None, Both, "show this help"),
    opt("V", "version", None, Both, "show the version"),
];

const USAGE_HEAD: &str = "\
Usage:
  reverse-udp-tunnel -s HOST:PORT -o HOST:PORT [options]    inside agent, next to the service, behind NAT
  reverse-udp-tunnel -l [ADDR:]PORT [options]               outside relay, on a public host

Options:
";

const USAGE_TAIL: &str = "
Long options may also be written in kebab-case: keyFile as key-file, logLevel as log-level, and so on.
The key: give it with -k or --keyFile (not both); either wins over the environment variable
REVERSE_UDP_TUNNEL_KEY. --keyFile or the variable keep it out of ps(1).
HOST is a name, an IPv4 address or an IPv6 address in brackets. See reverse-udp-tunnel(8).
";

/// The --help text, from [`OPTIONS`].
pub fn usage() -> String {
    const HELP_COLUMN: usize = 32;
    let mut out = String::from(USAGE_HEAD);
    for o in OPTIONS {
        let mut left = match (o.short, o.long) {
            (s, "") => format!("  -{s}"),
            ("", l) => format!("      --{l}"),
            (s, l) => format!("  -{s}, --{l}"),
        };
        if let Some(v) = o.value {
            left = format!("{left} {v}");
        }
        let side = match o.side {
            Inside => "inside: ",
            Outside => "outside: ",
            Both => "",
        };
        out.push_str(&left);
        if left.len() + 2 > HELP_COLUMN {
            out.push('\n');
            left.clear();
        }
        for (i, line) in o.help.split('\n').enumerate() {
            let pad = if i == 0 {
                HELP_COLUMN - left.len()
            } else {
                HELP_COLUMN
            };
            let side = if i == 0 { side } else { "" };
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&format!("{:pad$}{side}{line}", ""));
        }
        out.push('\n');
    }
    out + USAGE_TAIL
}

pub(super) fn options() -> Options {
    let mut o = Options::new();
    for opt in OPTIONS {
        let (has_arg, hint) = match opt.value {
            Some(v) => (getopts::HasArg::Yes, v),
            None => (getopts::HasArg::No, ""),
        };
        o.opt(
            opt.short,
            opt.long,
            "",
            hint,
            has_arg,
            getopts::Occur::Optional,
        );
    }
    o
}

/// The name getopts knows an option by.
pub(super) fn key(o: &Opt) -> &'static str {
    if o.short.is_empty() {
        o.long
    } else {
        o.short
    }
}

/// `keyFile` → `key-file`.
pub(super) fn kebab(long: &str) -> String {
    let mut out = String::with_capacity(long.len() + 2);
    for c in long.chars() {
        if c.is_ascii_uppercase() {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Which option a `--NAME` means: its own spelling or the kebab-case one. Another spelling of a known option
/// (`--keyfile`, `--log_level`) is an error with a hint; an unknown name is left to getopts.
pub(super) fn find_long(name: &str) -> Result<Option<&'static Opt>, String> {
    let squash = |s: &str| s.replace(['-', '_'], "").to_ascii_lowercase();
    for o in OPTIONS.iter().filter(|o| !o.long.is_empty()) {
        if name == o.long || name == kebab(o.long) {
            return Ok(Some(o));
        }
        if squash(name) == squash(o.long) {
            return Err(format!(
                "unknown option --{name}: did you mean --{}?",
                o.long
            ));
        }
    }
    Ok(None)
}

/// Rewrite kebab-case long options to their own spelling (getopts has no aliases), keeping `--opt=value`
/// and leaving option values alone, so `-k --log-level` still has the key "--log-level".
pub(super) fn normalise(args: &[OsString]) -> Result<Vec<OsString>, String> {
    let takes_value = |short: char| {
        OPTIONS
            .iter()
            .any(|o| o.value.is_some() && o.short.starts_with(short))
    };
    let mut out = Vec::with_capacity(args.len());
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let Some(text) = arg.to_str() else {
            out.push(arg.clone());
            continue;
        };
        if text == "--" {
            out.push(arg.clone());
            out.extend(rest.cloned());
            break;
        }
        let mut value_follows = false;
        if let Some(long) = text.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            match find_long(name)? {
                Some(o) => {
                    out.push(match inline {
                        Some(v) => format!("--{}={v}", o.long).into(),
                        None => format!("--{}", o.long).into(),
                    });
                    value_follows = o.value.is_some() && inline.is_none();
                }
                None => out.push(arg.clone()),
            }
        } else if let Some(group) = text.strip_prefix('-') {
            out.push(arg.clone());
            // -k VALUE, -nk VALUE: the first option that takes a value takes the rest of the group, or the
            // next argument if the group ends there.
            if let Some((at, _)) = group.char_indices().find(|&(_, c)| takes_value(c)) {
                value_follows = at + 1 == group.len();
            }
        } else {
            out.push(arg.clone());
        }
        if value_follows {
            out.extend(rest.next().cloned());
        }
    }
    Ok(out)
}

pub(super) fn dashed(name: &str) -> String {
    if name.len() == 1 {
        format!("-{name}")
    } else {
        format!("--{name}")
    }
}
