//! `fedcrime-sim simulate` end to end: a small study on both transports
//! (the QUIC one with real sockets and certificates on 127.0.0.1) writes
//! every output with sane values, and the two transports give identical
//! metrics for the same seed.

use std::path::Path;

use fedcrime_data::Partition;
use fedcrime_fl::StrategyConfig;
use fedcrime_sim::sim::record::CsvTable;
use fedcrime_sim::sim::{self, RunOptions, SimConfig, SimOutcome, Transport};

/// A study small enough for a debug build: 3 stations, 2 rounds, 75 days.
fn small(transport: Transport) -> SimConfig {
    let mut c = SimConfig::default();
    c.data.rows = 6_000;
    c.data.days = 75;
    c.federation.partition = Partition::Iid { stations: 3 };
    c.federation.stations = Some(3);
    c.federation.rounds = Some(2);
    c.federation.local_epochs = Some(1);
    c.federation.transport = transport;
    c.federation.concurrency = Some(2);
    c.train.batch_size = 128;
    c.seed = 11;
    c
}

fn run(cfg: &SimConfig, dir: &Path) -> SimOutcome {
    sim::simulate(
        cfg,
        dir,
        RunOptions {
            quiet: true,
            ..RunOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn small_study_writes_every_output_with_sane_values() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let cfg = small(Transport::Memory);
    let outcome = run(&cfg, &out);

    // metrics.csv: a row per round and per epoch of each method.
    let t = CsvTable::read(&out.join("metrics.csv")).unwrap();
    for col in [
        "method",
        "step",
        "wall_seconds",
        "bytes_sent",
        "grad_steps",
        "samples",
        "best_step",
        "test_macro_f1_at_best",
        "train_loss",
        "val_loss",
        "val_macro_f1",
        "test_loss",
        "test_macro_f1",
        "test_accuracy",
    ] {
        assert!(t.column(col).is_some(), "no column {col} in {:?}", t.header);
    }
    assert!(t.rows.iter().all(|r| r.len() == t.header.len()));
    let mut per_round = Vec::new();
    for method in ["fedavg", "centralized", "data-parallel-2"] {
        let rows: Vec<_> = t.method(method).collect();
        assert_eq!(rows.len(), 2, "{method}");
        let mut last_wall = 0.0;
        let mut last_bytes = 0.0;
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(t.number(r, "step"), Some((i + 1) as f64), "{method}");
            let wall = t.number(r, "wall_seconds").unwrap();
            assert!(wall > last_wall && wall < 600.0, "{method}: wall {wall}");
            last_wall = wall;
            for col in ["train_loss", "val_loss", "test_loss"] {
                let v = t.number(r, col).unwrap();
                assert!(v.is_finite() && v > 0.0 && v < 10.0, "{method} {col} {v}");
            }
            for col in ["val_macro_f1", "test_macro_f1", "test_accuracy"] {
                let v = t.number(r, col).unwrap();
                assert!((0.0..=1.0).contains(&v), "{method} {col} {v}");
            }
            let bytes = t.number(r, "bytes_sent").unwrap();
            if method == "fedavg" {
                per_round.push(bytes - last_bytes);
            } else {
                assert_eq!(bytes, 0.0);
            }
            last_bytes = bytes;
        }
    }
    // Each round sends the model (40k f32 values) to 3 stations and gets 3 back.
    assert_eq!(per_round[0], per_round[1]);
    assert!(per_round[0] > 6.0 * 4.0 * 40_000.0, "{per_round:?}");
    assert_eq!(outcome.runs.len(), 3);

    // Every method starts from the same model and sees the same data: after
    // one pass, the single-worker and data-parallel baselines agree closely.
    let c1 = t
        .number(t.method("centralized").next().unwrap(), "val_loss")
        .unwrap();
    let d1 = t
        .number(t.method("data-parallel-2").next().unwrap(), "val_loss")
        .unwrap();
    assert!((c1 - d1).abs() < 1e-3, "{c1} vs {d1}");

    // The plots name every method and the naive baseline.
    let svg = std::fs::read_to_string(out.join("convergence.svg")).unwrap();
    for needle in [
        "fedavg",
        "centralized",
        "data-parallel-2",
        "(naive)",
        "MB sent",
    ] {
        assert!(svg.contains(needle), "convergence.svg lacks {needle}");
    }
    let png = std::fs::read(out.join("convergence.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    // The report: final scores, baselines, time to target, gap, configuration.
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert_eq!(md, outcome.report);
    for needle in [
        "## Selected models (best validation step)",
        "| **fedavg** | ",
        "| **centralized** | ",
        "majority_class (naive)",
        "## Reaching the centralized model's best validation score",
        "| fedavg | 98% (",
        "fedavg / centralized test macro_f1: ",
        "## Last step (every test metric)",
        "```toml",
    ] {
        assert!(md.contains(needle), "report.md lacks {needle:?}:\n{md}");
    }
    // The recorded configuration replays the run.
    let replay = SimConfig::load(&out.join("sim.toml")).unwrap();
    assert_eq!(replay, cfg.clone().resolve());
    let toml_block = md
        .split("```toml\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    assert_eq!(SimConfig::from_toml(toml_block).unwrap(), replay);
}

#[test]
fn early_stopping_selects_the_same_best_round_on_both_transports() {
    let tmp = tempfile::tempdir().unwrap();
    let mut mem = small(Transport::Memory);
    // The defaults a new user gets, with a short patience and caps.
    mem.federation.rounds = None;
    mem.federation.local_epochs = None;
    mem.selection.patience = 2;
    mem.selection.max_rounds = 6;
    mem.selection.max_epochs = 6;
    let mut quic = mem.clone();
    quic.federation.transport = Transport::Quic;
    quic.centralized.enabled = false;
    let a = run(&mem, &tmp.path().join("memory"));
    let b = run(&quic, &tmp.path().join("quic"));
    for outcome in [&a, &b] {
        for run in &outcome.runs {
            let rows = &run.rows;
            let n = rows.len();
            assert!((1..=6).contains(&n), "{}: {n} steps", run.method);
            // The best step is the one with the best validation macro-F1 (the
            // first of equals), and its test score is the one reported.
            let mut best = 0;
            for (i, r) in rows.iter().enumerate() {
                if r.val.headline() > rows[best].val.headline() {
                    best = i;
                }
            }
            let last = rows.last().unwrap();
            assert_eq!(last.best.unwrap().0, rows[best].step, "{}", run.method);
            assert_eq!(last.best.unwrap().1, rows[best].test.headline());
            // Stopped before the cap only after `patience` steps without a
            // better validation score.
            if n < 6 {
                assert_eq!(
                    n - 1 - best,
                    2,
                    "{}: stopped at {n}, best {}",
                    run.method,
                    best + 1
                );
            }
            // Steps and samples grow every step.
            assert!(rows
                .windows(2)
                .all(|w| w[1].grad_steps > w[0].grad_steps && w[1].samples > w[0].samples));
        }
    }
    // Both transports stop at the same round with the same scores.
    let (ra, rb) = (&a.runs[0].rows, &b.runs[0].rows);
    assert_eq!(ra.len(), rb.len());
    for (x, y) in ra.iter().zip(rb) {
        assert_eq!(
            (x.step, &x.val, &x.test, x.best),
            (y.step, &y.val, &y.test, y.best)
        );
    }
    // Small stations took at least 20 optimizer steps per round.
    let r1 = &ra[0];
    assert!(
        r1.grad_steps >= 3 * 20,
        "{} steps in round 1",
        r1.grad_steps
    );
    // The server saved the best round's model as its final model, and the last one beside it.
    let server = tmp.path().join("quic/quic/server");
    let (_, meta) =
        fedcrime_params::Params::load_safetensors(server.join("model.safetensors")).unwrap();
    assert_eq!(
        meta["round"],
        rb.last().unwrap().best.unwrap().0.to_string()
    );
    assert_eq!(meta["selected"], "best validation");
    assert!(server.join("model-last.safetensors").is_file());
    assert!(
        a.report
            .contains("stopping after 2 rounds without a better validation macro_f1"),
        "{}",
        a.report
    );
}

#[test]
fn memory_and_quic_transports_give_identical_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let mut mem = small(Transport::Memory);
    mem.centralized.enabled = false;
    mem.federation.strategy = StrategyConfig::FedProx { mu: 0.1 };
    let quic = SimConfig {
        federation: sim::config::FederationSettings {
            transport: Transport::Quic,
            // A different number of stations training at once changes nothing.
            concurrency: Some(3),
            ..mem.federation.clone()
        },
        ..mem.clone()
    };
    let a = run(&mem, &tmp.path().join("memory"));
    let b = run(&quic, &tmp.path().join("quic"));
    // The QUIC run really went through the server, with certificates.
    let q = tmp.path().join("quic/quic");
    assert!(q.join("pki/ca.pem").is_file());
    let certs = std::fs::read_dir(q.join("pki/stations"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "pem")
        })
        .count();
    assert_eq!(certs, 3);
    assert!(q.join("server/metrics.jsonl").is_file());
    // The server's model carries the run's featurizer: a station can serve it.
    let served = fedcrime_station::predict::Served::load(
        &q.join("server/model.safetensors"),
        tch::Device::Cpu,
    )
    .unwrap();
    assert_eq!(served.round, b.rounds.last().unwrap().0.round);
    for file in [
        "metrics.csv",
        "convergence.svg",
        "convergence.png",
        "report.md",
        "sim.toml",
    ] {
        assert!(tmp.path().join("quic").join(file).is_file(), "{file}");
    }
    assert!(b.report.contains("transport quic"), "{}", b.report);

    let (ra, rb) = (&a.runs[0].rows, &b.runs[0].rows);
    assert_eq!(ra.len(), 2);
    assert_eq!(rb.len(), 2);
    for (x, y) in ra.iter().zip(rb) {
        assert_eq!(x.step, y.step);
        assert_eq!(x.train_loss, y.train_loss, "round {}", x.step);
        assert_eq!(x.val, y.val, "round {}", x.step);
        assert_eq!(x.test, y.test, "round {}", x.step);
        // The memory transport counts what the wire protocol carries.
        assert_eq!(x.bytes_sent, y.bytes_sent, "round {}", x.step);
    }
    for ((ma, _), (mb, _)) in a.rounds.iter().zip(&b.rounds) {
        assert_eq!(ma.completed, mb.completed);
        assert_eq!(ma.num_examples, mb.num_examples);
        assert_eq!(ma.fit_metrics, mb.fit_metrics);
    }
    // And the metrics files agree column for column, wall-clock aside.
    let ta = CsvTable::read(&tmp.path().join("memory/metrics.csv")).unwrap();
    let tb = CsvTable::read(&tmp.path().join("quic/metrics.csv")).unwrap();
    let wall = ta.column("wall_seconds").unwrap();
    let strip = |t: &CsvTable| -> Vec<Vec<String>> {
        t.rows
            .iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .filter(|(i, _)| *i != wall)
                    .map(|(_, c)| c.clone())
                    .collect()
            })
            .collect()
    };
    assert_eq!(strip(&ta), strip(&tb));
}

