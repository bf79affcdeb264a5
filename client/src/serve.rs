//! The station's prediction service (`fedcrime-client serve`): HTTP over
//! the station's [`LiveStation`], speaking the Open Inference Protocol
//! (KServe v2) plus plain prediction and ingestion endpoints.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /v2/health/live` | 200 while the process runs |
//! | `GET /v2/health/ready` | 200 once a model is loaded, else 503 |
//! | `GET /v2` | server metadata |
//! | `GET /v2/models/{name}` | model metadata: inputs, outputs, version (= federated round) |
//! | `GET /v2/models/{name}/ready` | 200 once loaded |
//! | `POST /v2/models/{name}/infer` | OIP tensors (`inputs[0]`: FP32 `[n, dim]`), or `{"areas": [..], "at": [..]}` |
//! | `GET /predict/risk?area=7&at=next` | risk level 1-5 with class probabilities |
//! | `GET /predict/counts?area=7&at=2024-03-01` | expected counts per crime category |
//! | `POST /incidents` | LAPD-schema rows (CSV or JSON), stored durably before the reply |
//! | `GET /incidents/{dr_no}` | one incident of the history (records or ingested), 404 if unknown |
//!
//! Errors are JSON `{"error": "..."}` naming the field: 400 a malformed
//! body or row (the whole batch is refused), 404 an unknown model or an
//! area the station does not serve, 409 the wrong task's endpoint, 413 a
//! body over `serve.max_body_bytes` or more rows than `serve.max_rows`, 415
//! the content type, 422 a request value out of range (area, time, an
//! incident's area or date), 503 no model yet, 500 the store or the model
//! failed (nothing acknowledged).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use fedcrime_data::tasks::TimeUnit;
use fedcrime_data::{area, Task};
use fedcrime_station::ingest::{parse_rows, IngestError};
use fedcrime_station::live::{step_label, step_start, Answer, LiveError, LiveStation};
use fedcrime_station::predict::{Prediction, Served};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What the handlers share.
#[derive(Debug)]
pub struct Service {
    /// The station's records and model.
    pub live: Arc<LiveStation>,
    /// The model's name in the `/v2/models/{name}` paths.
    pub name: String,
    /// Rows of one `POST /incidents` at most.
    pub max_rows: usize,
    /// Reply bodies of `/predict/*` by (model serial, data generation,
    /// step, area), when the live station caches: an unchanged question
    /// gets the same bytes without building them again.
    pub replies: std::sync::Mutex<std::collections::HashMap<ReplyKey, Bytes>>,
}

/// The key of a cached reply: the model's serial, the data generation and
/// the question (endpoint, areas, steps).
pub type ReplyKey = (u64, u64, String);

/// Cached replies kept before the cache is emptied.
const REPLY_CACHE: usize = 1024;

impl Service {
    /// A service over `live`.
    pub fn new(live: Arc<LiveStation>, name: String, max_rows: usize) -> Self {
        Service {
            live,
            name,
            max_rows,
            replies: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }
}

fn json_bytes(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The reply body to `question` asked of `model`: from the cache when the
/// station caches and nothing changed, else made by `make` (and kept if
/// `model` is still the one served).
fn cached_reply(
    s: &Service,
    model: &Arc<Served>,
    question: String,
    make: impl FnOnce() -> ApiResult<Value>,
) -> ApiResult<Bytes> {
    // The generation before the prediction: a reply cached under it was
    // made from at least that generation's data.
    let key = (model.serial(), s.live.generation(), question);
    let caching = s.live.caching();
    if caching {
        let replies = s.replies.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(body) = replies.get(&key) {
            return Ok(body.clone());
        }
    }
    let body =
        Bytes::from(serde_json::to_vec(&make()?).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("reply: {e}"))
        })?);
    if caching && s.live.model().is_ok_and(|m| Arc::ptr_eq(model, &m)) {
        let mut replies = s.replies.lock().unwrap_or_else(|p| p.into_inner());
        if replies.len() >= REPLY_CACHE {
            replies.clear();
        }
        replies.insert(key, body.clone());
    }
    Ok(body)
}

