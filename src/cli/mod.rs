//! The command line: the seed README's options, verbatim, plus a few the issues added.
//! Parsing never touches the network, so a daemon started before DNS works still starts.

pub use crate::addr::HostPort;
use getopts::Options;
use std::ffi::OsString;
use std::time::Duration;

pub const KEY_ENV: &str = "REVERSE_UDP_TUNNEL_KEY";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Inside {
        service: HostPort,
        relay: HostPort,
    },
    /// `host: None` is a bare `-l PORT`: every address, IPv6 and IPv4.
    Outside {
        host: Option<String>,
        port: u16,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub role: Role,
    pub max_tunnels: usize,
    pub key: Vec<u8>,
    pub spares: usize,
    pub keepalive: Duration,
    pub idle_timeout: Duration,
    pub status_interval: Option<Duration>,
    pub log_level: u8,
    /// `--name`: the instance name every log line starts with.
    pub name: Option<String>,
    /// `--syslog`: log to the system log instead of standard error.
    pub syslog: bool,
    /// `--wireguard`: the WireGuard server's public key; the relay then admits only valid handshakes.
    pub wireguard: Option<crate::wire::wireguard::PublicKey>,
}

impl Config {
    /// The settings both sides must share, as said in every control message.
    pub fn shared(&self) -> crate::wire::Shared {
        crate::wire::Shared {
            keepalive: self.keepalive.as_secs().try_into().unwrap_or(u32::MAX),
            max_tunnels: self.max_tunnels.try_into().unwrap_or(u32::MAX),
        }
    }
}

// Made once per process: boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// The configuration, and warnings to log once the logger is set up (a short key, an open key file).
    Run(Config, Vec<String>),
    Help,
    Version,
}

/// Which role takes an option; the other role refuses it with one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Inside,
    Outside,
    Both,
}

/// One option: short and long name (either may be ""), the value's name (None: a flag), who takes it, and
/// its --help text (lines after the first are continued under it). The help says "inside:" or "outside:"
/// by itself, from `side`.
struct Opt {
    short: &'static str,
    long: &'static str,
    value: Option<&'static str>,
    side: Side,
    help: &'static str,
}