#[test]
fn a_real_lapd_month_federates_by_area_on_both_transports() {
    let Some(dir) = crate::shared_data::la_crime_dir() else {
        eprintln!("skipped: ../shared/data/la-crime is absent");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut mem = SimConfig::default();
    mem.data.file = Some(dir.join("la_crime_2024_02.csv"));
    mem.federation.rounds = Some(2);
    mem.federation.transport = Transport::Memory;
    mem.centralized.enabled = false;
    let mut quic = mem.clone();
    quic.federation.transport = Transport::Quic;
    let a = run(&mem, &tmp.path().join("memory"));
    let b = run(&quic, &tmp.path().join("quic"));
    // One station per LAPD area, each with its own records' samples.
    assert_eq!(a.rounds[0].0.completed.len(), 21);
    assert!(
        a.report.contains("stations: 21 (natural partition)"),
        "{}",
        a.report
    );
    let certs = tmp.path().join("quic/quic/pki/stations");
    assert!(certs.join("station-77th-street.pem").is_file());
    assert!(certs.join("central.pem").is_file());
    for (x, y) in a.runs[0].rows.iter().zip(&b.runs[0].rows) {
        assert_eq!(
            (x.train_loss, &x.val, &x.test, x.bytes_sent),
            (y.train_loss, &y.val, &y.test, y.bytes_sent)
        );
        assert!(x.test.loss.is_finite());
    }
}

#[test]
fn the_counts_models_federate_over_quic_with_their_area_start() {
    // The dnn's direct path from the features (area.weight) and the lstm's
    // area start must reach the real server, which builds the layout from
    // its config alone.
    let Some(dir) = crate::shared_data::la_crime_dir() else {
        eprintln!("skipped: ../shared/data/la-crime is absent");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for kind in [
        fedcrime_ml::model::ModelKind::Dnn,
        fedcrime_ml::model::ModelKind::Lstm,
    ] {
        let mut cfg = SimConfig::default();
        cfg.data.file = Some(dir.join("la_crime_2024_02.csv"));
        cfg.data.task = fedcrime_data::Task::Counts;
        cfg.model.kind = kind;
        cfg.federation.rounds = Some(1);
        cfg.federation.local_epochs = Some(1);
        cfg.centralized.enabled = false;
        let out = run(&cfg, &tmp.path().join(kind.to_string()));
        let r = &out.runs[0].rows[0];
        assert!(r.test.loss.is_finite(), "{kind}");
        // One round from the per-area start stays near the per-area mean.
        let naive = out
            .baselines
            .iter()
            .find(|b| b.name == "period_mean")
            .unwrap();
        assert!(
            r.test.headline() < naive.metrics.headline().1 * 1.1,
            "{kind}: {} vs {}",
            r.test.headline(),
            naive.metrics.headline().1
        );
    }
}

#[test]
fn dropout_runs_replay_on_both_transports_too() {
    // Dropout draws from libtorch's one generator: stations take turns.
    let tmp = tempfile::tempdir().unwrap();
    let mut mem = small(Transport::Memory);
    mem.centralized.enabled = false;
    mem.model.dropout = 0.2;
    let mut quic = mem.clone();
    quic.federation.transport = Transport::Quic;
    let a = run(&mem, &tmp.path().join("memory"));
    let b = run(&quic, &tmp.path().join("quic"));
    assert_eq!(a.config.federation.concurrency, Some(1));
    for (x, y) in a.runs[0].rows.iter().zip(&b.runs[0].rows) {
        assert_eq!(
            (x.train_loss, &x.val, &x.test),
            (y.train_loss, &y.val, &y.test)
        );
    }
}

#[test]
fn every_strategy_runs_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = small(Transport::Memory);
    cfg.federation.rounds = Some(1);
    cfg.federation.partition = Partition::Iid { stations: 5 };
    cfg.federation.stations = Some(5);
    cfg.centralized.enabled = false;
    let data = sim::StudyData::prepare(&cfg).unwrap();
    let initial = sim::initial_model(&data, cfg.seed).unwrap();
    for name in StrategyConfig::NAMES {
        cfg.federation.strategy = name.parse().unwrap();
        let mut rows = Vec::new();
        let summary = sim::federate(
            &data,
            &cfg,
            &initial,
            tmp.path(),
            &indicatif::ProgressBar::hidden(),
            |r| {
                rows.push(r.clone());
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(summary.rounds_completed, 1, "{name}");
        let r = &rows[0];
        assert!(r.metrics.aggregated, "{name}: {:?}", r.metrics.note);
        assert_eq!(r.metrics.completed.len(), 5, "{name}");
        assert!(r.row.test.loss.is_finite(), "{name}");
        assert_eq!(r.row.method, name);
    }
}

#[test]
fn a_fairness_aware_federation_explains_itself_by_station() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut cfg = small(Transport::Memory);
    cfg.federation.rounds = Some(1);
    cfg.federation.strategy = "qfedavg:q=1".parse().unwrap();
    cfg.train.fairness = "penalty:1".parse().unwrap();
    cfg.explain.rows = 5;
    let outcome = run(&cfg, &out);
    // Fairness-aware training runs on one worker: no data-parallel baseline.
    let methods: Vec<&str> = outcome.runs.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["qfedavg", "centralized"]);
    let fe: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("explain-federated.json")).unwrap())
            .unwrap();
    assert_eq!(fe["stations"].as_array().unwrap().len(), 3);
    assert_eq!(fe["global"]["rows"], 15);
    assert_eq!(fe["method"], "gradient");
    for f in [
        "explain-stations.csv",
        "explain-heatmap.png",
        "explain-federated.svg",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert!(outcome.report.contains("## Federated explanations"));
    assert!(outcome.report.contains("## Per-station test scores"));
    let scores = std::fs::read_to_string(out.join("station-scores.csv")).unwrap();
    assert_eq!(scores.lines().count(), 1 + 3, "{scores}");
    assert!(scores.starts_with("station,test_samples,macro_f1"));
    // The selected model is saved for `explain` and `fairness`.
    let (m, meta) =
        fedcrime_ml::model::load_model(&out.join("model.safetensors"), tch::Device::Cpu).unwrap();
    assert_eq!(m.kind(), fedcrime_ml::model::ModelKind::Dnn);
    assert!(meta.contains_key("fedcrime.featurizer") && meta.contains_key("fedcrime.data_args"));
    assert!(std::fs::read_to_string(out.join("sim.toml"))
        .unwrap()
        .contains("fairness = \"penalty:1\""));
}

