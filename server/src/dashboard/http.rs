//! The dashboard over HTTP: read-only, behind a bearer token (or client
//! certificates when its TLS names a client CA).
//!
//! | path | what |
//! |---|---|
//! | `GET /` | the page; `/?token=T` sets the session cookie and redirects to `/` |
//! | `GET /assets/...` | the page's script, style, uPlot and the LAPD area outlines |
//! | `GET /api/state` | everything, as [`State`](super::State) |
//! | `GET /api/rounds` | finished rounds, oldest first |
//! | `GET /api/stations` | stations |
//! | `GET /api/map` | the forecast map, or `null` |
//! | `GET /api/events` | Server-Sent Events: `event: state` with the whole state on connect and on each change (at most 4 a second) |
//!
//! A request must carry the token as `Authorization: Bearer T` or in the
//! `fedcrime_dashboard` cookie; else 401. The token is compared in
//! constant time.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde::Deserialize;

use super::Board;

/// The cookie holding the token after `/?token=`.
pub const COOKIE: &str = "fedcrime_dashboard";

/// Least time between two SSE state events.
const SSE_MIN_GAP: Duration = Duration::from_millis(250);

const INDEX: &str = include_str!("../../assets/dashboard/index.html");
const SCRIPT: &str = include_str!("../../assets/dashboard/dashboard.js");
const STYLE: &str = include_str!("../../assets/dashboard/dashboard.css");
const UPLOT: &str = include_str!("../../assets/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../assets/vendor/uplot/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("../../assets/vendor/uplot/LICENSE");
const AREAS: &str = include_str!("../../assets/la-areas.json");

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
                   frame-ancestors 'none'";

#[derive(Clone)]
struct Ctx {
    board: Arc<Board>,
    token: Option<Arc<str>>,
}

/// The dashboard's routes over `board`; with `token`, every request must
/// carry it (see the module docs).
pub fn router(board: Arc<Board>, token: Option<String>) -> Router {
    let ctx = Ctx {
        board,
        token: token.map(Arc::from),
    };
    Router::new()
        .route("/", get(index))
        .route(
            "/assets/dashboard.js",
            get(|| asset(SCRIPT, "text/javascript; charset=utf-8")),
        )
        .route(
            "/assets/dashboard.css",
            get(|| asset(STYLE, "text/css; charset=utf-8")),
        )
        .route(
            "/assets/uPlot.iife.min.js",
            get(|| asset(UPLOT, "text/javascript; charset=utf-8")),
        )
        .route(
            "/assets/uPlot.min.css",
            get(|| asset(UPLOT_CSS, "text/css; charset=utf-8")),
        )
        .route(
            "/assets/uPlot.LICENSE.txt",
            get(|| asset(UPLOT_LICENSE, "text/plain; charset=utf-8")),
        )
        .route(
            "/assets/la-areas.json",
            get(|| asset(AREAS, "application/json")),
        )
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/api/state", get(api_state))
        .route("/api/rounds", get(api_rounds))
        .route("/api/stations", get(api_stations))
        .route("/api/map", get(api_map))
        .route("/api/events", get(api_events))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such page") })
        .layer(middleware::from_fn_with_state(ctx.clone(), guard))
        .with_state(ctx)
}

fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// Constant-time comparison of equal-length secrets (length is not secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn presented(h: &HeaderMap) -> Option<String> {
    if let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Some(t) = v.strip_prefix("Bearer ") {
            return Some(t.trim().to_string());
        }
    }
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_string)
        })
}

/// Checks the token (the index page checks `?token=` itself) and adds the
/// security headers.
async fn guard(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let open = req.uri().path() == "/" || req.uri().path() == "/favicon.ico";
    if let (Some(want), false) = (&ctx.token, open) {
        let ok = presented(req.headers()).is_some_and(|t| same(t.as_bytes(), want.as_bytes()));
        if !ok {
            return secure_headers(
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    "the dashboard needs its token: open /?token=TOKEN once, or send Authorization: Bearer TOKEN",
                )
                    .into_response(),
            );
        }
    }
    secure_headers(next.run(req).await)
}

#[derive(Deserialize)]
struct IndexQuery {
    token: Option<String>,
}

async fn index(
    State(ctx): State<Ctx>,
    q: Result<Query<IndexQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let given = q.ok().and_then(|Query(q)| q.token);
    let Some(want) = &ctx.token else {
        return page();
    };
    if let Some(t) = given {
        if same(t.as_bytes(), want.as_bytes()) {
            // The token leaves the address bar for a cookie.
            let mut r = Redirect::to("/").into_response();
            let cookie = format!("{COOKIE}={t}; Path=/; HttpOnly; SameSite=Strict");
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            return r;
        }
        return (StatusCode::UNAUTHORIZED, "wrong token").into_response();
    }
    if presented(&headers).is_some_and(|t| same(t.as_bytes(), want.as_bytes())) {
        page()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            "the dashboard needs its token: open /?token=TOKEN",
        )
            .into_response()
    }
}

fn page() -> Response {
    let mut r = asset_response(INDEX, "text/html; charset=utf-8");
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn asset_response(body: &'static str, kind: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    asset_response(body, kind)
}

fn no_store<T: serde::Serialize>(v: T) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Json(v)).into_response()
}

async fn api_state(State(ctx): State<Ctx>) -> Response {
    no_store(ctx.board.state())
}

async fn api_rounds(State(ctx): State<Ctx>) -> Response {
    no_store(ctx.board.state().rounds)
}

async fn api_stations(State(ctx): State<Ctx>) -> Response {
    no_store(ctx.board.state().stations)
}

async fn api_map(State(ctx): State<Ctx>) -> Response {
    no_store(ctx.board.state().map)
}

async fn api_events(
    State(ctx): State<Ctx>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = ctx.board.subscribe();
    let board = ctx.board.clone();
    // The first event at once; then one per change, at most every SSE_MIN_GAP.
    let events = stream::unfold((rx, board, true), |(mut rx, board, first)| async move {
        if !first {
            tokio::time::sleep(SSE_MIN_GAP).await;
            rx.changed().await.ok()?;
        }
        rx.mark_unchanged();
        let event = SseEvent::default()
            .event("state")
            .json_data(board.state())
            .unwrap_or_else(|_| SseEvent::default().comment("state not serializable"));
        Some((Ok(event), (rx, board, false)))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
