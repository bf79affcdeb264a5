//! The agency dashboard end to end: its API and token over real HTTP, and
//! the page in a real headless Chromium (chromedriver) while a short
//! simulation runs: no console error, the round advancing, the station
//! table, the curve and the map of 21 areas; a screenshot is kept in
//! `target/test-artifacts/dashboard.png`.
//!
//! Without Chromium and chromedriver the browser part is skipped with a
//! message, unless `FEDCRIME_REQUIRE_BROWSER=1` (CI installs both and sets
//! it), where their absence fails the test.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fedcrime_data::Partition;
use fedcrime_server::dashboard::{Board, DashboardSection};
use fedcrime_sim::sim::{self, RunOptions, SimConfig, Transport};
use fedcrime_tests::http;
use fedcrime_tests::webdriver::{find_browser, Session};

const TOKEN: &str = "test-token-0123456789abcdef";

/// A short study of the 21 LAPD areas as stations (the map needs whole areas).
fn study(rounds: u64) -> SimConfig {
    let mut c = SimConfig::default();
    c.data.rows = 6_000;
    c.data.days = 75;
    c.federation.partition = Partition::Natural;
    c.federation.rounds = Some(rounds);
    c.federation.local_epochs = Some(1);
    c.federation.transport = Transport::Memory;
    c.federation.concurrency = Some(2);
    c.centralized.enabled = false;
    c.train.batch_size = 128;
    c.explain.station_scores = false;
    c.seed = 5;
    c
}

fn start(
    runtime: &tokio::runtime::Runtime,
    cfg: &SimConfig,
    token: Option<&str>,
) -> (Arc<Board>, SocketAddr) {
    let board = Arc::new(Board::new(sim::dashboard_run(cfg, "e2e".into())));
    let section = DashboardSection::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        token.map(str::to_string),
    );
    let addr = runtime
        .block_on(section.start(board.clone(), std::future::pending()))
        .unwrap();
    (board, addr)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_api_needs_the_token_and_streams_the_state() {
    let rt = runtime();
    let cfg = study(2);
    let (board, addr) = start(&rt, &cfg, Some(TOKEN));
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];

    // No token: 401 everywhere but the login step; wrong token too.
    for path in ["/", "/api/state", "/api/events", "/assets/dashboard.js"] {
        let r = http::get(addr, path).unwrap();
        assert_eq!(r.status, 401, "{path}: {}", r.text());
    }
    let r = http::request(
        addr,
        "GET",
        "/api/state",
        &[("Authorization", "Bearer nope")],
        &[],
    )
    .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(http::get(addr, "/?token=wrong").unwrap().status, 401);

    // The token in the address becomes an HttpOnly cookie.
    let r = http::get(addr, &format!("/?token={TOKEN}")).unwrap();
    assert_eq!(r.status, 303, "{}", r.text());
    let cookie = r.header("set-cookie").unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let page = http::request(addr, "GET", "/", &[("Cookie", pair.as_str())], &[]).unwrap();
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'self'"));
    assert!(page.text().contains("dashboard.js"));
    for (path, kind) in [
        ("/assets/dashboard.js", "text/javascript"),
        ("/assets/uPlot.iife.min.js", "text/javascript"),
        ("/assets/la-areas.json", "application/json"),
    ] {
        let r = http::request(addr, "GET", path, &auth, &[]).unwrap();
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
    }
    let areas = http::request(addr, "GET", "/assets/la-areas.json", &auth, &[])
        .unwrap()
        .json();
    assert_eq!(areas["areas"].as_array().unwrap().len(), 21);

    // The state, then a run: rounds, stations and the map arrive.
    let s = http::request(addr, "GET", "/api/state", &auth, &[])
        .unwrap()
        .json();
    assert_eq!(s["phase"], "starting");
    assert_eq!(s["run"]["metric"], "macro_f1");
    let tmp = tempfile::tempdir().unwrap();
    sim::simulate(
        &cfg,
        &tmp.path().join("run"),
        RunOptions {
            quiet: true,
            dashboard: Some(board.clone()),
        },
    )
    .unwrap();
    let s = http::request(addr, "GET", "/api/state", &auth, &[])
        .unwrap()
        .json();
    assert_eq!(s["phase"], "finished", "{s}");
    assert_eq!(s["round"], 2);
    let rounds = http::request(addr, "GET", "/api/rounds", &auth, &[])
        .unwrap()
        .json();
    assert_eq!(rounds.as_array().unwrap().len(), 2);
    assert!(rounds[1]["metric"]
        .as_f64()
        .is_some_and(|m| (0.0..=1.0).contains(&m)));
    assert!(rounds[1]["bytes_out"].as_u64().unwrap() > 0);
    let stations = http::request(addr, "GET", "/api/stations", &auth, &[])
        .unwrap()
        .json();
    assert_eq!(stations.as_array().unwrap().len(), 21);
    let map = http::request(addr, "GET", "/api/map", &auth, &[])
        .unwrap()
        .json();
    assert_eq!(map["round"], 2);
    let mapped: BTreeSet<u64> = map["areas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["area"].as_u64().unwrap())
        .collect();
    assert_eq!(mapped.len(), 21, "{map}");
    assert!(map["areas"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| (1.0..=5.0).contains(&a["value"].as_f64().unwrap())));

    // Server-Sent Events: the whole state at once on connect.
    let events = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        )
        .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while !String::from_utf8_lossy(&got).contains("\n\n") || got.len() < 200 {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&got).contains("\"phase\":\"finished\"") {
                break;
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    })
    .join()
    .unwrap();
    assert!(events.contains("text/event-stream"), "{events}");
    assert!(events.contains("event: state"), "{events}");
    assert!(events.contains("\"phase\":\"finished\""), "{events}");
}

