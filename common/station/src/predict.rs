//! Predictions at a station (issue 15 groundwork): the served model, its
//! featurizer and version, swapped whole after each federated round while
//! readers keep the model they started with, and what it predicts for an
//! area and a period from the station's incident history.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use fedcrime_data::tasks::TimeUnit;
use fedcrime_data::{area, Category, Featurizer, Incident, Task};
use fedcrime_ml::explain::{explained_outputs, Inputs};
use fedcrime_ml::model::{load_model, to_batch, CrimeModel, ModelKind};
use tch::{Device, Kind, Tensor};

use crate::{Result, StationError};

/// A model ready to serve: the network, the featurizer that turns
/// incidents into its inputs, and where it came from.
pub struct Served {
    /// Behind a lock: models are `Send`, not `Sync`; one forward pass over
    /// the 21 areas takes well under a millisecond on a CPU.
    model: std::sync::Mutex<Box<dyn CrimeModel>>,
    featurizer: Featurizer,
    /// The federated round the model is from (0: trained centrally).
    pub round: u64,
    /// A version label, e.g. `round-12`.
    pub version: String,
    /// Set by [`ModelSlot::install`]: one number per installed model.
    serial: u64,
    /// The flat input layout of [`Served::infer`].
    inputs: Inputs,
    kind: ModelKind,
    task: Task,
    outputs: usize,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("round", &self.round)
            .field("version", &self.version)
            .finish()
    }
}

fn setting(key: &str, reason: impl Into<String>) -> StationError {
    StationError::Setting {
        key: key.into(),
        reason: reason.into(),
    }
}

impl Served {
    /// A model with its featurizer, checked to fit each other: same task,
    /// as many inputs as the featurizer makes. The graph model (gat-tcn)
    /// is not served per area yet.
    pub fn new(model: Box<dyn CrimeModel>, featurizer: Featurizer, round: u64) -> Result<Self> {
        let cfg = model.config();
        if model.kind() == ModelKind::GatTcn {
            return Err(setting(
                "model",
                "gat-tcn predicts the whole city from a graph window; serve a dnn or lstm",
            ));
        }
        if cfg.task != featurizer.task {
            return Err(setting(
                "model",
                format!("a {} model with a {} featurizer", cfg.task, featurizer.task),
            ));
        }
        if cfg.input_dim != featurizer.feature_dim() {
            return Err(setting(
                "model",
                format!(
                    "the model reads {} features, the featurizer makes {}",
                    cfg.input_dim,
                    featurizer.feature_dim()
                ),
            ));
        }
        // The featurizer's rows always carry the sequence view (`lags`
        // steps of per-category counts), used or not by the model.
        let (steps, step_dim) = if featurizer.lags > 0 {
            (featurizer.lags, Category::COUNT)
        } else {
            (0, 0)
        };
        let inputs = Inputs {
            feature_dim: cfg.input_dim,
            steps,
            step_dim,
        };
        let kind = model.kind();
        let task = model.task();
        let outputs = cfg.output_dim;
        Ok(Served {
            model: std::sync::Mutex::new(model),
            featurizer,
            round,
            version: format!("round-{round}"),
            serial: 0,
            inputs,
            kind,
            task,
            outputs,
        })
    }

