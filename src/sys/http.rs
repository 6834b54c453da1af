//! The `--metrics` endpoint: just enough HTTP/1.x for a Prometheus scrape, on a thread of its own.
//!
//! `GET /metrics` gets the text the agent's core renders (crate::metrics); any other request 404, one that is
//! not HTTP or too long 400. Every answer closes the connection. Nothing here can hold the agent: the data path
//! never waits for this thread, and this thread waits for no client. It polls the listener and at most
//! [`MAX_OPEN`] connections at once (a new one beyond that closes the oldest), reads without blocking, gives a
//! connection [`DEADLINE`] to send its whole request of at most [`MAX_REQUEST`] bytes, writes the answer within
//! one second in all, and serves a text rendered less than 250 ms ago to the scrapes that follow (a flood of
//! requests costs the agent's loop four renders a second). So a client that sends garbage, opens a thousand
//! connections, never finishes its request or reads the answer a byte at a time delays the next scrape by a poll
//! round or a second, not by its own timeouts.

use log::{debug, warn};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Connections read at once; a new one beyond this closes the one open longest.
pub const MAX_OPEN: usize = 32;
/// A request must be complete within this of the connection's accept.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// The longest request (request line and headers) read.
pub const MAX_REQUEST: usize = 4096;
/// Writing an answer waits this long at most, in all, for a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// A rendered text is served again to scrapes within this of its render.
const FRESH: Duration = Duration::from_millis(250);
const POLL_MS: libc::c_int = 250;

struct Conn {
    stream: TcpStream,
    request: Vec<u8>,
    since: Instant,
}

/// How long a scrape waits for the agent's core to render the metrics (the relay's loop looks at least every
/// 200 ms, the coordinator at once).
const RENDER_TIMEOUT: Duration = Duration::from_secs(1);

/// A scrape between the metrics thread and the agent's loop, which alone can read its core: the thread sets
/// `wanted` (and wakes the loop), the loop renders and answers. One flag for the loop to look at, a mutex and a
/// condition variable off the data path: no channel types to carry in the static binaries.
#[derive(Default)]
pub struct Scrape {
    wanted: AtomicBool,
    answer: Mutex<Option<String>>,
    answered: Condvar,
}

impl Scrape {
    /// Whether a scrape waits for an answer: one relaxed load, for the agent's loop.
    #[inline]
    pub fn wanted(&self) -> bool {
        self.wanted.load(Relaxed)
    }

    /// The agent's loop: the rendered text for the scrape that waits.
    pub fn answer(&self, text: String) {
        self.wanted.store(false, Relaxed);
        *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
        self.answered.notify_all();
    }

    /// The metrics thread: ask, wake the loop, wait for the text (None if it did not come in time).
    fn ask(&self, wake: &dyn Fn()) -> Option<String> {
        let mut answer = self.answer.lock().unwrap_or_else(|e| e.into_inner());
        *answer = None;
        self.wanted.store(true, Relaxed);
        wake();
        let (mut answer, _) = self
            .answered
            .wait_timeout_while(answer, RENDER_TIMEOUT, |a| a.is_none())
            .unwrap_or_else(|e| e.into_inner());
        answer.take()
    }
}

/// `--metrics ADDR:PORT`: listen there and serve on a thread of its own until the process ends. The agent's loop
/// answers the returned [`Scrape`]; `wake` gets it to look (the relay's loop looks between batches anyway).
pub fn serve_metrics(
    at: &crate::addr::HostPort,
    wake: Box<dyn Fn() + Send>,
) -> Result<(std::net::SocketAddr, Arc<Scrape>), String> {
    let fail = |e: std::io::Error| format!("cannot serve metrics on {at}: {e}");
    let addr = super::socket::resolve(at).map_err(fail)?;
    let listener = TcpListener::bind(addr).map_err(fail)?;
    let bound = listener.local_addr().map_err(fail)?;
    let scrape = Arc::new(Scrape::default());
    let s = scrape.clone();
    serve(listener, Box::new(move || s.ask(&*wake))).map_err(fail)?;
    Ok((bound, scrape))
}

/// Serve `listener` on a new thread until the process ends. `scrape` renders the metrics (None: the core did not
/// answer in time, 503).
fn serve(
    listener: TcpListener,
    scrape: Box<dyn Fn() -> Option<String> + Send>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("metrics".into())
        .stack_size(128 * 1024)
        .spawn(move || run(&listener, &*scrape))?;
    Ok(())
}