const fn opt(
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

use Side::{Both, Inside, Outside};

/// Every option, in --help order. A new option is one line here (and its use in `parse`).
const OPTIONS: &[Opt] = &[
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

fn options() -> Options {
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
fn key(o: &Opt) -> &'static str {
    if o.short.is_empty() {
        o.long
    } else {
        o.short
    }
}

/// `keyFile` → `key-file`.
fn kebab(long: &str) -> String {
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
fn find_long(name: &str) -> Result<Option<&'static Opt>, String> {
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
fn normalise(args: &[OsString]) -> Result<Vec<OsString>, String> {
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

/// Parse the arguments (without the program name). `env_key` is REVERSE_UDP_TUNNEL_KEY, if set.
/// The error is one line naming the problem.
pub fn parse(args: &[OsString], env_key: Option<OsString>) -> Result<Command, String> {
    parse_args(args, env_key).map_err(|e| one_line(&e))
}

/// The error quotes what it was given; control characters in it (a newline from a quoting mistake in an init
/// script) are shown escaped, so the message stays one line.
fn one_line(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

fn parse_args(args: &[OsString], env_key: Option<OsString>) -> Result<Command, String> {
    if args.is_empty() {
        return Err("no arguments: give -s and -o (inside agent) or -l (outside relay)".into());
    }
    let m = options().parse(normalise(args)?).map_err(|e| match e {
        getopts::Fail::ArgumentMissing(o) => format!("{} needs a value", dashed(&o)),
        getopts::Fail::UnrecognizedOption(o) => format!("unknown option {}", dashed(&o)),
        getopts::Fail::OptionDuplicated(o) => format!("{} given more than once", dashed(&o)),
        getopts::Fail::UnexpectedArgument(o) => format!("{} takes no value", dashed(&o)),
        other => other.to_string(),
    })?;
    if let Some(extra) = m.free.first() {
        return Err(format!("unexpected argument '{extra}'"));
    }
    if m.opt_present("h") {
        return Ok(Command::Help);
    }
    if m.opt_present("V") {
        return Ok(Command::Version);
    }
    let role = match (m.opt_str("s"), m.opt_str("o"), m.opt_str("l")) {
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            return Err("-l (outside relay) cannot be combined with -s/-o (inside agent)".into())
        }
        (None, None, Some(l)) => {
            let (host, port) = parse_listen(&l).map_err(|e| format!("-l {l}: {e}"))?;
            Role::Outside { host, port }
        }
        (Some(s), Some(o), None) => Role::Inside {
            service: parse_host_port(&s).map_err(|e| format!("-s {s}: {e}"))?,
            relay: parse_host_port(&o).map_err(|e| format!("-o {o}: {e}"))?,
        },
        (Some(_), None, None) => return Err("-s needs -o: the relay's address".into()),
        (None, Some(_), None) => return Err("-o needs -s: the service's address".into()),
        (None, None, None) => {
            return Err("give -s and -o (inside agent) or -l (outside relay)".into())
        }
    };
    check_sides(&m, &role)?;
    let mut warnings = Vec::new();
    let key = match (m.opt_str("k"), m.opt_str("keyFile"), env_key) {
        (Some(_), Some(_), _) => return Err("give the key with -k or --keyFile, not both".into()),
        (Some(k), None, _) => k.into_bytes(),
        (None, Some(path), _) => {
            let (key, mode) = read_key_file(&path)?;
            // As ssh does: anyone but the owner may read it, then the key is not secret.
            if mode & 0o077 != 0 {
                warnings.push(format!(
                    "permissions {:04o} for {path} are too open: anyone but its owner can read the key (chmod 600 {path})",
                    mode & 0o7777
                ));
            }
            key
        }
        (None, None, Some(env)) => env.into_encoded_bytes(),
        (None, None, None) => Vec::new(),
    };
    if !key.is_empty() && key.len() < MIN_KEY_LEN {
        warnings.push(format!(
            "the key is only {} bytes long: use at least {MIN_KEY_LEN} random bytes (see EXAMPLES in reverse-udp-tunnel(8))",
            key.len()
        ));
    }
    let name = m.opt_str("name");
    if let Some(n) = &name {
        check_name(n)?;
    }
    let max_tunnels = number(&m, "n", 10, 1, 100_000)?;
    let spares = number(&m, "spares", 4, 1, 10_000)?;
    let secs =
        |name, default| number(&m, name, default, 1, 86_400).map(|s| Duration::from_secs(s as u64));
    let status = number(&m, "statusInterval", 0, 0, 86_400)?;
    let cfg = Config {
        role,
        max_tunnels,
        key,
        spares,
        keepalive: secs("keepaliveInterval", 25)?,
        idle_timeout: secs("connectionTimeout", 60)?,
        status_interval: (status > 0).then(|| Duration::from_secs(status as u64)),
        log_level: number(&m, "logLevel", 2, 0, 3)? as u8,
        name,
        syslog: m.opt_present("syslog"),
        wireguard: match m.opt_str("wireguard") {
            Some(k) => Some(k.parse().map_err(|e| format!("--wireguard {k}: {e}"))?),
            None => None,
        },
    };
    Ok(Command::Run(cfg, warnings))
}

/// Shorter keys are warned about (a key is a password here: guessable offline from one captured keepalive).
pub const MIN_KEY_LEN: usize = 16;
/// Longest `--name`.
pub const MAX_NAME_LEN: usize = 32;

/// An option of the other role is refused, whichever it is.
fn check_sides(m: &getopts::Matches, role: &Role) -> Result<(), String> {
    let (ours, refusal) = match role {
        Role::Inside { .. } => (
            Inside,
            "a relay option: the inside agent (-s/-o) does not take it",
        ),
        Role::Outside { .. } => (
            Outside,
            "an inside agent option: the relay (-l) does not take it",
        ),
    };
    match OPTIONS
        .iter()
        .find(|o| o.side != Both && o.side != ours && m.opt_present(key(o)))
    {
        Some(o) => Err(format!("{} is {refusal}", dashed(key(o)))),
        None => Ok(()),
    }
}

/// Printable, no spaces, short: it goes into every log line and must not break one.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "--name {name:?}: use 1 to {MAX_NAME_LEN} printable ASCII characters, no spaces"
        ));
    }
    Ok(())
}

fn dashed(name: &str) -> String {
    if name.len() == 1 {
        format!("-{name}")
    } else {
        format!("--{name}")
    }
}

