//! End-to-end tests across fedcrime's crates live in `tests/e2e/`, one
//! integration binary with a module per area (keeps link times down).
//!
//! This library holds what those tests share: a minimal blocking HTTP/1.1
//! client ([`http`]) and a minimal WebDriver client ([`webdriver`]) for the
//! headless-browser test of the dashboard. Both are small on purpose: they
//! speak exactly what the tests need, with nothing to configure.

pub mod http {
    //! One request per connection (`Connection: close`), answers read to
    //! the end, chunked bodies decoded.

    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    /// An answer.
    #[derive(Debug, Clone)]
    pub struct Response {
        /// The status code.
        pub status: u16,
        /// Header lines, names lower-cased.
        pub headers: Vec<(String, String)>,
        /// The body.
        pub body: Vec<u8>,
    }

    impl Response {
        /// The first header `name` (lower case).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }

        /// The body as text.
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }

        /// The body as JSON (`Null` when it is not JSON).
        pub fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
        }
    }

    /// Sends `method path` with `headers` and `body` to `addr`.
    pub fn request(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        // Read until the body is complete: some servers keep the
        // connection open despite `Connection: close`.
        let mut raw = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            if let Ok(r) = parse(&raw) {
                if complete(&r, &raw) {
                    return Ok(r);
                }
            }
            let n = s.read(&mut buf)?;
            if n == 0 {
                return parse(&raw);
            }
            raw.extend_from_slice(&buf[..n]);
        }
    }

    /// Whether `raw` holds the whole answer `r` was parsed from.
    fn complete(r: &Response, raw: &[u8]) -> bool {
        if let Some(len) = r
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            return r.body.len() >= len;
        }
        let chunked = r
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        chunked && raw.ends_with(b"0\r\n\r\n")
    }

    /// `GET path`.
    pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
        request(addr, "GET", path, &[], &[])
    }

    /// `POST path` with a JSON body.
    pub fn post_json(
        addr: SocketAddr,
        path: &str,
        body: &serde_json::Value,
    ) -> std::io::Result<Response> {
        request(
            addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    fn bad(msg: &str) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
    }

    fn parse(raw: &[u8]) -> std::io::Result<Response> {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| bad("no end of headers"))?;
        let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("no status line"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut body = raw[end + 4..].to_vec();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        if chunked {
            body = dechunk(&body).unwrap_or_default();
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    fn dechunk(mut b: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let eol = b
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("chunk size"))?;
            let size = std::str::from_utf8(&b[..eol])
                .ok()
                .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
                .ok_or_else(|| bad("chunk size"))?;
            b = &b[eol + 2..];
            if size == 0 {
                return Ok(out);
            }
            if b.len() < size + 2 {
                return Err(bad("short chunk"));
            }
            out.extend_from_slice(&b[..size]);
            b = &b[size + 2..];
        }
    }
}

pub mod webdriver {
    //! A W3C WebDriver session on a local `chromedriver` with headless
    //! Chromium: navigate, run scripts, read the browser's console log and
    //! take screenshots.

    use std::net::{SocketAddr, TcpListener};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use serde_json::{json, Value};

    use super::http;