    /// Loads a model file written by `fedcrime-sim train` or a federation
    /// (its featurizer in the metadata), on `device`.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let (model, meta) = load_model(path, device)?;
        let featurizer: Featurizer = meta
            .get("fedcrime.featurizer")
            .ok_or_else(|| {
                setting(
                    "model",
                    format!(
                        "{} carries no featurizer: it cannot be served",
                        path.display()
                    ),
                )
            })
            .and_then(|j| {
                serde_json::from_str(j)
                    .map_err(|e| setting("model", format!("{}: featurizer: {e}", path.display())))
            })?;
        let round = meta.get("round").and_then(|r| r.parse().ok()).unwrap_or(0);
        Served::new(model, featurizer, round)
    }

    /// The time step of the model's task holding day number `day` at
    /// `minute` after midnight.
    pub fn step_of(&self, day: i64, minute: u16) -> Option<u32> {
        self.featurizer.time_unit().step_of(day, minute)
    }

    /// The number given by the slot that installed it (0: never installed).
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The architecture.
    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// The task.
    pub fn task(&self) -> Task {
        self.task
    }

    /// The flat input layout of [`Served::infer`]: the features, then the
    /// sequence view (oldest step first).
    pub fn inputs(&self) -> Inputs {
        self.inputs
    }

    /// The names of the outputs: `level 1..5` for risk, the crime
    /// categories for counts.
    pub fn output_names(&self) -> Vec<String> {
        match self.task {
            Task::Risk => (1..=self.outputs).map(|k| format!("level {k}")).collect(),
            Task::Counts => Category::ALL.iter().map(|c| c.name().to_string()).collect(),
        }
    }

    /// Runs the model on `n` flat, already scaled rows (`n x inputs().dim()`
    /// values): class probabilities for risk, expected counts for counts,
    /// `n x outputs` values.
    pub fn infer(&self, rows: &[f32], n: usize) -> Result<Vec<f32>> {
        let dim = self.inputs.dim();
        if n == 0 || rows.len() != n * dim {
            return Err(setting(
                "input",
                format!("{} values for {n} row(s) of {dim}", rows.len()),
            ));
        }
        let model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let x = Tensor::from_slice(rows)
            .reshape([n as i64, dim as i64])
            .to_device(model.device());
        let out = tch::no_grad(|| {
            let y = model.forward_t(&self.inputs.batch(&x), false);
            explained_outputs(model.as_ref(), &y)
        });
        Vec::<f32>::try_from(
            out.to_kind(Kind::Float)
                .to_device(Device::Cpu)
                .flatten(0, -1),
        )
        .map_err(|e| StationError::Train(fedcrime_ml::train::TrainError::Torch(e)))
    }

    /// The time unit of its predictions.
    pub fn time_unit(&self) -> TimeUnit {
        self.featurizer.time_unit()
    }

    /// The featurized rows of every area at step `t` from `history`.
    pub fn rows_at(&self, history: &[Incident], t: u32) -> Result<fedcrime_data::Dataset> {
        Ok(self.featurizer.rows_at(history, t)?)
    }

    /// Predicts every area at step `t` from `history`.
    pub fn predict(&self, history: &[Incident], t: u32) -> Result<Vec<Prediction>> {
        let ds = self.featurizer.rows_at(history, t)?;
        let idx: Vec<usize> = (0..ds.len()).collect();
        let model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let task = model.task();
        let batch = to_batch(&ds, &idx, model.device());
        let out = tch::no_grad(|| model.forward_t(&batch, false));
        let values = match task {
            Task::Risk => out.softmax(-1, Kind::Float),
            Task::Counts => model.predict(&out),
        }
        .to_kind(Kind::Float)
        .to_device(Device::Cpu);
        let width = values.size().last().copied().unwrap_or(0) as usize;
        let flat = Vec::<f32>::try_from(values.flatten(0, -1))
            .map_err(|e| StationError::Train(fedcrime_ml::train::TrainError::Torch(e)))?;
        Ok(ds
            .area
            .iter()
            .zip(flat.chunks(width.max(1)))
            .map(|(&a, v)| match task {
                Task::Risk => {
                    let (k, _) =
                        v.iter()
                            .enumerate()
                            .fold((0, f32::MIN), |b, (i, &p)| if p > b.1 { (i, p) } else { b });
                    Prediction {
                        area: a,
                        step: t,
                        risk_level: Some(k as u8 + 1),
                        probabilities: v.to_vec(),
                        expected_counts: BTreeMap::new(),
                    }
                }
                Task::Counts => Prediction {
                    area: a,
                    step: t,
                    risk_level: None,
                    probabilities: Vec::new(),
                    expected_counts: Category::ALL
                        .iter()
                        .zip(v)
                        .map(|(c, &x)| (c.name().to_string(), x))
                        .collect(),
                },
            })
            .collect())
    }

    /// Predicts area `code` at step `t` from `history`.
    pub fn predict_area(&self, history: &[Incident], code: u8, t: u32) -> Result<Prediction> {
        if area(code).is_none() {
            return Err(setting(
                "area",
                format!("{code} is not an LAPD area code (1..=21)"),
            ));
        }
        self.predict(history, t)?
            .into_iter()
            .find(|p| p.area == code)
            .ok_or_else(|| setting("area", format!("no prediction for area {code}")))
    }
}

/// What the model says about one area and step.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// The LAPD area code.
    pub area: u8,
    /// The time step (4-hour block for risk, day or week for counts).
    pub step: u32,
    /// Risk: the most likely level, 1-5.
    pub risk_level: Option<u8>,
    /// Risk: the probability of each level.
    pub probabilities: Vec<f32>,
    /// Counts: the expected count per crime category.
    pub expected_counts: BTreeMap<String, f32>,
}

/// The model being served, swapped whole: a reader takes the current one
/// and keeps it for its request while a newer one is installed.
#[derive(Debug, Default)]
pub struct ModelSlot {
    current: RwLock<Option<Arc<Served>>>,
    installed: std::sync::atomic::AtomicU64,
}

impl ModelSlot {
    /// An empty slot (the service is not ready until a model is installed).
    pub fn new() -> Self {
        ModelSlot::default()
    }

