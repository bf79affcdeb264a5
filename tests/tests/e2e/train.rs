//! Training on the real LAPD month (February 2024): the models against their
//! naive baselines on the test split, through the public API the `train`
//! command uses.

use fedcrime_data::loader::load_path;
use fedcrime_data::tasks::{build_task, TaskConfig};
use fedcrime_data::Task;
use fedcrime_ml::model::{build, ModelConfig, ModelKind};
use fedcrime_ml::train::{
    evaluate_baselines, ClassWeighting, Metrics, ParallelTrainer, TrainConfig, Trainer,
};

use crate::shared_data::la_crime_dir;

fn headline(m: &Metrics) -> f64 {
    m.headline().1
}

#[test]
fn dnn_beats_the_risk_baselines_on_the_real_month() {
    let Some(dir) = la_crime_dir() else {
        eprintln!("skipped: ../shared/data/la-crime is absent");
        return;
    };
    let loaded = load_path(&dir.join("la_crime_2024_02.csv")).unwrap();
    let data = build_task(&loaded.incidents, &TaskConfig::new(Task::Risk)).unwrap();
    let s = &data.splits;
    let mut cfg = ModelConfig::for_dataset(ModelKind::Dnn, &s.train);
    // Dropout off: libtorch's generator is shared with concurrently running tests.
    cfg.dropout = 0.0;
    cfg.class_weights = ClassWeighting::Balanced.weights(&s.train);
    tch::manual_seed(0);
    let tcfg = TrainConfig {
        epochs: 40,
        patience: 8,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(build(&cfg, tch::Device::Cpu).unwrap(), tcfg).unwrap();
    let report = t.fit(&s.train, Some(&s.val)).unwrap();
    assert!(report.best_epoch.is_some());
    let test = t.evaluate(&s.test).unwrap();
    let baselines = evaluate_baselines(s, &s.test, fedcrime_data::Period::Day).unwrap();
    let best_baseline = baselines
        .iter()
        .map(|b| headline(&b.metrics))
        .fold(0.0, f64::max);
    assert!(
        headline(&test.metrics) > best_baseline,
        "dnn macro-F1 {} vs best baseline {best_baseline}",
        headline(&test.metrics)
    );
}

#[test]
fn two_workers_train_the_real_counts_task_like_one() {
    let Some(dir) = la_crime_dir() else {
        eprintln!("skipped: ../shared/data/la-crime is absent");
        return;
    };
    let loaded = load_path(&dir.join("la_crime_2024_02.csv")).unwrap();
    let data = build_task(&loaded.incidents, &TaskConfig::new(Task::Counts)).unwrap();
    let s = &data.splits;
    let mut cfg = ModelConfig::for_dataset(ModelKind::Lstm, &s.train);
    cfg.dropout = 0.0;
    tch::manual_seed(1);
    let model = build(&cfg, tch::Device::Cpu).unwrap();
    let start = model.export_params();
    let tcfg = TrainConfig {
        epochs: 3,
        batch_size: 64,
        ..TrainConfig::default()
    };
    let mut one = Trainer::new(model, tcfg.clone()).unwrap();
    one.fit(&s.train, None).unwrap();
    let replicas = (0..2)
        .map(|_| {
            let mut m = build(&cfg, tch::Device::Cpu).unwrap();
            m.import_params(&start).unwrap();
            m
        })
        .collect();
    let mut two = ParallelTrainer::from_models(replicas, tcfg).unwrap();
    two.fit(&s.train, None).unwrap();
    let d = one.params().l2_distance(&two.params()).unwrap();
    assert!(d < 1e-4, "parameter distance {d}");
    let (a, b) = (
        one.evaluate(&s.test).unwrap(),
        two.evaluate(&s.test).unwrap(),
    );
    assert!((a.loss - b.loss).abs() < 1e-5);
}