/// An error reply: status and message.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        ApiError(status, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<LiveError> for ApiError {
    fn from(e: LiveError) -> Self {
        let status = match &e {
            LiveError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            LiveError::NotServed { .. } => StatusCode::NOT_FOUND,
            LiveError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            LiveError::Ingest(IngestError::ContentType(_)) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            LiveError::Ingest(_) => StatusCode::BAD_REQUEST,
            LiveError::Store(_) | LiveError::Model(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "prediction service");
        }
        ApiError(status, e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError(e.status(), format!("JSON body: {}", e.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError(StatusCode::BAD_REQUEST, e.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError(
                e.status(),
                "the body is larger than serve.max_body_bytes allows; send fewer rows per request"
                    .into(),
            );
        }
        ApiError(e.status(), e.body_text())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The service's routes over `service`, with bodies limited to `max_body`
/// bytes.
pub fn router(service: Arc<Service>, max_body: usize) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(|| async { Json(json!({ "live": true })) }))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/predict/risk", get(predict_risk))
        .route("/predict/counts", get(predict_counts))
        .route("/incidents", post(incidents))
        .route("/incidents/{dr_no}", get(incident))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint: see /v2, /v2/models/{name}, /predict/risk, /predict/counts, /incidents",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(service)
}

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "fedcrime-client",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
}

async fn ready(State(s): State<Arc<Service>>) -> ApiResult<Json<Value>> {
    let m = s.live.model()?;
    Ok(Json(json!({ "ready": true, "version": m.version })))
}

fn check_name(s: &Service, name: &str) -> ApiResult<()> {
    if name == s.name {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("model {name:?}: this station serves {:?}", s.name),
        ))
    }
}

fn task_name(task: Task) -> &'static str {
    match task {
        Task::Risk => "risk",
        Task::Counts => "counts",
    }
}

async fn model_ready(
    State(s): State<Arc<Service>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    check_name(&s, &name)?;
    ready(State(s)).await
}

async fn model_metadata(
    State(s): State<Arc<Service>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    check_name(&s, &name)?;
    let m = s.live.model()?;
    let inputs = m.inputs();
    let outputs = m.output_names();
    Ok(Json(json!({
        "name": s.name,
        "versions": [m.version],
        "platform": "libtorch",
        "inputs": [{
            "name": "input",
            "datatype": "FP32",
            "shape": [-1, inputs.dim()],
        }],
        "outputs": [{
            "name": output_tensor(m.task()),
            "datatype": "FP32",
            "shape": [-1, outputs.len()],
        }],
        "parameters": {
            "round": m.round,
            "task": task_name(m.task()),
            "model": m.kind().to_string(),
            "time_unit": m.time_unit().name(),
            "areas": s.live.areas(),
            "output_names": outputs,
            "input_layout": {
                "features": inputs.feature_dim,
                "sequence_steps": inputs.steps,
                "sequence_step_dim": inputs.step_dim,
                "note": "one row = the scaled features, then the sequence view (oldest step first)"
            },
            "data_generation": s.live.generation(),
        },
    })))
}

fn output_tensor(task: Task) -> &'static str {
    match task {
        Task::Risk => "probabilities",
        Task::Counts => "expected_counts",
    }
}

/// `?area=..&at=..`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictQuery {
    area: Option<String>,
    at: Option<String>,
}

fn parse_area(s: &str) -> ApiResult<u8> {
    let s = s.trim();
    if let Ok(code) = s.parse::<u8>() {
        return Ok(code);
    }
    fedcrime_data::AREAS
        .iter()
        .find(|a| a.name.eq_ignore_ascii_case(s))
        .map(|a| a.code)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("area: {s:?} is neither an LAPD area code (1..=21) nor an area name"),
            )
        })
}