/// Issue 18: DP-FedAvg with adaptive clipping over QUIC (with signed updates
/// and the audit log) and DP-SGD at the stations in memory: metrics.csv
/// reports a growing ε per round, equal to the accountant's for the rounds
/// run, and the report says what the selected model cost.
#[test]
fn private_federations_report_epsilon_per_round() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = small(Transport::Quic);
    cfg.federation.rounds = Some(3);
    cfg.federation.audit = true;
    cfg.centralized.enabled = false;
    cfg.privacy = Some(fedcrime_fl::PrivacyConfig {
        noise_multiplier: 1.0,
        adaptive_clip: Some(Default::default()),
        ..Default::default()
    });
    let out = tmp.path().join("central");
    let outcome = run(&cfg, &out);
    let t = CsvTable::read(&out.join("metrics.csv")).unwrap();
    let eps: Vec<f64> = t
        .method("fedavg")
        .map(|r| t.number(r, "epsilon").unwrap())
        .collect();
    assert_eq!(eps.len(), 3);
    for (round, e) in eps.iter().enumerate() {
        let want = fedcrime_privacy::epsilon(1.0, 1.0, round as u64 + 1, 1e-5)
            .unwrap()
            .epsilon;
        assert!(
            (e - want).abs() < 1e-9,
            "round {}: {e} vs {want}",
            round + 1
        );
    }
    assert!(
        outcome.report.contains("## Differential privacy"),
        "{}",
        outcome.report
    );
    let clips: Vec<f64> = outcome
        .rounds
        .iter()
        .map(|(m, _)| m.privacy.as_ref().unwrap().clip.unwrap())
        .collect();
    assert_eq!(clips[0], 0.1, "adaptive clipping starts at 0.1");
    assert!(clips.windows(2).all(|w| w[0] != w[1]), "{clips:?}");
    // The server's log of the study verifies.
    let log = out.join("quic/server/audit");
    let verified = fedcrime_audit::verify_log_strict(&log, None).unwrap();
    assert_eq!(verified.updates_accepted, 9);

    let mut local = small(Transport::Memory);
    local.centralized.enabled = false;
    local.privacy = Some(fedcrime_fl::PrivacyConfig {
        mode: fedcrime_fl::DpMode::Local,
        noise_multiplier: 1.1,
        clip: Some(1.0),
        ..Default::default()
    });
    let out = tmp.path().join("local");
    let outcome = run(&local, &out);
    let eps: Vec<f64> = outcome
        .rounds
        .iter()
        .map(|(m, _)| m.privacy.as_ref().unwrap().epsilon.unwrap())
        .collect();
    assert_eq!(eps.len(), 2);
    assert!(eps[0] > 0.0 && eps[1] > eps[0], "{eps:?}");
    assert!(outcome.rounds.iter().all(|(m, _)| m.train_loss.is_none()));
}
