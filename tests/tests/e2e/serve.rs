//! A station's prediction service over real HTTP: every endpoint, bad
//! input answered 4xx naming the field, ingestion seen by the next
//! prediction, and models swapped ten times under load with no failed
//! request. (Durability across kill -9 runs on real processes in
//! `.ci/chaos/serve_durability.py`, part of `make chaos-smoke`.)

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fedcrime_client::config::ServeSection;
use fedcrime_client::serve::{self, Running, SwapIn};
use fedcrime_data::synth::generate_incidents;
use fedcrime_data::{build_task, Incident, Task, TaskConfig};
use fedcrime_ml::model::{build, ModelConfig, ModelKind};
use fedcrime_station::predict::Served;
use fedcrime_station::protocol::RunSetup;
use fedcrime_tests::http;
use serde_json::json;

const AREA: u8 = 7;

struct Fixture {
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    running: Running,
    setup: RunSetup,
    later: Vec<Incident>,
}

/// A Wilshire station serving a small risk DNN over all but its last 30
/// incidents (kept back for ingestion).
fn fixture() -> Fixture {
    let all = generate_incidents(30_000, 4);
    let task = TaskConfig::new(Task::Risk);
    let data = build_task(&all, &task).unwrap();
    let mut model = ModelConfig::for_dataset(ModelKind::Dnn, &data.splits.train);
    model.hidden = 16;
    let mut own: Vec<Incident> = all.into_iter().filter(|i| i.area == AREA).collect();
    own.sort_by_key(|i| (i.date_occurred, i.minute_of_day));
    let later = own.split_off(own.len() - 30);
    let setup = RunSetup {
        model,
        task,
        featurizer: Some(data.featurizer),
    };
    let dir = tempfile::tempdir().unwrap();
    let section = ServeSection {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        store: dir.path().join("incidents.store"),
        max_body_bytes: 64 * 1024,
        ..ServeSection::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let running = runtime
        .block_on(serve::start(
            &section,
            own,
            Some(BTreeSet::from([AREA])),
            tch::Device::Cpu,
            std::future::pending(),
        ))
        .unwrap();
    Fixture {
        _dir: dir,
        runtime,
        running,
        setup,
        later,
    }
}

impl Fixture {
    fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// The global model of `round`: seeded weights for the run's setup.
    fn model(&self, round: u64) -> Served {
        tch::manual_seed(round as i64);
        let params = build(&self.setup.model, tch::Device::Cpu)
            .unwrap()
            .export_params();
        SwapIn::new(self.running.live.clone(), tch::Device::Cpu)
            .build(&self.setup, round, &params)
            .unwrap()
    }
}

const HEADER: &str = "DR_NO,Date Rptd,DATE OCC,TIME OCC,AREA,AREA NAME,Rpt Dist No,Part 1-2,Crm Cd,Crm Cd Desc,Mocodes,Vict Age,Vict Sex,Vict Descent,Premis Cd,Premis Desc,Weapon Used Cd,Weapon Desc,Status,Status Desc,Crm Cd 1,Crm Cd 2,Crm Cd 3,Crm Cd 4,LOCATION,Cross Street,LAT,LON";

/// `incidents` as export CSV rows.
fn csv(incidents: &[Incident]) -> String {
    let mut out = format!("{HEADER}\n");
    for i in incidents {
        let (y, m, d) = fedcrime_data::calendar::civil_from_days(i.date_occurred);
        let date = format!("{m:02}/{d:02}/{y:04} 12:00:00 AM");
        out.push_str(&format!(
            "{},{date},{date},{:02}{:02},{:02},Wilshire,0{}01,1,{},X,,30,M,H,101,STREET,,,IC,Invest Cont,{},,,,\"1 MAIN ST\",,{},{}\n",
            i.dr_no,
            i.minute_of_day / 60,
            i.minute_of_day % 60,
            i.area,
            i.area,
            i.crime_code,
            i.crime_code,
            i.lat,
            i.lon
        ));
    }
    out
}

fn post_csv(addr: SocketAddr, body: &str) -> http::Response {
    http::request(
        addr,
        "POST",
        "/incidents",
        &[("Content-Type", "text/csv")],
        body.as_bytes(),
    )
    .unwrap()
}

#[test]
fn every_endpoint_answers_and_bad_input_is_refused_naming_the_field() {
    let f = fixture();
    let a = f.addr();
    assert_eq!(http::get(a, "/v2/health/live").unwrap().status, 200);
    // Not ready before a model.
    let r = http::get(a, "/v2/health/ready").unwrap();
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (503, Some("no model is loaded yet"))
    );
    assert_eq!(http::get(a, "/predict/risk").unwrap().status, 503);
    f.running.live.slot().install(f.model(3));
    assert_eq!(http::get(a, "/v2/health/ready").unwrap().status, 200);

    // Metadata: the version is the federated round.
    let m = http::get(a, "/v2/models/fedcrime").unwrap().json();
    assert_eq!(m["versions"], json!(["round-3"]));
    assert_eq!(m["parameters"]["round"], 3);
    assert_eq!(m["parameters"]["areas"], json!([AREA]));
    let dim = m["inputs"][0]["shape"][1].as_u64().unwrap() as usize;
    assert_eq!(m["outputs"][0]["shape"], json!([-1, 5]));
    assert_eq!(http::get(a, "/v2/models/other").unwrap().status, 404);
    assert_eq!(
        http::get(a, "/v2/models/fedcrime/ready").unwrap().status,
        200
    );
    assert_eq!(
        http::get(a, "/v2").unwrap().json()["name"],
        "fedcrime-client"
    );

    // One area, next period: level and probabilities from round 3.
    let p = http::get(a, "/predict/risk?area=7").unwrap();
    assert_eq!(p.status, 200, "{}", p.text());
    let p = p.json();
    assert_eq!(
        (p["round"].as_u64(), p["model_version"].as_str()),
        (Some(3), Some("round-3"))
    );
    let one = &p["predictions"][0];
    assert_eq!(one["area_name"], "Wilshire");
    let sum: f64 = one["probabilities"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!((sum - 1.0).abs() < 1e-4);
    assert!((1..=5).contains(&one["risk_level"].as_u64().unwrap()));
    // By name and at a past time.
    let at = one["at"].as_str().unwrap().to_string();
    let same = http::get(a, &format!("/predict/risk?area=wilshire&at={at}"))
        .unwrap()
        .json();
    assert_eq!(
        same["predictions"][0]["probabilities"],
        one["probabilities"]
    );

    // Batch: every served area x 6 periods, and OIP tensors.
    let b = http::post_json(
        a,
        "/v2/models/fedcrime/infer",
        &json!({"periods": 6, "id": "q1"}),
    )
    .unwrap();
    assert_eq!(b.status, 200, "{}", b.text());
    let b = b.json();
    assert_eq!(
        (b["id"].as_str(), b["predictions"].as_array().unwrap().len()),
        (Some("q1"), 6)
    );
    let t = http::post_json(
        a,
        "/v2/models/fedcrime/infer",
        &json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, dim], "data": vec![0.5f32; 2 * dim]}]}),
    )
    .unwrap();
    assert_eq!(t.status, 200, "{}", t.text());
    assert_eq!(t.json()["outputs"][0]["shape"], json!([2, 5]));

    // Bad requests: the status and the field named.
    for (path, status, needle) in [
        (
            "/predict/risk?area=8",
            404,
            "area 8: this station serves area(s) 7",
        ),
        (
            "/predict/risk?area=22",
            422,
            "area: 22 is not an LAPD area code",
        ),
        ("/predict/risk?area=Atlantis", 422, "area: \"Atlantis\""),
        ("/predict/risk?at=2024-02-30", 422, "at: \"2024-02-30\""),
        (
            "/predict/risk?at=2099-01-01",
            422,
            "is after the next period",
        ),
        ("/predict/risk?at=1990-01-01", 422, "is too early"),
        ("/predict/risk?colour=red", 400, "unknown field `colour`"),
        (
            "/predict/counts?area=7",
            409,
            "serves a risk model: use /predict/risk",
        ),
        ("/nowhere", 404, "no such endpoint"),
    ] {
        let r = http::get(a, path).unwrap();
        let e = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert_eq!(r.status, status, "{path}: {e}");
        assert!(e.contains(needle), "{path}: {e}");
    }
    for (body, status, needle) in [
        (
            json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}),
            400,
            "shape [1, 3]",
        ),
        (
            json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, dim], "data": vec![0.0; dim]}]}),
            400,
            "name \"x\"",
        ),
        (json!({"areas": [8]}), 404, "area 8"),
        (json!({"periods": 0}), 422, "periods: 1 to 42"),
        (json!({"at": ["next"], "periods": 2}), 400, "not both"),
        (json!({"colour": 1}), 400, "unknown field `colour`"),
    ] {
        let r = http::post_json(a, "/v2/models/fedcrime/infer", &body).unwrap();
        let e = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert_eq!(r.status, status, "{body}: {e}");
        assert!(e.contains(needle), "{body}: {e}");
    }

    // Ingestion: stored, de-duplicated, seen by the next prediction.
    let next_before = p["predictions"][0]["at"].as_str().unwrap().to_string();
    let r = post_csv(a, &csv(&f.later));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = r.json();
    assert_eq!(
        (r["added"].as_u64(), r["duplicates"].as_u64()),
        (Some(30), Some(0))
    );
    assert_eq!(r["generation"], 1);
    let again = post_csv(a, &csv(&f.later[..5])).json();
    assert_eq!(
        (again["added"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(5))
    );
    let got = http::get(a, &format!("/incidents/{}", f.later[0].dr_no)).unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["dr_no"], f.later[0].dr_no);
    assert_eq!(http::get(a, "/incidents/1").unwrap().status, 404);
    let after = http::get(a, "/predict/risk?area=7").unwrap().json();
    let next_after = after["predictions"][0]["at"].as_str().unwrap().to_string();
    assert!(next_after > next_before, "{next_before} -> {next_after}");

    // Bad bodies: refused whole, nothing stored.
    let mut other = f.later[..2].to_vec();
    other[1].area = 8;
    other[1].dr_no = 999_000_001;
    let big = "x".repeat(70 * 1024);
    for (ctype, body, status, needle) in [
        (
            "text/plain",
            "hello".to_string(),
            415,
            "content type \"text/plain\"",
        ),
        (
            "text/csv",
            csv(&other),
            422,
            "DR_NO 999000001: area 8 is not served",
        ),
        ("text/csv", "a,b\n1,2\n".to_string(), 400, "CSV body"),
        ("application/json", "{".to_string(), 400, "JSON body"),
        (
            "application/json",
            "[{\"DR_NO\": \"1\", \"COLOUR\": 2}]".to_string(),
            400,
            "unknown field \"COLOUR\"",
        ),
        ("text/csv", big, 413, "serve.max_body_bytes"),
    ] {
        let r = post_csv_typed(a, ctype, &body);
        let e = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert_eq!(r.status, status, "{ctype}: {e}");
        assert!(e.contains(needle), "{ctype}: {e}");
    }
    assert_eq!(
        f.running.live.generation(),
        1,
        "nothing stored by refused bodies"
    );
    drop(f.runtime);
}