/// One prediction as the service writes it.
#[derive(Debug, Serialize)]
struct PredictionOut {
    area: u8,
    area_name: &'static str,
    step: u32,
    at: String,
    period: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    risk_level: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    probabilities: Option<BTreeMap<String, f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected_counts: Option<BTreeMap<String, f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected_total: Option<f32>,
}

fn out(p: &Prediction, unit: TimeUnit) -> PredictionOut {
    let counts = (!p.expected_counts.is_empty()).then(|| p.expected_counts.clone());
    PredictionOut {
        area: p.area,
        area_name: area(p.area).map_or("?", |a| a.name),
        step: p.step,
        at: step_start(unit, p.step),
        period: step_label(unit, p.step),
        risk_level: p.risk_level,
        probabilities: (!p.probabilities.is_empty()).then(|| {
            p.probabilities
                .iter()
                .enumerate()
                .map(|(k, v)| ((k + 1).to_string(), *v))
                .collect()
        }),
        expected_total: counts.as_ref().map(|c| c.values().sum()),
        expected_counts: counts,
    }
}

fn answer_json(name: &str, answers: &[Answer]) -> Value {
    let model = &answers[0].model;
    let unit = model.time_unit();
    json!({
        "model_name": name,
        "model_version": model.version,
        "round": model.round,
        "task": task_name(model.task()),
        "predictions": answers
            .iter()
            .flat_map(|a| a.predictions.iter().map(move |p| out(p, unit)))
            .collect::<Vec<_>>(),
    })
}

async fn predict_task(s: &Service, q: PredictQuery, task: Task) -> ApiResult<Response> {
    let model = s.live.model()?;
    if model.task() != task {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "this station serves a {} model: use /predict/{}",
                task_name(model.task()),
                task_name(model.task())
            ),
        ));
    }
    let area = q.area.as_deref().map(parse_area).transpose()?;
    let step = s
        .live
        .step_at(q.at.as_deref().unwrap_or("next"), model.time_unit())?;
    let question = format!("predict|{step}|{area:?}");
    let body = cached_reply(s, &model, question, || {
        let answer = s.live.predict(area, step)?;
        Ok(answer_json(&s.name, &[answer]))
    })?;
    Ok(json_bytes(body))
}

async fn predict_risk(
    State(s): State<Arc<Service>>,
    q: Result<Query<PredictQuery>, QueryRejection>,
) -> ApiResult<Response> {
    predict_task(&s, q?.0, Task::Risk).await
}

async fn predict_counts(
    State(s): State<Arc<Service>>,
    q: Result<Query<PredictQuery>, QueryRejection>,
) -> ApiResult<Response> {
    predict_task(&s, q?.0, Task::Counts).await
}

/// The query form of an infer request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InferQuery {
    #[serde(default)]
    id: Option<String>,
    /// Area codes or names; absent: every area served.
    #[serde(default)]
    areas: Option<Vec<Value>>,
    /// Times (`next`, dates, date-times); absent: `["next"]`.
    #[serde(default)]
    at: Option<Vec<String>>,
    /// Instead of `at`: the last N periods up to and including the next one.
    #[serde(default)]
    periods: Option<u32>,
}

/// The tensor form (Open Inference Protocol).
#[derive(Debug, Deserialize)]
struct InferTensors {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<InferInput>,
}

#[derive(Debug, Deserialize)]
struct InferInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Vec<f32>,
}

/// Rows of one tensor infer request at most.
const MAX_INFER_ROWS: usize = 10_000;

/// Periods of one query infer request at most (a week of 4-hour blocks).
const MAX_PERIODS: u32 = 42;