fn run(listener: &TcpListener, render: &dyn Fn() -> Option<String>) {
    // Scrapes closer together than this get the last text again: a flood of requests costs the agent's loop one
    // render each FRESH, not one each, and no scrape waits behind another's render.
    let last: std::cell::RefCell<Option<(Instant, String)>> = Default::default();
    let scrape = || {
        if let Some((at, text)) = last.borrow().as_ref() {
            if at.elapsed() < FRESH {
                return Some(text.clone());
            }
        }
        let text = render()?;
        *last.borrow_mut() = Some((Instant::now(), text.clone()));
        Some(text)
    };
    let scrape: &dyn Fn() -> Option<String> = &scrape;
    let mut conns: Vec<Conn> = Vec::new();
    loop {
        let mut fds: Vec<libc::pollfd> = std::iter::once(listener.as_raw_fd())
            .chain(conns.iter().map(|c| c.stream.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs that outlives the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                warn!("metrics: poll failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            continue;
        }
        // Readable connections first, from the back, so that removing one keeps the indexes (and the accept order)
        // of those still to look at.
        for i in (0..conns.len()).rev() {
            if fds[i + 1].revents != 0 && !read_request(&mut conns[i], scrape) {
                conns.remove(i);
            }
        }
        let now = Instant::now();
        conns.retain(|c| now.saturating_duration_since(c.since) < DEADLINE);
        if fds[0].revents != 0 {
            accept(listener, &mut conns, scrape);
        }
    }
}

/// Take the connections waiting to be accepted (a bounded number a round). A request already there is answered
/// at once, so a flood of connections accepted in the same round cannot push a scraper out before it is read.
fn accept(listener: &TcpListener, conns: &mut Vec<Conn>, scrape: &dyn Fn() -> Option<String>) {
    for _ in 0..4 * MAX_OPEN {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let mut c = Conn {
                    stream,
                    request: Vec::new(),
                    since: Instant::now(),
                };
                if !read_request(&mut c, scrape) {
                    continue;
                }
                if conns.len() >= MAX_OPEN {
                    // The one open longest that has sent nothing (a scraper sends its request at once, a hoarder
                    // never), or else the one open longest.
                    let i = conns.iter().position(|c| c.request.is_empty()).unwrap_or(0);
                    conns.remove(i);
                }
                conns.push(c);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) => {
                // Out of descriptors or the like: the listener stays readable, so pause rather than spin.
                debug!("metrics: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                return;
            }
        }
    }
}

/// Read what `c` sent; answer it once the request is complete. False: done with the connection.
fn read_request(c: &mut Conn, scrape: &dyn Fn() -> Option<String>) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                let room = MAX_REQUEST - c.request.len();
                c.request.extend_from_slice(&buf[..n.min(room)]);
                if let Some(answer) = answer(&c.request, n > room, scrape) {
                    respond(&c.stream, &answer);
                    return false;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// The answer to `request` once it is complete (or too long); None while more may come.
fn answer(request: &[u8], overflow: bool, scrape: &dyn Fn() -> Option<String>) -> Option<Vec<u8>> {
    let end = request.windows(4).position(|w| w == b"\r\n\r\n");
    if end.is_none() && !overflow && request.len() < MAX_REQUEST {
        return None;
    }
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line).unwrap_or_default().trim_end();
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let http = version.is_some_and(|v| v.starts_with("HTTP/1.")) && parts.next().is_none();
    Some(match (end, http, method, target) {
        (Some(_), true, Some("GET"), Some(t)) if t.split('?').next() == Some("/metrics") => {
            match scrape() {
                Some(body) => response("200 OK", "text/plain; version=0.0.4; charset=utf-8", &body),
                None => response(
                    "503 Service Unavailable",
                    "text/plain",
                    "the agent did not answer in time\n",
                ),
            }
        }
        (Some(_), true, _, _) => {
            response("404 Not Found", "text/plain", "only GET /metrics is here\n")
        }
        _ => response("400 Bad Request", "text/plain", "not an HTTP/1 request\n"),
    })
}

fn response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Write `answer` (the socket is non-blocking), waiting for room at most WRITE_TIMEOUT in all: a client that
/// reads a byte now and then cannot stretch it.
fn respond(stream: &TcpStream, answer: &[u8]) {
    let mut s = stream;
    let deadline = Instant::now() + WRITE_TIMEOUT;
    let mut rest = answer;
    while !rest.is_empty() {
        match s.write(rest) {
            Ok(0) => return,
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return;
                }
                let mut fd = libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd that outlives the call.
                unsafe { libc::poll(&mut fd, 1, left.as_millis().clamp(1, 1000) as libc::c_int) };
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(a: Option<Vec<u8>>) -> String {
        String::from_utf8(a.expect("an answer")).unwrap()
    }

    #[test]
    fn requests_and_their_answers() {
        let scrape = || Some("x 1\n".to_string());
        let ok = text(answer(
            b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n",
            false,
            &scrape,
        ));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: text/plain; version=0.0.4"));
        assert!(
            ok.ends_with("Content-Length: 4\r\nConnection: close\r\n\r\nx 1\n"),
            "{ok}"
        );
        assert!(
            text(answer(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", false, &scrape)).contains("200 OK")
        );
        for other in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"POST /metrics HTTP/1.1\r\n\r\n",
            b"GET /metricsx HTTP/1.1\r\n\r\n",
        ] {
            assert!(text(answer(other, false, &scrape)).starts_with("HTTP/1.1 404"));
        }
        assert_eq!(
            answer(b"GET /metrics HTTP/1.1\r\nHost: a\r\n", false, &scrape),
            None,
            "not complete yet"
        );
        assert!(text(answer(b"\x16\x03\x01garbage\r\n\r\n", false, &scrape))
            .starts_with("HTTP/1.1 400"));
        assert!(
            text(answer(&[b'a'; MAX_REQUEST], false, &scrape)).starts_with("HTTP/1.1 400"),
            "too long"
        );
        assert!(
            text(answer(b"GET /metrics HTTP/1.1\r\n", true, &scrape)).starts_with("HTTP/1.1 400")
        );
        let late = || None;
        assert!(text(answer(b"GET /metrics HTTP/1.1\r\n\r\n", false, &late))
            .starts_with("HTTP/1.1 503"));
    }
}
