//! The command line: the seed README's options, verbatim, plus a few the issues added.
//! Parsing never touches the network, so a daemon started before DNS works still starts.

use getopts::Options;
use std::ffi::OsString;
use std::time::Duration;

pub const KEY_ENV: &str = "REVERSE_UDP_TUNNEL_KEY";

/// HOST:PORT as given; resolved later (and again when the relay stops answering).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

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
}

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run(Config),
    Help,
    Version,
}

pub const USAGE: &str = "\
Usage:
  reverse-udp-tunnel -s HOST:PORT -o HOST:PORT [options]    inside agent, next to the service, behind NAT
  reverse-udp-tunnel -l [ADDR:]PORT [options]               outside relay, on a public host

Options:
  -s HOST:PORT                  inside: the service to reach, e.g. localhost:51820
  -o HOST:PORT                  inside: the relay's public address, e.g. relay.example.com:1234
  -l [ADDR:]PORT                outside: port to listen on, all addresses (IPv6 and IPv4);
                                or one address: 0.0.0.0:1234, [::]:1234, [::1]:1234
  -n NUMBER                     most tunnels open at once (default 10); same on both sides
  -k SECRET                     shared key that authenticates every control message; same on both sides
      --keyFile PATH            read the key from the first line of PATH instead of -k
      --spares NUMBER           inside: spare tunnels kept ready at the relay (default 4)
      --keepaliveInterval SECONDS
                                keepalive period (default 25); same on both sides
      --connectionTimeout SECONDS
                                inside: close a tunnel idle this long, +-20% (default 60)
      --statusInterval SECONDS  log a status line this often, and at exit (default 0: only at exit)
      --logLevel LEVEL          0 errors, 1 warnings, 2 info (default), 3 debug
  -h, --help                    show this help
  -V, --version                 show the version

The key: give it with -k or --keyFile (not both); either wins over the environment variable
REVERSE_UDP_TUNNEL_KEY. --keyFile or the variable keep it out of ps(1).
HOST is a name, an IPv4 address or an IPv6 address in brackets. See reverse-udp-tunnel(8).
";

fn options() -> Options {
    let mut o = Options::new();
    o.optopt("s", "", "", "HOST:PORT")
        .optopt("o", "", "", "HOST:PORT")
        .optopt("l", "", "", "[ADDR:]PORT")
        .optopt("n", "", "", "NUMBER")
        .optopt("k", "", "", "SECRET")
        .optopt("", "keyFile", "", "PATH")
        .optopt("", "spares", "", "NUMBER")
        .optopt("", "keepaliveInterval", "", "SECONDS")
        .optopt("", "connectionTimeout", "", "SECONDS")
        .optopt("", "statusInterval", "", "SECONDS")
        .optopt("", "logLevel", "", "LEVEL")
        .optflag("h", "help", "")
        .optflag("V", "version", "");
    o
}

/// Parse the arguments (without the program name). `env_key` is REVERSE_UDP_TUNNEL_KEY, if set.
/// The error is one line naming the problem.
pub fn parse(args: &[OsString], env_key: Option<OsString>) -> Result<Command, String> {
    if args.is_empty() {
        return Err("no arguments: give -s and -o (inside agent) or -l (outside relay)".into());
    }
    let m = options().parse(args).map_err(|e| match e {
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
    let key = match (m.opt_str("k"), m.opt_str("keyFile"), env_key) {
        (Some(_), Some(_), _) => return Err("give the key with -k or --keyFile, not both".into()),
        (Some(k), None, _) => k.into_bytes(),
        (None, Some(path), _) => read_key_file(&path)?,
        (None, None, Some(env)) => env.into_encoded_bytes(),
        (None, None, None) => Vec::new(),
    };
    let max_tunnels = number(&m, "n", 10, 1, 100_000)?;
    if matches!(role, Role::Outside { .. }) && m.opt_present("spares") {
        return Err(
            "--spares is an inside option (the relay takes whatever spares the inside sends)"
                .into(),
        );
    }
    let spares = number(&m, "spares", 4, 1, 10_000)?;
    let secs =
        |name, default| number(&m, name, default, 1, 86_400).map(|s| Duration::from_secs(s as u64));
    let status = number(&m, "statusInterval", 0, 0, 86_400)?;
    Ok(Command::Run(Config {
        role,
        max_tunnels,
        key,
        spares,
        keepalive: secs("keepaliveInterval", 25)?,
        idle_timeout: secs("connectionTimeout", 60)?,
        status_interval: (status > 0).then(|| Duration::from_secs(status as u64)),
        log_level: number(&m, "logLevel", 2, 0, 3)? as u8,
    }))
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

fn read_key_file(path: &str) -> Result<Vec<u8>, String> {
    let text = std::fs::read(path).map_err(|e| format!("--keyFile {path}: {e}"))?;
    let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(format!("--keyFile {path}: the file's first line is empty"));
    }
    Ok(line.to_vec())
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
            Command::Run(c) => Ok(c),
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
            ("-l 1 --connectionTimeout 0", "from 1"),
            ("-l 1 -n -5", "-n"),
            ("-l 1 -n 0", "from 1"),
            ("-l 1 --logLevel 4", "from 0 to 3"),
            ("-s [::1:5 -o a:1", "missing ']'"),
            ("-s [::1]5 -o a:1", "missing ':PORT'"),
            ("-s [nothost]:5 -o a:1", "not an IPv6"),
            ("-s ::1:5 -o a:1", "brackets"),
            ("-s a]:5 -o a:1", "brackets"),
            ("-l 1 --spares 3", "inside option"),
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
            Command::Run(c) => c.key,
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

    #[test]
    fn help_and_version() {
        assert_eq!(parse(&["-h".into()], None), Ok(Command::Help));
        assert_eq!(parse(&["--version".into()], None), Ok(Command::Version));
    }
}