    /// The system's Chromium and chromedriver, if both are installed.
    pub fn find_browser() -> Option<(String, String)> {
        let which = |names: &[&str]| {
            names.iter().find_map(|n| {
                std::env::var_os("PATH").and_then(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join(n))
                        .find(|f| f.is_file())
                        .map(|f| f.display().to_string())
                })
            })
        };
        Some((
            which(&["chromium", "chromium-browser", "google-chrome"])?,
            which(&["chromedriver"])?,
        ))
    }

    /// A browser session (the driver process is killed on drop).
    pub struct Session {
        driver: Child,
        addr: SocketAddr,
        id: String,
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_or(9515, |a| a.port())
    }

    impl Session {
        /// Starts chromedriver and a headless Chromium at 1280x1800 (the whole
        /// dashboard in one screenshot).
        pub fn start(browser: &str, driver: &str) -> Result<Self, String> {
            let port = free_port();
            let child = Command::new(driver)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("starting {driver}: {e}"))?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut s = Session {
                driver: child,
                addr,
                id: String::new(),
            };
            let t0 = Instant::now();
            while http::get(addr, "/status").is_err() {
                if t0.elapsed() > Duration::from_secs(20) {
                    return Err("chromedriver did not answer in 20 s".into());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let caps = json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:loggingPrefs": {"browser": "ALL"},
                "goog:chromeOptions": {
                    "binary": browser,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,1800"]
                }
            }}});
            let r = http::post_json(addr, "/session", &caps).map_err(|e| e.to_string())?;
            let v = r.json();
            s.id = v["value"]["sessionId"]
                .as_str()
                .ok_or_else(|| format!("no session: {}", r.text()))?
                .to_string();
            Ok(s)
        }

        fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
            let path = format!("/session/{}{path}", self.id);
            let r = match body {
                Some(b) => http::post_json(self.addr, &path, &b),
                None => http::request(self.addr, method, &path, &[], &[]),
            }
            .map_err(|e| e.to_string())?;
            let v = r.json();
            if r.status != 200 {
                return Err(format!("{method} {path}: {} {}", r.status, r.text()));
            }
            Ok(v["value"].clone())
        }

        /// Opens `url`.
        pub fn goto(&self, url: &str) -> Result<(), String> {
            self.cmd("POST", "/url", Some(json!({ "url": url })))
                .map(|_| ())
        }

        /// Runs `script` (a function body; `return` gives the value).
        pub fn eval(&self, script: &str) -> Result<Value, String> {
            self.cmd(
                "POST",
                "/execute/sync",
                Some(json!({ "script": script, "args": [] })),
            )
        }

        /// Waits up to `timeout` for `script` to return a truthy value.
        pub fn wait_for(&self, script: &str, timeout: Duration) -> Result<Value, String> {
            let t0 = Instant::now();
            loop {
                let v = self.eval(script)?;
                if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
                    return Ok(v);
                }
                if t0.elapsed() > timeout {
                    return Err(format!("timed out after {timeout:?} waiting for: {script}"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }

        /// The browser console's entries since the last call (chromedriver's
        /// log endpoint): `(level, message)`.
        pub fn console(&self) -> Result<Vec<(String, String)>, String> {
            let v = self.cmd("POST", "/se/log", Some(json!({"type": "browser"})))?;
            Ok(v.as_array()
                .map(|a| {
                    a.iter()
                        .map(|e| {
                            (
                                e["level"].as_str().unwrap_or("").to_string(),
                                e["message"].as_str().unwrap_or("").to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default())
        }

        /// Saves a PNG screenshot of the window to `path`.
        pub fn screenshot(&self, path: &Path) -> Result<(), String> {
            let v = self.cmd("GET", "/screenshot", None)?;
            let png = base64_decode(v.as_str().ok_or("no screenshot data")?)?;
            std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
        }
    }

    impl Drop for Session {
        fn drop(&mut self) {
            if !self.id.is_empty() {
                let _ = http::request(
                    self.addr,
                    "DELETE",
                    &format!("/session/{}", self.id),
                    &[],
                    &[],
                );
            }
            let _ = self.driver.kill();
            let _ = self.driver.wait();
        }
    }

    fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
        let val = |c: u8| -> Result<u32, String> {
            Ok(match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return Err(format!("bad base64 byte {c}")),
            } as u32)
        };
        let bytes: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
        for chunk in bytes.chunks(4) {
            let pad = chunk.iter().filter(|&&b| b == b'=').count();
            let mut n = 0u32;
            for (i, &b) in chunk.iter().enumerate() {
                n |= if b == b'=' { 0 } else { val(b)? } << (18 - 6 * i);
            }
            let take = 3 - pad;
            out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
        }
        Ok(out)
    }
}