#[test]
fn the_page_shows_a_live_simulation_in_a_real_browser() {
    let Some((browser, driver)) = find_browser() else {
        if std::env::var("FEDCRIME_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!("FEDCRIME_REQUIRE_BROWSER=1 but chromium or chromedriver is not on PATH");
        }
        eprintln!(
            "skipped: no chromium and chromedriver on PATH (apt-get install chromium chromium-driver)"
        );
        return;
    };
    let rt = runtime();
    let rounds = 6;
    let cfg = study(rounds);
    let (board, addr) = start(&rt, &cfg, Some(TOKEN));
    let web = Session::start(&browser, &driver).unwrap();
    web.goto(&format!("http://{addr}/?token={TOKEN}")).unwrap();
    web.wait_for(
        "return document.body.dataset.ready === '1'",
        Duration::from_secs(30),
    )
    .unwrap();
    let round_text = "return document.getElementById('round').textContent";
    assert_eq!(web.eval(round_text).unwrap(), "Round 0 / 6");
    assert_eq!(
        web.eval("return document.querySelectorAll('#map path[data-area]').length")
            .unwrap(),
        21
    );

    // The study runs while the page watches.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let study = std::thread::spawn({
        let board = board.clone();
        let cfg = cfg.clone();
        move || {
            sim::simulate(
                &cfg,
                &out,
                RunOptions {
                    quiet: true,
                    dashboard: Some(board),
                },
            )
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
        }
    });
    let mut seen = BTreeSet::new();
    let t0 = std::time::Instant::now();
    loop {
        let text = web.eval(round_text).unwrap();
        if let Some(n) = text
            .as_str()
            .and_then(|t| t.strip_prefix("Round "))
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
        {
            seen.insert(n);
        }
        let phase = web
            .eval("return document.getElementById('phase').dataset.phase")
            .unwrap();
        if phase == "finished" {
            break;
        }
        assert!(
            phase != "failed",
            "the run failed: {:?}",
            board.state().phase_detail
        );
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "no end; rounds seen {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(150));
    }
    study.join().unwrap().unwrap();
    assert!(
        seen.iter().filter(|&&n| n >= 1).count() >= 2,
        "the round did not advance on the page: {seen:?}"
    );
    web.wait_for(
        &format!(
            "return document.getElementById('round').textContent === 'Round {rounds} / {rounds}'"
        ),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(
        web.eval("return document.querySelectorAll('#stations tbody tr[data-station]').length")
            .unwrap(),
        21
    );
    assert_eq!(
        web.eval("return document.querySelectorAll('#curve canvas').length > 0")
            .unwrap(),
        true
    );
    // Every area coloured from the forecast of the last round.
    web.wait_for(
        "return [...document.querySelectorAll('#map path[data-area]')]\
         .filter(p => p.dataset.value !== '').length === 21",
        Duration::from_secs(10),
    )
    .unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    web.screenshot(&dir.join("dashboard.png")).unwrap();
    let png = std::fs::read(dir.join("dashboard.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let errors: Vec<_> = web
        .console()
        .unwrap()
        .into_iter()
        .filter(|(level, _)| level == "SEVERE" || level == "WARNING")
        .collect();
    assert!(errors.is_empty(), "console: {errors:?}");
}

#[test]
fn https_with_client_certificates_lets_in_only_the_agencys_holders() {
    // Over HTTPS with [dashboard.tls] client_ca, the certificate is the
    // credential: no token needed, and a client without one is refused in
    // the handshake. (The same listener serves a station's predictions.)
    let Some(curl) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("curl"))
            .find(|f| f.is_file())
    }) else {
        eprintln!("skipped: no curl on PATH");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    fedcrime_certs::Pki::generate(
        &pki,
        1,
        &fedcrime_certs::PkiOptions::new(time::OffsetDateTime::now_utc(), 30),
    )
    .unwrap();
    let rt = runtime();
    let board = Arc::new(Board::new(sim::dashboard_run(&study(1), "tls".into())));
    let mut section = DashboardSection::new(SocketAddr::from(([0, 0, 0, 0], 0)), None);
    section.tls = Some(fedcrime_net::http::HttpTls {
        cert: pki.join("server.pem"),
        key: pki.join("server.key"),
        client_ca: Some(pki.join("ca.pem")),
    });
    // Reachable from other machines, no token: allowed because of client_ca.
    let addr = rt
        .block_on(section.start(board, std::future::pending()))
        .unwrap();
    let url = format!("https://127.0.0.1:{}/api/state", addr.port());
    let station = fedcrime_certs::station_name(1);
    let run = |with_cert: bool| {
        let mut c = std::process::Command::new(&curl);
        c.args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(pki.join("ca.pem"));
        if with_cert {
            c.arg("--cert")
                .arg(pki.join(format!("stations/{station}.pem")))
                .arg("--key")
                .arg(pki.join(format!("stations/{station}.key")));
        }
        let out = c.arg(&url).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ok = run(true);
    assert!(ok.ends_with("\n200"), "{ok}");
    assert!(ok.contains("\"run\""), "{ok}");
    let refused = run(false);
    assert!(
        !refused.ends_with("200"),
        "a client without a certificate got in: {refused}"
    );

    // Without a token or client certificates, only loopback is allowed.
    let open = DashboardSection::new(SocketAddr::from(([0, 0, 0, 0], 8080)), None);
    assert!(open
        .token()
        .unwrap_err()
        .to_string()
        .contains("reachable from other machines"));
    let short = DashboardSection::new(SocketAddr::from(([127, 0, 0, 1], 8080)), Some("abc".into()));
    assert!(short
        .token()
        .unwrap_err()
        .to_string()
        .contains("at least 16 characters"));
}