async fn infer(
    State(s): State<Arc<Service>>,
    Path(name): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Response> {
    check_name(&s, &name)?;
    let Json(body) = body?;
    let model = s.live.model()?;
    if body.get("inputs").is_some() {
        let req: InferTensors = serde_json::from_value(body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("inputs: {e}")))?;
        return infer_tensors(&s, &model, req).map(IntoResponse::into_response);
    }
    let req: InferQuery = serde_json::from_value(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "infer body: {e} (send OIP \"inputs\", or \"areas\" with \"at\" or \"periods\")"
            ),
        )
    })?;
    let areas: Vec<Option<u8>> = match &req.areas {
        None => vec![None],
        Some(list) if list.is_empty() => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "areas: empty list",
            ))
        }
        Some(list) => list
            .iter()
            .map(|v| match v {
                Value::Number(n) => n
                    .as_u64()
                    .and_then(|c| u8::try_from(c).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            format!("areas: {n} is not an LAPD area code (1..=21)"),
                        )
                    }),
                Value::String(t) => parse_area(t).map(Some),
                other => Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("areas: {other} is neither a code nor a name"),
                )),
            })
            .collect::<ApiResult<_>>()?,
    };
    let unit = model.time_unit();
    let steps: Vec<u32> = match (&req.at, req.periods) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "give \"at\" or \"periods\", not both",
            ))
        }
        (None, Some(n)) => {
            if n == 0 || n > MAX_PERIODS {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("periods: 1 to {MAX_PERIODS}"),
                ));
            }
            let next = s.live.next_step(unit)?;
            (next.saturating_sub(n - 1)..=next).collect()
        }
        (Some(at), None) => at
            .iter()
            .map(|a| s.live.step_at(a, unit))
            .collect::<Result<_, _>>()?,
        (None, None) => vec![s.live.next_step(unit)?],
    };
    if steps.len() > MAX_PERIODS as usize || areas.len() > 21 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("at most {MAX_PERIODS} times and 21 areas per request"),
        ));
    }
    let make = || -> ApiResult<Value> {
        let mut answers = Vec::with_capacity(steps.len() * areas.len());
        for &step in &steps {
            for &a in &areas {
                let mut answer = s.live.predict(a, step)?;
                // One model for the whole reply, even across a swap.
                if !Arc::ptr_eq(&answer.model, &model) {
                    answer = Answer {
                        predictions: model_predictions(&s, &model, a, step)?,
                        model: model.clone(),
                        step,
                    };
                }
                answers.push(answer);
            }
        }
        Ok(answer_json(&s.name, &answers))
    };
    match req.id {
        // A reply naming its request is not shared.
        Some(id) => {
            let mut reply = make()?;
            reply["id"] = Value::String(id);
            Ok(Json(reply).into_response())
        }
        None => {
            let question = format!("infer|{areas:?}|{steps:?}");
            Ok(json_bytes(cached_reply(&s, &model, question, make)?))
        }
    }
}

/// Predictions of `model` itself (not the slot's current one).
fn model_predictions(
    s: &Service,
    model: &Served,
    area: Option<u8>,
    step: u32,
) -> ApiResult<Vec<Prediction>> {
    let history = s.live.history();
    let all = model
        .predict(&history, step)
        .map_err(|e| ApiError::from(LiveError::Model(e)))?;
    let served = s.live.areas();
    Ok(all
        .into_iter()
        .filter(|p| area.map_or(served.contains(&p.area), |a| a == p.area))
        .collect())
}