    /// The model to use for one request, if any.
    pub fn get(&self) -> Option<Arc<Served>> {
        self.current
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Installs `next` (already loaded and checked) and returns the one it
    /// replaces; requests holding the old one finish with it.
    pub fn install(&self, mut next: Served) -> Option<Arc<Served>> {
        next.serial = self
            .installed
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1;
        let next = Some(Arc::new(next));
        match self.current.write() {
            Ok(mut g) => std::mem::replace(&mut *g, next),
            Err(p) => std::mem::replace(&mut *p.into_inner(), next),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrime_data::synth::generate_incidents;
    use fedcrime_data::{build_task, TaskConfig};
    use fedcrime_ml::model::{build, ModelConfig};

    fn served(task: Task, kind: ModelKind, round: u64) -> (Served, Vec<Incident>) {
        let incidents = generate_incidents(20_000, 3);
        let data = build_task(&incidents, &TaskConfig::new(task)).unwrap();
        let mut cfg = ModelConfig::for_dataset(kind, &data.splits.train);
        cfg.hidden = 8;
        tch::manual_seed(1);
        let model = build(&cfg, Device::Cpu).unwrap();
        (
            Served::new(model, data.featurizer, round).unwrap(),
            incidents,
        )
    }

    #[test]
    fn the_next_period_is_predicted_for_every_area() {
        let (s, history) = served(Task::Risk, ModelKind::Dnn, 3);
        let last = history.iter().map(|i| i.date_occurred).max().unwrap();
        let next = s.step_of(i64::from(last) + 1, 0).unwrap();
        let all = s.predict(&history, next).unwrap();
        assert_eq!(all.len(), 21);
        for p in &all {
            let sum: f32 = p.probabilities.iter().sum();
            assert!((sum - 1.0).abs() < 1e-4, "{sum}");
            assert!((1..=5).contains(&p.risk_level.unwrap()));
        }
        let one = s.predict_area(&history, 13, next).unwrap();
        assert_eq!(one, all[12]);
        assert!(s
            .predict_area(&history, 22, next)
            .unwrap_err()
            .to_string()
            .contains("area"));
        assert!(s.predict(&history, next + 1).is_err(), "two periods ahead");
        assert_eq!(s.version, "round-3");
        let (c, history) = served(Task::Counts, ModelKind::Lstm, 0);
        let day = history.iter().map(|i| i.date_occurred).max().unwrap() as u32 + 1;
        let p = c.predict_area(&history, 1, day).unwrap();
        assert_eq!(p.expected_counts.len(), 8);
        assert!(p
            .expected_counts
            .values()
            .all(|v| v.is_finite() && *v >= 0.0));
    }

    #[test]
    fn flat_rows_give_the_same_answers_as_the_history() {
        for (task, kind) in [
            (Task::Risk, ModelKind::Dnn),
            (Task::Counts, ModelKind::Lstm),
        ] {
            let (s, history) = served(task, kind, 1);
            let last = history.iter().map(|i| i.date_occurred).max().unwrap();
            let t = s.step_of(i64::from(last), 0).unwrap();
            let ds = s.featurizer.rows_at(&history, t).unwrap();
            let idx: Vec<usize> = (0..ds.len()).collect();
            assert_eq!(Inputs::of(&ds), s.inputs());
            let flat = s.infer(&s.inputs().rows(&ds, &idx), ds.len()).unwrap();
            let width = s.output_names().len();
            for (p, row) in s
                .predict(&history, t)
                .unwrap()
                .iter()
                .zip(flat.chunks(width))
            {
                let want: Vec<f32> = match task {
                    Task::Risk => p.probabilities.clone(),
                    Task::Counts => p.expected_counts.values().copied().collect(),
                };
                if task == Task::Counts {
                    // expected_counts is keyed by name; compare as sets of values.
                    let mut a = want.clone();
                    let mut b = row.to_vec();
                    a.sort_by(f32::total_cmp);
                    b.sort_by(f32::total_cmp);
                    assert_eq!(a, b);
                } else {
                    assert_eq!(want, row);
                }
            }
            assert!(s
                .infer(&[0.0; 3], 1)
                .unwrap_err()
                .to_string()
                .contains("input"));
        }
    }

    #[test]
    fn mismatched_models_are_refused() {
        let (risk, _) = served(Task::Risk, ModelKind::Dnn, 0);
        let (counts, _) = served(Task::Counts, ModelKind::Dnn, 0);
        let model = counts.model.into_inner().unwrap();
        let e = Served::new(model, risk.featurizer, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("counts model with a risk featurizer"), "{e}");
    }

    #[test]
    fn readers_keep_their_model_while_a_new_one_is_installed() {
        let slot = ModelSlot::new();
        assert!(slot.get().is_none());
        let (a, _) = served(Task::Risk, ModelKind::Dnn, 1);
        let (b, _) = served(Task::Risk, ModelKind::Dnn, 2);
        assert!(slot.install(a).is_none());
        let held = slot.get().unwrap();
        let old = slot.install(b).unwrap();
        assert_eq!((held.round, old.round), (1, 1));
        assert!(Arc::ptr_eq(&held, &old));
        assert_eq!(slot.get().unwrap().round, 2);
    }
}