fn post_csv_typed(addr: SocketAddr, ctype: &str, body: &str) -> http::Response {
    http::request(
        addr,
        "POST",
        "/incidents",
        &[("Content-Type", ctype)],
        body.as_bytes(),
    )
    .unwrap()
}

#[test]
fn ten_swaps_under_load_fail_no_request() {
    let f = fixture();
    let a = f.addr();
    f.running.live.slot().install(f.model(1));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
            std::thread::spawn(move || {
                let mut rounds = BTreeSet::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = if c % 2 == 0 {
                        http::get(a, "/predict/risk?area=7")
                    } else {
                        http::post_json(a, "/v2/models/fedcrime/infer", &json!({"periods": 6}))
                    };
                    match r {
                        Ok(r) if r.status == 200 => {
                            let v = r.json();
                            rounds.insert(v["round"].as_u64().unwrap());
                            // One model per reply, even mid-swap.
                            assert_eq!(
                                v["model_version"].as_str().unwrap(),
                                format!("round-{}", v["round"])
                            );
                        }
                        other => {
                            eprintln!("failed request: {other:?}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                rounds
            })
        })
        .collect();
    for round in 2..=11 {
        let next = f.model(round);
        assert!(f.running.live.install_if_newer(next));
        std::thread::sleep(Duration::from_millis(60));
    }
    // An older model never replaces a newer one.
    assert!(!f.running.live.install_if_newer(f.model(5)));
    stop.store(true, Ordering::Relaxed);
    let mut seen = BTreeSet::new();
    for c in clients {
        seen.extend(c.join().unwrap());
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(
        done.load(Ordering::Relaxed) > 40,
        "{} requests",
        done.load(Ordering::Relaxed)
    );
    assert!(seen.len() >= 3, "rounds seen during the swaps: {seen:?}");
    let m = http::get(a, "/v2/models/fedcrime").unwrap().json();
    assert_eq!(m["versions"], json!(["round-11"]));
    drop(f.runtime);
}
