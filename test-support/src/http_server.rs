//! A small HTTP/1.1 server on 127.0.0.1 for integration tests: std::net and threads only.
//!
//! ```ignore
//! let server = TestServer::start();
//! server.route("/a.tgz", Route::Bytes(b"data".to_vec()));
//! server.serve_dir("/github", mirror_root);       // GET /github/x/y -> mirror_root/x/y
//! fetch(&server.url("/a.tgz"));
//! assert_eq!(server.hits("/a.tgz"), 1);
//! ```
//!
//! Every response closes its connection, so each request is a fresh connection. The server
//! also accepts proxy-style absolute request targets (`GET http://host/path`) and routes
//! them by path, which makes it usable as a plain-HTTP forward proxy in tests; the raw
//! request lines are kept for such assertions. Dropping the server stops it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// What the server answers on one path.
#[derive(Debug, Clone)]
pub enum Route {
    /// 200 with these bytes and a Content-Length.
    Bytes(Vec<u8>),
    /// 200 with these bytes, no Content-Length: the end of the body is the connection close.
    BytesNoLength(Vec<u8>),
    /// This status with a short text body.
    Status(u16),
    /// 302 to this absolute URL.
    Redirect(String),
    /// Announces `claimed` bytes in Content-Length, sends `body` (shorter), then closes.
    Truncated { claimed: u64, body: Vec<u8> },
    /// 200, no Content-Length, `chunk` every `interval` until the client goes away or the
    /// server is dropped. `interval` zero makes an endless fast body.
    Endless { chunk: Vec<u8>, interval: Duration },
    /// Announces `claimed` bytes, sends `body` (shorter), then says nothing more, keeping the
    /// connection open for `hold` (or until the server is dropped): a stalled server.
    Silent { claimed: u64, body: Vec<u8>, hold: Duration },
}

#[derive(Debug, Default)]
struct State {
    routes: HashMap<String, Route>,
    dirs: Vec<(String, PathBuf)>,
    hits: HashMap<String, usize>,
    request_lines: Vec<String>,
}

/// The handshake layer: plain TCP, or TLS (the builder tests' `common::tls`).
pub type Wrap = Arc<dyn Fn(TcpStream) -> io::Result<Box<dyn Conn>> + Send + Sync>;

/// A connection the server can answer on.
pub trait Conn: Read + Write + Send {
    /// End the response cleanly (TLS sends close_notify; TCP shuts down writing).
    fn finish(&mut self);
}

impl Conn for TcpStream {
    fn finish(&mut self) {
        let _ = self.flush();
        let _ = self.shutdown(Shutdown::Write);
    }
}