fn number(
    m: &getopts::Matches,
    name: &str,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, String> {
    let flag = dashed(name);
    let Some(text) = m.opt_str(name) else {
        return Ok(default);
    };
    let n: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("{flag} {text}: not a whole number"))?;
    if n < min || n > max {
        return Err(format!("{flag} {text}: must be from {min} to {max}"));
    }
    Ok(n)
}

/// The key (the file's first line) and the file's permission bits.
fn read_key_file(path: &str) -> Result<(Vec<u8>, u32), String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let fail = |e: std::io::Error| format!("--keyFile {path}: {e}");
    // Mode and contents from the same open file.
    let mut file = std::fs::File::open(path).map_err(fail)?;
    let mode = file.metadata().map_err(fail)?.permissions().mode();
    let mut text = Vec::new();
    file.read_to_end(&mut text).map_err(fail)?;
    let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(format!("--keyFile {path}: the file's first line is empty"));
    }
    Ok((line.to_vec(), mode))
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u32>() {
        _ if text.is_empty() => Err("missing port".into()),
        Ok(0) => Err("port 0 is not allowed".into()),
        Ok(p) if p <= 65535 => Ok(p as u16),
        Ok(_) => Err("port is above 65535".into()),
        Err(_) => Err(format!("port '{text}' is not a number")),
    }
}

/// `host:port`, `1.2.3.4:port` or `[v6]:port`.
pub fn parse_host_port(text: &str) -> Result<HostPort, String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or("missing ']' after the IPv6 address")?;
        let port = after.strip_prefix(':').ok_or("missing ':PORT' after ']'")?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("'{h}' in brackets is not an IPv6 address"));
        }
        (h, port)
    } else {
        let (h, port) = text.rsplit_once(':').ok_or("missing ':PORT'")?;
        if h.contains(':') {
            return Err("write an IPv6 address in brackets, as [2001:db8::1]:1234".into());
        }
        if h.contains(']') || h.contains('[') {
            return Err("malformed brackets".into());
        }
        (h, port)
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    Ok(HostPort {
        host: host.to_string(),
        port: parse_port(port)?,
    })
}

