//! Log lines as stderr, journald and syslog read them.

#[test]
fn rfc3339_utc_to_the_nanosecond() {
    use std::time::{Duration, UNIX_EPOCH};
    let at = |secs, nanos| rfc3339(UNIX_EPOCH + Duration::new(secs, nanos));
    assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000000Z");
    assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
    assert_eq!(
        at(1_795_980_640, 202_056_263),
        "2026-11-29T19:30:40.202056263Z"
    );
    assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000000000Z");
    assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000000Z");
}
use super::*;

#[test]
fn priorities_follow_sd_daemon() {
    let levels = [Level::Error, Level::Warn, Level::Info, Level::Debug];
    let got: Vec<u8> = levels.iter().map(|&l| severity(l)).collect();
    assert_eq!(got, [3, 4, 6, 7]);
}

#[test]
fn journal_lines_carry_the_priority_and_no_timestamp() {
    assert_eq!(
        journal_lines(Level::Info, "", "relay listening on [::]:1234"),
        "<6>relay listening on [::]:1234\n"
    );
    assert_eq!(
        journal_lines(Level::Warn, "home: ", "all 10 tunnels in use"),
        "<4>home: all 10 tunnels in use\n"
    );
    // A message with a newline stays two lines of the same priority.
    assert_eq!(journal_lines(Level::Error, "", "a\nb"), "<3>a\n<3>b\n");
}

#[test]
fn syslog_datagram_is_rfc3164_daemon_facility() {
    let d = syslog_datagram(Level::Info, "Nov  5 09:03:07", 42, "home: ", "status: x");
    assert_eq!(
        d,
        "<30>Nov  5 09:03:07 reverse-udp-tunnel[42]: home: status: x"
    );
    let pri = |l| syslog_datagram(l, "T", 1, "", "m")[..4].to_string();
    assert_eq!(pri(Level::Error), "<27>");
    assert_eq!(pri(Level::Warn), "<28>");
    assert_eq!(pri(Level::Debug), "<31>");
}

#[test]
fn syslog_time_has_the_rfc3164_shape() {
    let t = syslog_time(1_700_000_000);
    let b = t.as_bytes();
    assert_eq!(t.len(), 15, "{t:?}");
    assert!(b[..3].iter().all(u8::is_ascii_alphabetic), "{t:?}");
    assert_eq!((b[3], b[6], b[9], b[12]), (b' ', b' ', b':', b':'), "{t:?}");
    assert!(
        b[5].is_ascii_digit() && b[4] != b'0',
        "day is space-padded: {t:?}"
    );
}

#[test]
fn journal_stream_must_name_our_device_and_inode() {
    assert!(journal_stream_is(OsStr::new("8:12345"), 8, 12345));
    for other in [
        "8:12346",
        "9:12345",
        "8",
        "",
        "x:y",
        "8:12345:1",
        " 8:12345",
    ] {
        assert!(!journal_stream_is(OsStr::new(other), 8, 12345), "{other:?}");
    }
}

#[test]
fn filter_lets_status_lines_through_at_every_level() {
    let logger = Logger::new(LevelFilter::Error, None, Mode::Stderr, PathBuf::new());
    let meta = |level, target| Metadata::builder().level(level).target(target).build();
    assert!(logger.enabled(&meta(Level::Error, "rut::outside")));
    assert!(!logger.enabled(&meta(Level::Warn, "rut::outside")));
    assert!(!logger.enabled(&meta(Level::Info, "rut::outside")));
    assert!(logger.enabled(&meta(Level::Info, STATUS_TARGET)));
}

#[test]
fn syslog_mode_sends_one_datagram_per_line() {
    let dir = std::env::temp_dir().join(format!("rut-syslog-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("log");
    let _ = std::fs::remove_file(&path);
    let server = UnixDatagram::bind(&path).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let logger = Logger::new(LevelFilter::Info, Some("home"), Mode::Syslog, path.clone());
    logger.log(
        &Record::builder()
            .level(Level::Warn)
            .target("rut::inside")
            .args(format_args!("no answer from the relay"))
            .build(),
    );
    let mut buf = [0u8; 512];
    let n = server.recv(&mut buf).unwrap();
    let got = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(got.starts_with("<28>"), "{got:?}");
    let want = format!(
        " reverse-udp-tunnel[{}]: home: no answer from the relay",
        std::process::id()
    );
    assert!(got.ends_with(&want), "{got:?}");
    // Below the level: nothing sent.
    logger.log(
        &Record::builder()
            .level(Level::Debug)
            .args(format_args!("x"))
            .build(),
    );
    server.set_nonblocking(true).unwrap();
    assert!(server.recv(&mut buf).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
