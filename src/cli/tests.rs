//! The command line as users type it: the seed README's examples, aliases, and one clear line for each mistake.

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

#[test]
fn metrics_and_homes_options() {
    let c = run("-l 1234 -k k --metrics 127.0.0.1:9901").unwrap();
    assert_eq!(
        c.metrics.map(|m| m.to_string()),
        Some("127.0.0.1:9901".to_string())
    );
    let c = run("-s a:1 -o b:2 --metrics [::1]:0").unwrap();
    assert_eq!(
        c.metrics.map(|m| (m.host, m.port)),
        Some(("::1".to_string(), 0))
    );
    assert!(err("-l 1234 --metrics 9901").starts_with("--metrics 9901: missing ':PORT'"));
    assert!(err("-l 1234 --metrics 127.0.0.1:70000")
        .starts_with("--metrics 127.0.0.1:70000: port is above"));
    assert!(err("-s a:1 -o b:2 --homes /x").starts_with("--homes is a relay option"));
    assert!(err("-l 1234 --homes /nonexistent/homes").starts_with("--homes /nonexistent/homes: "));
    for other in [
        "-k x",
        "--keyFile /x",
        "--wireguard HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
    ] {
        let e = err(&format!("-l 1234 --homes /x {other}"));
        assert!(
            e.starts_with("--homes: each home's key is in its line"),
            "{other}: {e}"
        );
    }
    let v: Vec<OsString> = "-l 1234 --homes /x"
        .split_whitespace()
        .map(Into::into)
        .collect();
    let e = parse(&v, Some("k".into())).unwrap_err();
    assert!(e.contains("REVERSE_UDP_TUNNEL_KEY"), "{e}");
}
