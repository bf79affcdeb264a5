//! A quick look at the three models on the real LAPD samples against two
//! naive baselines (train mean per area and category; last period), with a
//! plain Adam loop and early stopping. The trainer's report is the real
//! evaluation; this checks that the architectures learn something real.
//!
//! `cargo test -p fedcrime-ml --lib model::quality_check -- --ignored --nocapture`

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::nn::OptimizerConfig;
use tch::{nn, Device};

use super::*;
use fedcrime_data::{build_task, load_path, Dataset, Target, TaskConfig};

fn counts_of(ds: &Dataset) -> (&[f32], usize) {
    match &ds.target {
        Target::Counts { values, dim } => (values, *dim),
        Target::Classes { .. } => unreachable!("counts task"),
    }
}

fn mae(pred: &[f32], truth: &[f32]) -> f64 {
    pred.iter()
        .zip(truth)
        .map(|(p, t)| f64::from((p - t).abs()))
        .sum::<f64>()
        / truth.len().max(1) as f64
}

/// Trains with Adam (lr 1e-3, batch 64), early stopping on validation loss
/// (patience 8), and returns the test predictions of the best epoch.
fn fit(cfg: &ModelConfig, splits: &fedcrime_data::Splits) -> Vec<f32> {
    tch::manual_seed(0);
    let mut model = build(cfg, Device::Cpu).unwrap();
    let mut opt = nn::Adam::default().build(model.var_store(), 1e-3).unwrap();
    let train = DatasetTensors::new(&splits.train, Device::Cpu).unwrap();
    let val = DatasetTensors::new(&splits.val, Device::Cpu).unwrap().all();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let (mut best, mut best_loss, mut since) = (model.export_params(), f64::INFINITY, 0);
    for _epoch in 0..200 {
        order.shuffle(&mut rng);
        for chunk in order.chunks(64) {
            let batch = train.batch_of(chunk).unwrap();
            let loss = model.loss(&model.forward_t(&batch, true), &batch);
            opt.backward_step(&loss);
        }
        let (loss, _) = model.evaluate(&val);
        if loss < best_loss - 1e-5 {
            (best, best_loss, since) = (model.export_params(), loss, 0);
        } else {
            since += 1;
            if since >= 8 {
                break;
            }
        }
    }
    model.import_params(&best).unwrap();
    let test = DatasetTensors::new(&splits.test, Device::Cpu)
        .unwrap()
        .all();
    let (_, pred) = model.evaluate(&test);
    Vec::<f32>::try_from(pred.reshape([-1])).unwrap()
}

#[test]
#[ignore]
fn real_samples_against_naive_baselines() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/la-crime");
    for file in ["la_crime_2020_sample.csv", "la_crime_2024_02.csv"] {
        let path = std::path::Path::new(dir).join(file);
        if !path.exists() {
            eprintln!("skipped: {} not found", path.display());
            continue;
        }
        let incidents = load_path(&path).unwrap().incidents;
        let task = build_task(&incidents, &TaskConfig::new(Task::Counts)).unwrap();
        let g = task.graph.as_ref().unwrap();
        let c = g.categories;
        // Train mean per (area, category) over the training window.
        let mut mean = vec![0f32; g.areas * c];
        let train_steps: Vec<usize> = (g.bounds.start..g.bounds.val_start)
            .map(|t| (t - g.time0) as usize)
            .collect();
        for a in 0..g.areas {
            for k in 0..c {
                let s: f32 = train_steps.iter().map(|&i| g.get(a, i, k).unwrap()).sum();
                mean[a * c + k] = s / train_steps.len() as f32;
            }
        }

        // Flat models: one sample per (area, day).
        let test = &task.splits.test;
        let (truth, dim) = counts_of(test);
        let base_mean: Vec<f32> = test
            .area
            .iter()
            .flat_map(|&a| mean[(a as usize - 1) * c..][..dim].iter().copied())
            .collect();
        let base_last: Vec<f32> = test
            .area
            .iter()
            .zip(&test.time)
            .flat_map(|(&a, &t)| {
                let i = (t - g.time0) as usize - 1;
                (0..dim).map(move |k| g.get(a as usize - 1, i, k).unwrap())
            })
            .collect();
        println!(
            "{file}: {} train / {} val / {} test samples; test MAE: area mean {:.4}, last period {:.4}",
            task.splits.train.len(),
            task.splits.val.len(),
            test.len(),
            mae(&base_mean, truth),
            mae(&base_last, truth)
        );
        for kind in [ModelKind::Dnn, ModelKind::Lstm] {
            let cfg = ModelConfig::for_dataset(kind, &task.splits.train);
            let pred = fit(&cfg, &task.splits);
            println!("  {kind}: test MAE {:.4}", mae(&pred, truth));
        }

        // The graph model: one sample per day, all areas.
        let windows = GraphWindows::for_period(fedcrime_data::Period::Day);
        let gs = graph_splits(g, &windows).unwrap();
        let (gtruth, _) = counts_of(&gs.test);
        let gmean: Vec<f32> = gs
            .test
            .time
            .iter()
            .flat_map(|_| mean.iter().copied())
            .collect();
        let glast: Vec<f32> = gs
            .test
            .time
            .iter()
            .flat_map(|&t| {
                let i = (t - g.time0) as usize - 1;
                (0..g.areas).flat_map(move |a| (0..c).map(move |k| g.get(a, i, k).unwrap()))
            })
            .collect();
        let cfg = ModelConfig::for_dataset(ModelKind::GatTcn, &gs.train);
        let pred = fit(&cfg, &gs);
        println!(
            "  gat-tcn ({} train days): test MAE {:.4} (area mean {:.4}, last period {:.4} on its days)",
            gs.train.len(),
            mae(&pred, gtruth),
            mae(&gmean, gtruth),
            mae(&glast, gtruth)
        );
    }
}