#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    scheme: &'static str,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl TestServer {
    /// A plain-HTTP server on a free port of 127.0.0.1.
    pub fn start() -> Self {
        Self::start_with("http", Arc::new(|s| Ok(Box::new(s) as Box<dyn Conn>)))
    }

    /// A server whose connections go through `wrap` first (see `tls::https_server`).
    pub fn start_with(scheme: &'static str, wrap: Wrap) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (state, stop) = (Arc::clone(&state), Arc::clone(&stop));
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (state, stop, wrap) = (Arc::clone(&state), Arc::clone(&stop), Arc::clone(&wrap));
                    thread::spawn(move || {
                        if let Ok(conn) = wrap(stream) {
                            let _ = serve(conn, &state, &stop);
                        }
                    });
                }
            })
        };
        Self { addr, scheme, state, stop, accept: Some(accept) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `scheme://127.0.0.1:port`, no trailing slash.
    pub fn base(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The full URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// Answer `path` (exact match, query ignored) with `route`, replacing any earlier route.
    pub fn route(&self, path: &str, route: Route) {
        self.lock().routes.insert(path.to_owned(), route);
    }

    /// Serve the files under `dir` read-only at `prefix` (e.g. `/github`): `prefix/a/b`
    /// answers with `dir/a/b`. Paths are not percent-decoded; `..` is refused.
    pub fn serve_dir(&self, prefix: &str, dir: impl Into<PathBuf>) {
        let prefix = prefix.trim_end_matches('/').to_owned();
        self.lock().dirs.push((prefix, dir.into()));
    }

    /// How many requests arrived for `path`, whatever was answered.
    pub fn hits(&self, path: &str) -> usize {
        self.lock().hits.get(path).copied().unwrap_or(0)
    }

    pub fn total_hits(&self) -> usize {
        self.lock().hits.values().sum()
    }

    /// The request lines received, e.g. `GET http://example.invalid/a HTTP/1.1` via a proxy.
    pub fn request_lines(&self) -> Vec<String> {
        self.lock().request_lines.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking handler thread must not hide the counters from the test.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: Box<dyn Conn>, state: &Mutex<State>, stop: &AtomicBool) -> io::Result<()> {
    let request_line = read_head(&mut conn)?;
    let target = request_line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let path = route_path(&target);
    let answer = {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        s.request_lines.push(request_line);
        *s.hits.entry(path.clone()).or_default() += 1;
        match s.routes.get(&path) {
            Some(route) => Answer::Route(route.clone()),
            None => s
                .dirs
                .iter()
                .find_map(|(prefix, dir)| dir_file(prefix, dir, &path))
                .map_or(Answer::Route(Route::Status(404)), Answer::File),
        }
    };
    match answer {
        Answer::File(path) => {
            let mut file = File::open(&path)?;
            let len = file.metadata()?.len();
            write!(conn, "{}", head(200, Some(len)))?;
            io::copy(&mut file, &mut conn)?;
        }
        Answer::Route(Route::Bytes(body)) => {
            write!(conn, "{}", head(200, Some(body.len() as u64)))?;
            conn.write_all(&body)?;
        }
        Answer::Route(Route::BytesNoLength(body)) => {
            write!(conn, "{}", head(200, None))?;
            conn.write_all(&body)?;
        }
        Answer::Route(Route::Status(code)) => {
            let body = format!("status {code}\n");
            write!(conn, "{}{body}", head(code, Some(body.len() as u64)))?;
        }
        Answer::Route(Route::Redirect(location)) => {
            write!(conn, "{}", head_with(302, Some(0), &format!("Location: {location}\r\n")))?;
        }
        Answer::Route(Route::Truncated { claimed, body }) => {
            write!(conn, "{}", head(200, Some(claimed)))?;
            conn.write_all(&body)?;
        }
        Answer::Route(Route::Silent { claimed, body, hold }) => {
            write!(conn, "{}", head(200, Some(claimed)))?;
            conn.write_all(&body)?;
            conn.flush()?;
            let until = std::time::Instant::now() + hold;
            while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                thread::sleep(Duration::from_millis(20));
            }
            return Ok(());
        }
        Answer::Route(Route::Endless { chunk, interval }) => {
            write!(conn, "{}", head(200, None))?;
            while !stop.load(Ordering::SeqCst) {
                conn.write_all(&chunk)?;
                conn.flush()?;
                if !interval.is_zero() {
                    thread::sleep(interval);
                }
            }
            return Ok(());
        }
    }
    conn.finish();
    Ok(())
}

enum Answer {
    Route(Route),
    File(PathBuf),
}

/// Read up to the blank line ending the request head; return its first line.
fn read_head(conn: &mut Box<dyn Conn>) -> io::Result<String> {
    let mut reader = BufReader::new((&mut **conn).take(64 * 1024));
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    Ok(first.trim_end().to_owned())
}

/// The path of a request target, from origin form (`/a?q`) or proxy form (`http://h/a`).
fn route_path(target: &str) -> String {
    let without_origin = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    without_origin.split(['?', '#']).next().unwrap_or("/").to_owned()
}

fn dir_file(prefix: &str, dir: &Path, path: &str) -> Option<PathBuf> {
    let rest = path.strip_prefix(prefix)?.strip_prefix('/')?;
    let rel = Path::new(rest);
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    let file = dir.join(rel);
    file.is_file().then_some(file)
}

fn head(status: u16, length: Option<u64>) -> String {
    head_with(status, length, "")
}

/// A response head; `extra` is more header lines, each ending in CRLF.
fn head_with(status: u16, length: Option<u64>, extra: &str) -> String {
    let reason = match status {
        200 => "OK",
        302 => "Found",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let length = length.map(|n| format!("Content-Length: {n}\r\n")).unwrap_or_default();
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/octet-stream\r\n{length}{extra}Connection: close\r\n\r\n"
    )
}