fn parse_listen(text: &str) -> Result<(Option<String>, u16), String> {
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok((None, parse_port(text)?));
    }
    let hp = parse_host_port(text)?;
    Ok((Some(hp.host), hp.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &str) -> Result<Config, String> {
        let v: Vec<OsString> = args.split_whitespace().map(Into::into).collect();
        match parse(&v, None)? {
            Command::Run(c, _) => Ok(c),
            other => panic!("{other:?}"),
        }
    }

    fn err(args: &str) -> String {
        run(args).expect_err(args)
    }

    #[test]
    fn seed_readme_examples() {
        let c = run("-s localhost:51820 -o outside.server.com:1234 -k mysecret -n 100").unwrap();
        assert_eq!(
            c.role,
            Role::Inside {
                service: HostPort {
                    host: "localhost".into(),
                    port: 51820
                },
                relay: HostPort {
                    host: "outside.server.com".into(),
                    port: 1234
                },
            }
        );
        assert_eq!((c.max_tunnels, c.key.as_slice()), (100, &b"mysecret"[..]));
        let c = run("-l 1234 -n 100 -k mysecret").unwrap();
        assert_eq!(
            c.role,
            Role::Outside {
                host: None,
                port: 1234
            }
        );
        assert_eq!(c.keepalive, Duration::from_secs(25));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!((c.spares, c.log_level, c.status_interval), (4, 2, None));
    }

    #[test]
    fn listen_forms_and_long_options() {
        for (arg, host) in [
            ("[::]:1234", "::"),
            ("0.0.0.0:1234", "0.0.0.0"),
            ("[::1]:1234", "::1"),
        ] {
            assert_eq!(
                run(&format!("-l {arg}")).unwrap().role,
                Role::Outside {
                    host: Some(host.into()),
                    port: 1234
                }
            );
        }
        let c = run("-s [::1]:5 -o 127.0.0.1:6 --keepaliveInterval 3 --connectionTimeout=7 --logLevel 3 --spares 9 --statusInterval 5")
            .unwrap();
        assert_eq!(
            (
                c.keepalive.as_secs(),
                c.idle_timeout.as_secs(),
                c.log_level,
                c.spares
            ),
            (3, 7, 3, 9)
        );
        assert_eq!(c.status_interval, Some(Duration::from_secs(5)));
    }

    #[test]
    fn usage_errors_name_the_problem() {
        let cases = [
            ("", "no arguments"),
            ("-l 0", "port 0"),
            ("-l 65536", "above 65535"),
            ("-l", "-l needs a value"),
            ("-h=x", "unknown option"),
            ("-s a:1 -o b:0", "port 0"),
            ("-s a -o b:1", "missing ':PORT'"),
            ("-s a: -o b:1", "missing port"),
            ("-s a:x -o b:1", "not a number"),
            ("-x", "unknown option -x"),
            ("--bogus 1", "unknown option --bogus"),
            ("-l 1 -s a:1", "cannot be combined"),
            ("-l 1 -o a:1", "cannot be combined"),
            ("-s a:1", "-s needs -o"),
            ("-o a:1", "-o needs -s"),
            ("-l 1 --keepaliveInterval abc", "not a whole number"),
            ("-l 1 --keepaliveInterval 0", "from 1"),
            ("-s a:1 -o b:1 --connectionTimeout 0", "from 1"),
            ("-l 1 -n -5", "-n"),
            ("-l 1 -n 0", "from 1"),
            ("-l 1 --logLevel 4", "from 0 to 3"),
            ("-s [::1:5 -o a:1", "missing ']'"),
            ("-s [::1]5 -o a:1", "missing ':PORT'"),
            ("-s [nothost]:5 -o a:1", "not an IPv6"),
            ("-s ::1:5 -o a:1", "brackets"),
            ("-s a]:5 -o a:1", "brackets"),
            ("-l 1 --spares 3", "--spares is an inside agent option"),
            (
                "-l 1 --connectionTimeout 9",
                "--connectionTimeout is an inside agent option",
            ),
            (
                "-l 1 --connection-timeout=9",
                "--connectionTimeout is an inside agent option",
            ),
            ("-l 1 --keyfile k", "did you mean --keyFile?"),
            ("-l 1 --LOGLEVEL 1", "did you mean --logLevel?"),
            ("-l 1 --log_level 1", "did you mean --logLevel?"),
            ("-l 1 --name", "--name needs a value"),
            ("-l 1 --syslog=yes", "--syslog takes no value"),
            ("-l 1 -k a --keyFile /dev/null", "not both"),
            ("-l 1 --keyFile /nonexistent/key", "/nonexistent/key"),
            ("-l 1 --keyFile /dev/null", "empty"),
            ("-l 1 extra", "unexpected argument"),
            ("-l 1 -l 2", "more than once"),
        ];
        for (args, want) in cases {
            let e = err(args);
            assert!(e.contains(want), "{args:?}: {e:?} lacks {want:?}");
            assert!(!e.contains('\n'), "{args:?}: one line");
        }
    }

    #[test]
    fn key_sources_and_precedence() {
        let dir = std::env::temp_dir().join(format!("rut-key-{}", std::process::id()));
        std::fs::write(&dir, b"fromfile\nsecond line\n").unwrap();
        let args = |s: &str| -> Vec<OsString> { s.split_whitespace().map(Into::into).collect() };
        let key = |s: &str, env: Option<&str>| match parse(&args(s), env.map(Into::into)).unwrap() {
            Command::Run(c, _) => c.key,
            _ => unreachable!(),
        };
        let file = dir.to_str().unwrap();
        assert_eq!(
            key(&format!("-l 1 --keyFile {file}"), Some("env")),
            b"fromfile"
        );
        assert_eq!(key("-l 1 -k flag", Some("env")), b"flag");
        assert_eq!(key("-l 1", Some("env")), b"env");
        assert_eq!(key("-l 1", None), b"");
        std::fs::remove_file(dir).unwrap();
    }

    fn parsed(args: &[&str]) -> Result<(Config, Vec<String>), String> {
        let v: Vec<OsString> = args.iter().map(Into::into).collect();
        match parse(&v, None)? {
            Command::Run(c, w) => Ok((c, w)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn kebab_case_spellings_are_aliases() {
        let c = run("-s a:1 -o b:2 --key-file /etc/hostname --keepalive-interval 3 --connection-timeout=7 --status-interval 5 --log-level 3").unwrap();
        assert_eq!(
            (
                c.keepalive.as_secs(),
                c.idle_timeout.as_secs(),
                c.status_interval,
                c.log_level
            ),
            (3, 7, Some(Duration::from_secs(5)), 3)
        );
        // The same option in both spellings is given twice.
        assert!(err("-l 1 --logLevel 1 --log-level 2").contains("--logLevel given more than once"));
        // Values are never rewritten, even when they look like an option.
        let (c, _) = parsed(&["-l", "1", "-k", "--log-level"]).unwrap();
        assert_eq!(c.key, b"--log-level");
        let (c, _) = parsed(&["-l", "1", "--name", "--key-file"]).unwrap();
        assert_eq!(c.name.as_deref(), Some("--key-file"));
        let e = parsed(&["-l1", "-n", "--log-level"]).unwrap_err();
        assert!(e.contains("-n --log-level: not a whole number"), "{e}");
    }

    #[test]
    fn every_option_of_the_other_side_is_refused() {
        for o in OPTIONS.iter().filter(|o| o.side != Both) {
            let flag = dashed(key(o));
            let value = if o.value.is_some() { " 1" } else { "" };
            let (cmd, refused) = match o.side {
                Inside => (format!("-l 1 {flag}{value}"), "inside agent option"),
                _ => (format!("-s a:1 -o b:1 {flag}{value}"), "relay option"),
            };
            let e = err(&cmd);
            // -s/-o/-l themselves are refused by the role check before.
            assert!(
                e.contains(refused) || e.contains("cannot be combined"),
                "{cmd}: {e}"
            );
        }
    }

    #[test]
    fn name_and_syslog() {
        let c = run("-l 1 --name home-2 --syslog").unwrap();
        assert_eq!((c.name.as_deref(), c.syslog), (Some("home-2"), true));
        let c = run("-l 1").unwrap();
        assert_eq!((c.name, c.syslog), (None, false));
        let long = "x".repeat(MAX_NAME_LEN);
        assert!(run(&format!("-l 1 --name {long}")).is_ok());
        for bad in [
            format!("{long}x"),
            "a b".into(),
            "\u{7f}".into(),
            "büro".into(),
            "".into(),
        ] {
            let e = parsed(&["-l", "1", "--name", &bad]).unwrap_err();
            assert!(
                e.starts_with("--name ") && e.contains("printable"),
                "{bad:?}: {e}"
            );
            assert!(
                !e.contains('\n') && !e.chars().any(char::is_control),
                "{e:?}"
            );
        }
    }

    #[test]
    fn short_keys_and_open_key_files_are_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let (_, w) = parsed(&["-l", "1", "-k", "0123456789abcdef"]).unwrap();
        assert!(w.is_empty(), "{w:?}");
        let (_, w) = parsed(&["-l", "1", "-k", "short"]).unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("only 5 bytes"), "{w:?}");
        let (_, w) = parsed(&["-l", "1"]).unwrap();
        assert!(w.is_empty(), "no key is warned about elsewhere: {w:?}");
        let file = std::env::temp_dir().join(format!("rut-key-mode-{}", std::process::id()));
        std::fs::write(&file, b"a-key-of-twenty-bytes\n").unwrap();
        let path = file.to_str().unwrap();
        for (mode, warned) in [(0o600, false), (0o400, false), (0o640, true), (0o604, true)] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let (_, w) = parsed(&["-l", "1", "--keyFile", path]).unwrap();
            let want = format!("permissions {mode:04o} for {path} are too open");
            assert_eq!(
                w.iter().any(|l| l.contains(&want)),
                warned,
                "{mode:o}: {w:?}"
            );
            assert!(w.len() <= 1, "{w:?}");
        }
        std::fs::remove_file(file).unwrap();
    }

    #[test]
    fn help_is_the_table() {
        let help = usage();
        for o in OPTIONS {
            let name = if o.long.is_empty() {
                format!("-{}", o.short)
            } else {
                format!("--{}", o.long)
            };
            assert!(help.contains(&name), "{name} missing:\n{help}");
        }
        assert!(help.contains("  -l [ADDR:]PORT                outside: port to listen on"));
        assert!(help.contains("      --spares NUMBER           inside: spare tunnels"));
        assert!(help.contains(
            "      --keepaliveInterval SECONDS\n                                keepalive period"
        ));
        assert!(help.contains("  -h, --help                    show this help\n"));
        assert!(help.lines().all(|l| l.len() <= 110), "{help}");
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse(&["-h".into()], None), Ok(Command::Help));
        assert_eq!(parse(&["--version".into()], None), Ok(Command::Version));
    }
}