fn infer_tensors(s: &Service, model: &Served, req: InferTensors) -> ApiResult<Json<Value>> {
    let dim = model.inputs().dim();
    let [input] = req.inputs.as_slice() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "inputs: one tensor \"input\" expected, got {}",
                req.inputs.len()
            ),
        ));
    };
    let bad = |msg: String| ApiError::new(StatusCode::BAD_REQUEST, format!("inputs[0]: {msg}"));
    if input.name != "input" {
        return Err(bad(format!(
            "name {:?}: the model's input is \"input\"",
            input.name
        )));
    }
    if input.datatype != "FP32" {
        return Err(bad(format!(
            "datatype {:?}: expected \"FP32\"",
            input.datatype
        )));
    }
    let n = match input.shape.as_slice() {
        [n, d] if *n > 0 && *d == dim as i64 && (*n as usize) <= MAX_INFER_ROWS => *n as usize,
        _ => {
            return Err(bad(format!(
                "shape {:?}: expected [n, {dim}] with 1 <= n <= {MAX_INFER_ROWS}",
                input.shape
            )))
        }
    };
    if input.data.len() != n * dim {
        return Err(bad(format!(
            "{} values for shape [{n}, {dim}] ({} expected)",
            input.data.len(),
            n * dim
        )));
    }
    if let Some(i) = input.data.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!("data[{i}] is not a finite number")));
    }
    let values = model.infer(&input.data, n).map_err(LiveError::Model)?;
    let width = values.len() / n;
    let mut reply = json!({
        "model_name": s.name,
        "model_version": model.version,
        "outputs": [{
            "name": output_tensor(model.task()),
            "datatype": "FP32",
            "shape": [n, width],
            "data": values,
        }],
        "parameters": { "round": model.round, "output_names": model.output_names() },
    });
    if let Some(id) = req.id {
        reply["id"] = Value::String(id);
    }
    Ok(Json(reply))
}

async fn incident(
    State(s): State<Arc<Service>>,
    Path(dr_no): Path<String>,
) -> ApiResult<Json<Value>> {
    let n: u64 = dr_no.trim().parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("DR_NO {dr_no:?} is not a number"),
        )
    })?;
    let found = s.live.incident(n).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, format!("no incident with DR_NO {n}"))
    })?;
    Ok(Json(serde_json::to_value(found).unwrap_or(Value::Null)))
}

async fn incidents(
    State(s): State<Arc<Service>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let body = body?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (rows, repeated) = parse_rows(&body, content_type).map_err(LiveError::from)?;
    if rows.len() > s.max_rows {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} rows: at most {} per request", rows.len(), s.max_rows),
        ));
    }
    let live = s.live.clone();
    // Writing and syncing the store blocks: off the async threads.
    let mut done = tokio::task::spawn_blocking(move || live.ingest(&rows))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("ingestion: {e}"))
        })??;
    done.duplicates += repeated;
    Ok(Json(serde_json::to_value(done).unwrap_or(Value::Null)))
}

