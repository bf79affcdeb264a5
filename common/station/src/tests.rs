//! Unit tests of the station logic on small hand-made incident sets.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::data::{prepare, PartRef, Selection};
use super::protocol::{
    eval_config_from_wire, eval_config_to_wire, fit_ins as fit_ins_of, round_start, RunSetup,
    UpdateDelivery,
};
use super::*;
use fedcrime_data::{build_task, Category, Incident, Partition, Period, Target, TaskConfig};
use fedcrime_fl::engine::SERVER_ROUND_KEY;
use fedcrime_fl::strategy::{FedProx, Strategy};
use fedcrime_fl::Config;
use fedcrime_params::Params;
use fedcrime_wire::{round_seed, Encoding, ModelHeader};

/// `days` days of incidents in `areas`, a few per area and 4-hour block,
/// busier in the evening and in higher-numbered areas.
pub(crate) fn incidents(days: i32, areas: &[u8], seed: u64) -> Vec<Incident> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut dr_no = 1;
    for day in 0..days {
        for &area in areas {
            for block in 0..6u16 {
                let n = rng.random_range(0..=(1 + block / 2 + u16::from(area % 3)));
                for _ in 0..n {
                    let category = Category::ALL[rng.random_range(0..Category::COUNT)];
                    out.push(Incident {
                        dr_no,
                        date_reported: 19_000 + day,
                        date_occurred: 19_000 + day,
                        minute_of_day: block * 240 + rng.random_range(0..240),
                        area,
                        reporting_district: u16::from(area) * 100 + 1,
                        part: 1,
                        crime_code: 510,
                        category,
                        victim_age: None,
                        victim_sex: None,
                        victim_descent: None,
                        premise_code: None,
                        weapon_code: None,
                        lat: 34.0,
                        lon: -118.3,
                    });
                    dr_no += 1;
                }
            }
        }
    }
    out.sort_by_key(|i| (i.date_occurred, i.minute_of_day, i.dr_no));
    out
}

fn small_model(kind: ModelKind, task: &TaskConfig) -> ModelConfig {
    let mut cfg = model_config(kind, task).unwrap();
    cfg.hidden = 16;
    cfg.layers = 2;
    cfg.dropout = 0.0;
    cfg
}

fn station(kind: ModelKind) -> Station {
    let task = TaskConfig::new(Task::Risk);
    let splits = prepare(
        &incidents(24, &[1, 2, 3], 5),
        &task,
        None,
        &Selection::Areas(vec![2]),
    )
    .unwrap();
    Station::new("newton", splits, small_model(kind, &task), Device::Cpu).unwrap()
}

fn fit_ins(global: Params, round: u64) -> FitIns {
    FitIns {
        global: Arc::new(global),
        round,
        settings: Arc::new(round_settings()),
    }
}

fn initial(station: &Station) -> Params {
    tch::manual_seed(3);
    model::build(station.model_config(), Device::Cpu)
        .unwrap()
        .export_params()
}

fn round_settings() -> RoundSettings {
    RoundSettings {
        local_epochs: 2,
        batch_size: 16,
        lr: 0.01,
        seed: 7,
        ..RoundSettings::default()
    }
}

#[test]
fn model_config_matches_what_the_data_pipeline_builds() {
    let inc = incidents(40, &[1, 5, 9], 1);
    for (task, kind) in [
        (TaskConfig::new(Task::Risk), ModelKind::Dnn),
        (TaskConfig::new(Task::Risk), ModelKind::Lstm),
        (TaskConfig::new(Task::Counts), ModelKind::Dnn),
        (
            TaskConfig {
                period: Period::Week,
                lags: 2,
                ..TaskConfig::new(Task::Counts)
            },
            ModelKind::Lstm,
        ),
    ] {
        let built = build_task(&inc, &task).unwrap();
        let from_data = ModelConfig::for_dataset(kind, &built.splits.train);
        let derived = model_config(kind, &task).unwrap();
        assert_eq!(
            (
                derived.input_dim,
                derived.output_dim,
                derived.seq_steps,
                derived.seq_dim
            ),
            (
                from_data.input_dim,
                from_data.output_dim,
                from_data.seq_steps,
                from_data.seq_dim
            ),
            "{task:?} {kind}"
        );
        check_dataset(&derived, &built.splits.train, "train").unwrap();
    }
    let err = model_config(ModelKind::GatTcn, &TaskConfig::new(Task::Risk)).unwrap_err();
    assert!(err.to_string().contains("gat-tcn"), "{err}");
    // gat-tcn: the task's graph windows over all 21 areas.
    for period in [Period::Day, Period::Week] {
        let task = TaskConfig {
            period,
            ..TaskConfig::new(Task::Counts)
        };
        let built = build_task(&incidents(80, &[1, 2, 3], 1), &task).unwrap();
        let windows = fedcrime_ml::model::GraphWindows::for_period(period);
        let g = fedcrime_ml::model::graph_splits(built.graph.as_ref().unwrap(), &windows).unwrap();
        let from_data = ModelConfig::for_dataset(ModelKind::GatTcn, &g.train);
        let derived = model_config(ModelKind::GatTcn, &task).unwrap();
        assert_eq!(
            (
                derived.areas,
                derived.seq_steps,
                derived.seq_dim,
                derived.output_dim
            ),
            (
                from_data.areas,
                from_data.seq_steps,
                from_data.seq_dim,
                from_data.output_dim
            ),
            "{period:?}"
        );
        check_dataset(&derived, &g.train, "train").unwrap();
    }
}