/// A running service.
#[derive(Debug)]
pub struct Running {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Whether it speaks HTTPS.
    pub tls: bool,
    /// The station behind it.
    pub live: Arc<LiveStation>,
    /// The server task; it ends when the shutdown future passed to
    /// [`start`] resolves.
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Loads a model file, or `model.safetensors` in a folder.
pub fn load_served(path: &std::path::Path, device: tch::Device) -> crate::Result<Served> {
    let file = if path.is_dir() {
        path.join("model.safetensors")
    } else {
        path.to_path_buf()
    };
    Served::load(&file, device)
        .map_err(|e| crate::ClientError::Serve(format!("serve.model {}: {e}", file.display())))
}

/// Opens the station's store over `incidents` (its own records), loads the
/// configured model if any, binds and starts serving until `shutdown`.
pub async fn start(
    section: &crate::config::ServeSection,
    incidents: Vec<fedcrime_data::Incident>,
    areas: Option<std::collections::BTreeSet<u8>>,
    device: tch::Device,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> crate::Result<Running> {
    section.validate()?;
    let store = section.store.clone();
    let model = section.model.clone();
    let caching = section.cache;
    let (live, model) = tokio::task::spawn_blocking(move || -> crate::Result<_> {
        let (live, report) = LiveStation::open(incidents, areas, &store, caching)
            .map_err(|e| crate::ClientError::Serve(e.to_string()))?;
        tracing::info!(
            store = %store.display(),
            loaded = report.loaded,
            torn_bytes_cut = report.truncated_bytes,
            history = live.history().len(),
            "incident store opened"
        );
        let model = model.map(|p| load_served(&p, device)).transpose()?;
        Ok((live, model))
    })
    .await
    .map_err(|e| crate::ClientError::Serve(format!("opening the service: {e}")))??;
    if let Some(m) = model {
        let t = live.next_step(m.time_unit());
        check_model(&m, &live, t.ok())?;
        tracing::info!(version = %m.version, model = %m.kind(), "serving the saved model");
        live.slot().install(m);
    }
    let live = Arc::new(live);
    let listener = fedcrime_net::http::HttpListener::bind(section.listen, section.tls.as_ref())
        .await
        .map_err(|e| crate::ClientError::Serve(format!("serve.listen / serve.tls: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| crate::ClientError::Serve(e.to_string()))?;
    let tls = listener.is_tls();
    let service = Arc::new(Service::new(
        live.clone(),
        section.name.clone(),
        section.max_rows,
    ));
    let app = router(service, section.max_body_bytes);
    let task = tokio::spawn(listener.serve(app, shutdown));
    tracing::info!(
        %addr,
        https = tls,
        model = %section.name,
        areas = ?live.areas(),
        "prediction service listening"
    );
    Ok(Running {
        addr,
        tls,
        live,
        task,
    })
}

/// A model is served only once it answers for the next period with
/// finite values.
fn check_model(m: &Served, live: &LiveStation, next: Option<u32>) -> crate::Result<()> {
    let Some(t) = next else {
        return Ok(());
    };
    let p = m.predict(&live.history(), t).map_err(|e| {
        crate::ClientError::Serve(format!("the model does not fit the records: {e}"))
    })?;
    let finite = p.iter().all(|p| {
        p.probabilities.iter().all(|v| v.is_finite())
            && p.expected_counts.values().all(|v| v.is_finite())
    });
    if !finite {
        return Err(crate::ClientError::Serve(format!(
            "model {} predicts non-finite values",
            m.version
        )));
    }
    Ok(())
}

/// Swaps each global model of the federation into the service (after it
/// was built and checked on its own thread; requests keep the old one
/// meanwhile).
#[derive(Clone, Debug)]
pub struct SwapIn {
    live: Arc<LiveStation>,
    device: tch::Device,
    /// When the run shares no featurizer: the one fitted on the station's
    /// records for a task, fitted once rather than every round.
    own_featurizer:
        Arc<std::sync::Mutex<Option<(fedcrime_data::TaskConfig, fedcrime_data::Featurizer)>>>,
}

impl SwapIn {
    /// Swaps into `live`, building models on `device`.
    pub fn new(live: Arc<LiveStation>, device: tch::Device) -> Self {
        SwapIn {
            live,
            device,
            own_featurizer: Arc::default(),
        }
    }

    /// The featurizer of `setup`: the run's, else the station's own.
    fn featurizer(
        &self,
        setup: &fedcrime_station::protocol::RunSetup,
    ) -> crate::Result<fedcrime_data::Featurizer> {
        if let Some(f) = &setup.featurizer {
            return Ok(f.clone());
        }
        let mut own = self
            .own_featurizer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match own.as_ref() {
            Some((task, f)) if *task == setup.task => Ok(f.clone()),
            _ => {
                // As the station's training fits it.
                let f = fedcrime_data::build_task(&self.live.history(), &setup.task)?.featurizer;
                *own = Some((setup.task, f.clone()));
                Ok(f)
            }
        }
    }

    /// Builds and checks the served model of `params` (blocking).
    pub fn build(
        &self,
        setup: &fedcrime_station::protocol::RunSetup,
        round: u64,
        params: &fedcrime_params::Params,
    ) -> crate::Result<Served> {
        let mut model = fedcrime_ml::model::build(&setup.model, self.device)
            .map_err(|e| crate::ClientError::Serve(e.to_string()))?;
        model
            .import_params(params)
            .map_err(|e| crate::ClientError::Serve(e.to_string()))?;
        let served = Served::new(model, self.featurizer(setup)?, round)
            .map_err(|e| crate::ClientError::Serve(e.to_string()))?;
        let next = self.live.next_step(served.time_unit()).ok();
        check_model(&served, &self.live, next)?;
        Ok(served)
    }
}

impl crate::GlobalModelSink for SwapIn {
    fn global_model(
        &self,
        setup: &fedcrime_station::protocol::RunSetup,
        round: u64,
        params: Arc<fedcrime_params::Params>,
    ) {
        if setup.model.kind == fedcrime_ml::model::ModelKind::GatTcn {
            return;
        }
        if self.live.model().is_ok_and(|m| m.round >= round) {
            return;
        }
        let me = self.clone();
        let setup = setup.clone();
        tokio::task::spawn_blocking(move || match me.build(&setup, round, &params) {
            Ok(served) => {
                let version = served.version.clone();
                if me.live.install_if_newer(served) {
                    tracing::info!(%version, "prediction service: new global model swapped in");
                }
            }
            Err(e) => {
                tracing::warn!(round, error = %e, "prediction service: global model not served")
            }
        });
    }
}

/// Percentiles of repeated timings, microseconds.
#[derive(Debug, Serialize)]
pub struct Timing {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Mean.
    pub mean_us: f64,
}

/// `n` timings of `f` after a warm-up; the first error stops it.
fn timing<E>(mut f: impl FnMut() -> Result<(), E>, n: usize) -> Result<Timing, E> {
    for _ in 0..n.min(20) {
        f()?;
    }
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let s = std::time::Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e6);
    }
    t.sort_by(f64::total_cmp);
    let at = |q: f64| t[((t.len() - 1) as f64 * q).round() as usize];
    Ok(Timing {
        p50_us: at(0.5),
        p99_us: at(0.99),
        mean_us: t.iter().sum::<f64>() / t.len() as f64,
    })
}

/// The reference of the service's latency benchmark: the bare forward pass
/// of `model` on flat rows (1 row; 21 areas x 6 periods = 126 rows), and
/// featurization plus forward pass of every area at the next period from
/// `history` (what a request that misses the cache costs), `n` times each.
pub fn bench_forward(
    model: &Served,
    history: &[fedcrime_data::Incident],
    n: usize,
) -> crate::Result<BTreeMap<String, Timing>> {
    let err = |e: fedcrime_station::StationError| crate::ClientError::Serve(e.to_string());
    let last = history
        .iter()
        .map(|i| (i.date_occurred, i.minute_of_day))
        .max()
        .ok_or_else(|| crate::ClientError::Serve("no records".into()))?;
    let unit = model.time_unit();
    let next = unit
        .step_of(i64::from(last.0), last.1)
        .map(|t| t + 1)
        .ok_or_else(|| crate::ClientError::Serve("dates out of range".into()))?;
    let featurizer_rows = |t: u32| -> crate::Result<Vec<f32>> {
        let ds = model.rows_at(history, t).map_err(err)?;
        let idx: Vec<usize> = (0..ds.len()).collect();
        Ok(model.inputs().rows(&ds, &idx))
    };
    let mut batch = Vec::new();
    for t in next - 5..=next {
        batch.extend(featurizer_rows(t)?);
    }
    let dim = model.inputs().dim();
    let one = batch[..dim].to_vec();
    let mut out = BTreeMap::new();
    out.insert(
        "forward_1_row".into(),
        timing(|| model.infer(&one, 1).map(drop), n).map_err(err)?,
    );
    out.insert(
        "forward_126_rows".into(),
        timing(|| model.infer(&batch, 126).map(drop), n).map_err(err)?,
    );
    out.insert(
        "featurize_and_forward_21_areas".into(),
        timing(|| model.predict(history, next).map(drop), n).map_err(err)?,
    );
    Ok(out)
}