#[test]
fn area_selection_keeps_only_that_area_and_splits_in_time() {
    let task = TaskConfig::new(Task::Risk);
    let splits = prepare(
        &incidents(24, &[1, 2, 3], 5),
        &task,
        None,
        &Selection::Areas(vec![2]),
    )
    .unwrap();
    for ds in [&splits.train, &splits.val, &splits.test] {
        assert!(!ds.is_empty());
        assert!(ds.area.iter().all(|&a| a == 2));
    }
    assert!(splits.train.time.iter().max() < splits.val.time.iter().min());
    // Risk levels are fit on the station's own blocks: spread over the levels,
    // not piled at the top as over 21 areas of which 20 are empty.
    let Target::Classes { labels, .. } = &splits.train.target else {
        panic!("risk has classes");
    };
    let mut per_level = [0usize; 5];
    for &l in labels {
        per_level[l as usize] += 1;
    }
    assert!(
        per_level.iter().filter(|&&n| n > 0).count() >= 3,
        "{per_level:?}"
    );
    assert!(
        per_level.iter().all(|&n| n < labels.len() * 3 / 4),
        "{per_level:?}"
    );
    assert!(splits.val.time.iter().max() < splits.test.time.iter().min());
    let err = prepare(
        &incidents(24, &[1], 5),
        &task,
        None,
        &Selection::Areas(vec![4]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no incidents"), "{err}");
    let err = prepare(
        &incidents(24, &[1], 5),
        &task,
        None,
        &Selection::Areas(vec![22]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("area"), "{err}");
}

#[test]
fn a_shared_featurizer_gives_every_station_the_same_features() {
    let task = TaskConfig::new(Task::Risk);
    let all = incidents(30, &[1, 2, 3], 8);
    let shared = build_task(&all, &task).unwrap().featurizer;
    let mine = prepare(&all, &task, Some(&shared), &Selection::Areas(vec![3])).unwrap();
    assert!(mine.train.area.iter().all(|&a| a == 3));
    assert!(!mine.val.is_empty() && !mine.test.is_empty());
    // The same rows featurized centrally with the same featurizer agree.
    let central = shared.transform(&all).unwrap();
    let row = |ds: &Dataset, t: u32, a: u8| {
        let i = (0..ds.len())
            .find(|&i| ds.time[i] == t && ds.area[i] == a)
            .unwrap();
        ds.features[i * ds.feature_dim..(i + 1) * ds.feature_dim].to_vec()
    };
    let t = mine.train.time[5];
    assert_eq!(row(&mine.train, t, 3), row(&central, t, 3));
    // A featurizer of another task is refused.
    let other = build_task(&all, &TaskConfig::new(Task::Counts))
        .unwrap()
        .featurizer;
    let err = prepare(&all, &task, Some(&other), &Selection::All).unwrap_err();
    assert!(err.to_string().contains("featurizer"), "{err}");
}

#[test]
fn partition_selection_takes_one_part_by_index_or_name() {
    let task = TaskConfig::new(Task::Risk);
    let inc = incidents(24, &[1, 2, 3], 5);
    let sel = |part| Selection::Part {
        partition: Partition::Iid { stations: 3 },
        part,
        seed: 4,
    };
    let by_index = prepare(&inc, &task, None, &sel(PartRef::Index(1))).unwrap();
    let by_name = prepare(&inc, &task, None, &sel(PartRef::Name("station-02".into()))).unwrap();
    assert_eq!(by_index, by_name);
    let all = build_task(&inc, &task).unwrap().splits;
    assert!((by_index.train.len() as isize - (all.train.len() / 3) as isize).abs() <= 1);
    let err = prepare(&inc, &task, None, &sel(PartRef::Index(3))).unwrap_err();
    assert!(err.to_string().contains("station-03"), "{err}");
}

#[test]
fn round_settings_override_defaults_and_seed_each_round() {
    let d = TrainConfig {
        eval_batch_size: 123,
        ..default_train_config()
    };
    let cfg = train_config(&round_settings(), 3, 100, &d).unwrap();
    assert_eq!((cfg.epochs, cfg.batch_size, cfg.lr), (2, 16, 0.01));
    assert_eq!(cfg.seed, round_seed(7, 3));
    assert_ne!(round_seed(7, 3), round_seed(7, 4));
    assert_eq!((cfg.patience, cfg.eval_batch_size), (0, 123));
    let bad = RoundSettings {
        local_epochs: 0,
        ..round_settings()
    };
    let err = train_config(&bad, 1, 100, &d).unwrap_err().to_string();
    assert!(err.contains("local_epochs"), "{err}");
    let bad = RoundSettings {
        lr: -1.0,
        ..round_settings()
    };
    let err = train_config(&bad, 1, 100, &d).unwrap_err().to_string();
    assert!(err.contains("lr"), "{err}");
    // FedProx's mu reaches the trainer.
    let sent = FedProx::new(0.25)
        .unwrap()
        .configure_fit(1, &RoundSettings::default());
    assert_eq!(train_config(&sent, 1, 100, &d).unwrap().prox_mu, 0.25);
    // The round's minimum of optimizer steps raises a small station's epochs:
    // batches of 16, 100 samples = 7 steps per epoch, 3 epochs for 20 steps.
    let mut min = round_settings();
    min.set_min_local_steps(20);
    assert_eq!(train_config(&min, 1, 100, &d).unwrap().epochs, 3);
    assert_eq!(train_config(&min, 1, 16 * 20, &d).unwrap().epochs, 2);
}

#[test]
fn fit_requests_survive_the_wire_exactly() {
    let mut settings = round_settings();
    settings.proximal_mu = 0.1;
    settings.max_grad_norm = Some(2.0);
    settings
        .extensions
        .insert("custom".into(), fedcrime_wire::Scalar::Str("x".into()));
    let global = Arc::new(Params::zeros(Arc::new(
        fedcrime_params::ParamSpec::new([("w", vec![3, 2])]).unwrap(),
    )));
    let ins = FitIns {
        global: global.clone(),
        round: 5,
        settings: Arc::new(settings),
    };
    let delivery = UpdateDelivery {
        encoding: Encoding::F16,
        send_delta: true,
    };
    let header = ModelHeader::describe(&global, Encoding::F32).unwrap();
    let rs = round_start(&ins, delivery, header);
    assert_eq!((rs.update_encoding, rs.send_delta), (Encoding::F16, true));
    let mut payload = Vec::new();
    fedcrime_wire::Message::RoundStart(rs.clone())
        .encode_payload(&mut payload)
        .unwrap();
    let decoded = match fedcrime_wire::Message::decode_payload(
        fedcrime_wire::FrameKind::RoundStart,
        &payload,
        payload.len(),
    )
    .unwrap()
    {
        fedcrime_wire::Message::RoundStart(d) => d,
        other => panic!("decoded {}", other.name()),
    };
    assert_eq!(decoded, rs);
    let back = fit_ins_of(&decoded, global);
    assert_eq!((back.round, &*back.settings), (5, &*ins.settings));
    let eval = Config::from([(SPLIT_KEY.to_string(), ConfigValue::Str("test".into()))]);
    let mut expected = eval.clone();
    expected.insert(SERVER_ROUND_KEY.into(), ConfigValue::Int(2));
    assert_eq!(
        eval_config_from_wire(&eval_config_to_wire(&eval), 2).unwrap(),
        expected
    );
}

#[test]
fn run_setup_round_trips_through_welcome_extensions() {
    let task = TaskConfig::new(Task::Counts);
    let inc = incidents(30, &[1, 2], 2);
    let setup = RunSetup {
        model: small_model(ModelKind::Lstm, &task),
        task,
        featurizer: Some(build_task(&inc, &task).unwrap().featurizer),
    };
    let ext = setup.to_extensions().unwrap();
    assert_eq!(RunSetup::from_extensions(&ext).unwrap(), setup);
    let mut broken = ext.clone();
    broken.remove(protocol::EXT_MODEL_CONFIG);
    assert!(RunSetup::from_extensions(&broken)
        .unwrap_err()
        .to_string()
        .contains("model_config"));
}

#[test]
fn fit_is_deterministic_and_lowers_the_loss() {
    let s = station(ModelKind::Dnn);
    let global = initial(&s);
    let ins = fit_ins(global.clone(), 1);
    let a = s.fit(&ins).unwrap();
    let b = s.fit(&ins).unwrap();
    assert_eq!(a.params, b.params);
    assert_eq!(a.num_examples, s.splits().train.len() as u64);
    assert!(a.metrics[LOSS_KEY].is_finite());
    assert_eq!(a.metrics[EPOCHS_METRIC], 2.0);
    global.spec().check_same(a.params.spec()).unwrap();
    assert_ne!(*a.params, global);
    // Another round trains with another seed.
    let c = s.fit(&fit_ins(global.clone(), 2)).unwrap();
    assert_ne!(c.params, a.params);
    // The trained model fits the training split better than the initial one.
    let eval = |p: &Params, split: &str| {
        s.evaluate(&EvaluateIns {
            global: Arc::new(p.clone()),
            config: Arc::new(Config::from([(
                SPLIT_KEY.to_string(),
                ConfigValue::Str(split.into()),
            )])),
        })
        .unwrap()
    };
    let before = eval(&global, "train");
    let after = eval(&a.params, "train");
    assert!(
        after.loss < before.loss,
        "{} vs {}",
        after.loss,
        before.loss
    );
    let val = s
        .evaluate(&EvaluateIns {
            global: a.params.clone(),
            config: Arc::new(Config::new()),
        })
        .unwrap();
    assert_eq!(val.num_examples, s.splits().val.len() as u64);
    assert!(val.metrics.contains_key("accuracy"));
    assert!(val.metrics.values().all(|v| v.is_finite()));
}

#[test]
fn evaluation_refuses_a_model_of_another_layout_and_bad_settings() {
    let s = station(ModelKind::Lstm);
    let other = station(ModelKind::Dnn);
    let err = s
        .evaluate(&EvaluateIns {
            global: Arc::new(initial(&other)),
            config: Arc::new(Config::new()),
        })
        .unwrap_err();
    assert!(matches!(err, StationError::Model(_)), "{err}");
    let err = s
        .evaluate(&EvaluateIns {
            global: Arc::new(initial(&s)),
            config: Arc::new(Config::from([(
                SPLIT_KEY.to_string(),
                ConfigValue::Str("everything".into()),
            )])),
        })
        .unwrap_err();
    assert!(err.to_string().contains("split"), "{err}");
}

#[test]
fn a_station_refuses_data_that_does_not_fit_the_model() {
    let task = TaskConfig::new(Task::Risk);
    let splits = prepare(&incidents(24, &[1], 5), &task, None, &Selection::All).unwrap();
    let counts = model_config(ModelKind::Dnn, &TaskConfig::new(Task::Counts)).unwrap();
    let err = Station::new("x", splits, counts, Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("risk samples"), "{err}");
}

#[test]
fn a_bureau_station_trains_gat_tcn_on_its_subgraph_and_the_city_model_takes_the_update() {
    use fedcrime_ml::model::AreaGraph;
    let task = TaskConfig::new(Task::Counts);
    let all: Vec<u8> = (1..=21).collect();
    let inc = incidents(40, &all, 4);
    let global_cfg = small_model(ModelKind::GatTcn, &task);
    assert_eq!(global_cfg.areas, 21);
    let selection = Selection::Part {
        partition: Partition::Bureau,
        part: PartRef::Name("west-bureau".into()),
        seed: 0,
    };
    let (splits, local) = data::prepare_for(&global_cfg, &inc, &task, None, &selection).unwrap();
    let west = AreaGraph::bureau(fedcrime_data::Bureau::West);
    assert_eq!(local.areas, west.len());
    assert_eq!(local.adjacency, west.edges());
    // Only the bureau's own records: the other areas' incidents are not held.
    let own: Vec<Incident> = inc
        .iter()
        .filter(|i| west.codes().contains(&i.area))
        .cloned()
        .collect();
    let (again, _) = data::prepare_graph(&own, &task, &Selection::All).unwrap();
    assert_eq!(again.train, splits.train);
    let station = Station::new("west-bureau", splits, local, Device::Cpu).unwrap();
    tch::manual_seed(3);
    let city = model::build(&global_cfg, Device::Cpu).unwrap();
    let global = city.export_params();
    let res = station.fit(&fit_ins(global.clone(), 1)).unwrap();
    assert_eq!(res.params.spec(), global.spec());
    assert!(res.params.l2_distance(&global).unwrap() > 0.0);
    // The city's model runs the station's weights.
    let mut city = city;
    city.import_params(&res.params).unwrap();
    assert_eq!(
        station.param_spec(&global_cfg).unwrap(),
        station.param_spec(station.model_config()).unwrap()
    );
}

#[test]
fn gat_tcn_refuses_stations_without_several_neighbouring_areas() {
    let task = TaskConfig::new(Task::Counts);
    let inc = incidents(30, &[1, 5, 6, 7], 2);
    let cfg = small_model(ModelKind::GatTcn, &task);
    let err = |sel: Selection| {
        data::prepare_for(&cfg, &inc, &task, None, &sel)
            .unwrap_err()
            .to_string()
    };
    let e = err(Selection::Areas(vec![6]));
    assert!(e.contains("one area") && e.contains("bureau"), "{e}");
    // Central (1) and Harbor (5) share no boundary.
    let e = err(Selection::Areas(vec![1, 5]));
    assert!(e.contains("no boundary"), "{e}");
    let part = |partition| Selection::Part {
        partition,
        part: PartRef::Index(0),
        seed: 0,
    };
    let e = err(part(Partition::Natural));
    assert!(e.contains("one area"), "{e}");
    let e = err(part(Partition::Iid { stations: 3 }));
    assert!(e.contains("scattered"), "{e}");
    // Hollywood (6) and Wilshire (7) are neighbours: accepted.
    let (_, local) =
        data::prepare_for(&cfg, &inc, &task, None, &Selection::Areas(vec![6, 7])).unwrap();
    assert_eq!((local.areas, local.adjacency.len()), (2, 1));
    let risk = TaskConfig::new(Task::Risk);
    assert!(model_config(ModelKind::GatTcn, &risk).is_err());
}

#[test]
fn q_fedavg_rounds_report_the_received_models_loss_before_training() {
    use fedcrime_fl::strategy::{QFedAvg, GLOBAL_LOSS_KEY};
    let s = station(ModelKind::Dnn);
    let global = initial(&s);
    let plain = s.fit(&fit_ins(global.clone(), 1)).unwrap();
    assert!(!plain.metrics.contains_key(GLOBAL_LOSS_KEY));
    let settings = QFedAvg::new(1.0, 0.01)
        .unwrap()
        .configure_fit(1, &round_settings());
    let ins = FitIns {
        global: Arc::new(global.clone()),
        round: 1,
        settings: Arc::new(settings),
    };
    let q = s.fit(&ins).unwrap();
    // The same training, plus the loss of the model received.
    assert_eq!(q.params, plain.params);
    let before = s
        .evaluate(&EvaluateIns {
            global: Arc::new(global),
            config: Arc::new(Config::from([(
                SPLIT_KEY.to_string(),
                ConfigValue::Str("train".into()),
            )])),
        })
        .unwrap();
    assert!((q.metrics[GLOBAL_LOSS_KEY] - before.loss).abs() < 1e-9);
    assert!(q.metrics[GLOBAL_LOSS_KEY] > plain.metrics[LOSS_KEY]);
}

#[test]
fn an_explanation_request_is_answered_with_aggregates_only() {
    let s = station(ModelKind::Dnn);
    let global = initial(&s);
    let ask = |extra: Vec<(&str, ConfigValue)>| {
        let mut config = Config::from([(SPLIT_KEY.to_string(), ConfigValue::Str("test".into()))]);
        for (k, v) in extra {
            config.insert(k.to_string(), v);
        }
        s.evaluate(&EvaluateIns {
            global: Arc::new(global.clone()),
            config: Arc::new(config),
        })
    };
    let plain = ask(vec![]).unwrap();
    let explained = ask(vec![(EXPLAIN_KEY, ConfigValue::Int(6))]).unwrap();
    // The same evaluation, plus the summary.
    assert_eq!(plain.loss, explained.loss);
    let summary = fedcrime_ml::explain::Summary::from_metrics(&explained.metrics).unwrap();
    assert_eq!(summary.rows, 6.min(s.splits().test.len()));
    assert_eq!(summary.outputs.len(), 5);
    assert!(summary.groups.iter().any(|g| g == "hour"));
    assert!(summary.mean_abs.iter().flatten().any(|&v| v > 0.0));
    // The engine keeps these per station (its prefix is the summary's).
    assert_eq!(
        fedcrime_ml::explain::METRIC_PREFIX,
        fedcrime_fl::STATION_REPORT_PREFIX
    );
    // Nothing per sample: one value per group and level, plus three.
    let shap = explained
        .metrics
        .keys()
        .filter(|k| k.starts_with("shap|"))
        .count();
    assert_eq!(shap, 3 + summary.groups.len() * 5);
    let exact = ask(vec![
        (EXPLAIN_KEY, ConfigValue::Int(2)),
        (EXPLAIN_METHOD_KEY, ConfigValue::Str("kernel".into())),
    ])
    .unwrap();
    let s2 = fedcrime_ml::explain::Summary::from_metrics(&exact.metrics).unwrap();
    assert!(s2.max_additivity_error < 1e-4);
    let e = ask(vec![
        (EXPLAIN_KEY, ConfigValue::Int(2)),
        (EXPLAIN_METHOD_KEY, ConfigValue::Str("magic".into())),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("explain_method") && e.contains("unknown method"),
        "{e}"
    );
    assert!(ask(vec![(EXPLAIN_KEY, ConfigValue::Int(0))]).is_err());
}

#[test]
fn a_forecast_request_reports_the_next_period_of_the_stations_areas() {
    let task = TaskConfig::new(Task::Risk);
    let records = incidents(24, &[1, 2, 3], 5);
    let own: Vec<_> = records.iter().filter(|i| i.area == 2).cloned().collect();
    let featurizer = fedcrime_data::build_task(&records, &task)
        .unwrap()
        .featurizer;
    let splits = prepare(&own, &task, Some(&featurizer), &Selection::Areas(vec![2])).unwrap();
    let rows = crate::forecast_rows(
        &featurizer,
        &own,
        Some(&std::collections::BTreeSet::from([2u8])),
    )
    .unwrap();
    assert_eq!(rows.area, vec![2]);
    let s = Station::new(
        "newton",
        splits,
        small_model(ModelKind::Dnn, &task),
        Device::Cpu,
    )
    .unwrap()
    .with_forecast(Arc::new(rows))
    .unwrap();
    let global = initial(&s);
    let ask = |forecast: bool| {
        s.evaluate(&EvaluateIns {
            global: Arc::new(global.clone()),
            config: Arc::new(Config::from([(
                crate::FORECAST_KEY.to_string(),
                ConfigValue::Bool(forecast),
            )])),
        })
        .unwrap()
        .metrics
    };
    assert!(!ask(false).keys().any(|k| k.starts_with("next|")));
    let m = ask(true);
    let last = own
        .iter()
        .map(|i| (i.date_occurred, i.minute_of_day))
        .max()
        .unwrap();
    let next = featurizer
        .time_unit()
        .step_of(i64::from(last.0), last.1)
        .unwrap()
        + 1;
    assert_eq!(m["next|step"], f64::from(next));
    assert!((1.0..=5.0).contains(&m["next|2"]), "{m:?}");
    assert!((1.0..=5.0).contains(&m["next|2|level"]));
    assert!(!m.contains_key("next|1"), "only the station's own areas");
}

#[test]
fn the_privacy_accountant_survives_a_restart_of_the_station() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("privacy-accountant.json");
    let first = crate::AccountantStore::open(&path).unwrap();
    let e1 = first.charge(0.05, 1.1, 200, 1e-5).unwrap();
    let e2 = first.charge(0.05, 1.1, 200, 1e-5).unwrap();
    assert!(e2 > e1);
    // A new process reads what was spent and goes on from there.
    let again = crate::AccountantStore::open(&path).unwrap();
    assert_eq!(again.epsilon(1e-5), Some(e2));
    let e3 = again.charge(0.05, 1.1, 200, 1e-5).unwrap();
    let want = fedcrime_privacy::epsilon(0.05, 1.1, 600, 1e-5)
        .unwrap()
        .epsilon;
    assert!((e3 - want).abs() < 1e-9, "{e3} vs {want}");
    // A damaged file is refused, naming it, not silently reset.
    std::fs::write(&path, b"{not json").unwrap();
    let e = crate::AccountantStore::open(&path).unwrap_err().to_string();
    assert!(e.contains("privacy-accountant.json"), "{e}");
}
