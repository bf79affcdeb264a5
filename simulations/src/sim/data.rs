//! The study's data: the task built once from all incidents, the stations as
//! index lists into it, the shared model architecture, and the
//! [`Learner`] each station runs.
//!
//! The task (features, temporal split, featurizer) is built once on the
//! pooled incidents, as an agency would fit its shared featurizer, and
//! every method trains and is scored on exactly these samples: the
//! centralized baselines on the pooled splits, each station on its part of
//! them ([`partition_splits`]). A station is a name and three index lists
//! into the one shared [`Splits`]; the rows are gathered into a
//! [`Station`] only while it serves a request, so a thousand virtual
//! stations cost a thousand index lists, not a thousand datasets or models.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tch::Device;

use fedcrime_data::loader::load_path;
use fedcrime_data::partition::{partition_splits, StationSplits};
use fedcrime_data::synth::{generate_incidents_with, SynthConfig};
use fedcrime_data::tasks::{build_task, TaskConfig};
use fedcrime_data::{Dataset, Featurizer, Splits, Task};
use fedcrime_fl::{EvaluateIns, EvaluateRes, FitIns, FitRes, StationId};
use fedcrime_identity::IdentityError;
use fedcrime_ml::model::ModelConfig;
use fedcrime_ml::train::TrainConfig;
use fedcrime_station::{default_train_config, Learner, Station};

use super::config::SimConfig;

/// Everything the methods of one study share.
#[derive(Debug)]
pub struct StudyData {
    /// Where the incidents came from, one line.
    pub source: String,
    /// Cleaned incidents the task was built from.
    pub incidents: usize,
    /// The task.
    pub task: TaskConfig,
    /// The pooled train / validation / test samples.
    pub splits: Arc<Splits>,
    /// The featurizer fit on the training window (shared by every station).
    pub featurizer: Featurizer,
    /// Each station's samples, as indices into `splits`.
    pub stations: Vec<StationSplits>,
    /// The architecture every method trains.
    pub model: Arc<ModelConfig>,
}

impl StudyData {
    /// Loads (or generates) the incidents, builds the task, partitions it
    /// and derives the model architecture, as `cfg` says.
    pub fn prepare(cfg: &SimConfig) -> Result<Self> {
        let d = &cfg.data;
        let (incidents, source) = match &d.file {
            Some(path) => {
                let loaded =
                    load_path(path).with_context(|| format!("loading {}", path.display()))?;
                (loaded.incidents, path.display().to_string())
            }
            None => {
                let synth = SynthConfig {
                    days: d.days,
                    ..SynthConfig::new(d.rows, d.data_seed)
                };
                let loaded =
                    generate_incidents_with(&synth).context("generating the synthetic data")?;
                (
                    loaded.incidents,
                    format!(
                        "synthetic LA-like data ({} days, seed {})",
                        d.days, d.data_seed
                    ),
                )
            }
        };
        let task = TaskConfig {
            task: d.task,
            period: d.period,
            lags: d.lags,
            ..TaskConfig::default()
        };
        let built = build_task(&incidents, &task).with_context(|| {
            format!(
                "building the {} task from {} incidents of {source}",
                d.task,
                incidents.len()
            )
        })?;
        let n_incidents = incidents.len();
        drop(incidents);
        let splits = built.splits;
        let partition = cfg.partition();
        let stations = partition_splits(&splits, &partition, cfg.seed)
            .with_context(|| format!("partitioning the samples ({partition})"))?;
        if stations.is_empty() {
            bail!("the {partition} partition left no station with training samples");
        }
        let model = model_config(cfg, &splits.train)?;
        Ok(StudyData {
            source,
            incidents: n_incidents,
            task,
            splits: Arc::new(splits),
            featurizer: built.featurizer,
            stations,
            model: Arc::new(model),
        })
    }

    /// Width of one sample's metrics (classes or count dimensions).
    pub fn output_dim(&self) -> usize {
        self.splits.train.target.output_dim()
    }

    /// The training settings every station starts from (rounds override
    /// epochs, batch size, learning rate, seed and FedProx's mu).
    pub fn station_defaults(&self, cfg: &SimConfig) -> TrainConfig {
        TrainConfig {
            batch_size: cfg.train.batch_size,
            lr: cfg.train.lr,
            weight_decay: cfg.train.weight_decay,
            max_grad_norm: cfg.train.max_grad_norm,
            eval_batch_size: cfg.train.eval_batch_size,
            seed: cfg.seed,
            ..default_train_config()
        }
    }

    /// One learner per station, in partition order.
    pub fn learners(&self, cfg: &SimConfig, device: Device) -> Vec<Arc<SimStation>> {
        let defaults = self.station_defaults(cfg);
        self.stations
            .iter()
            .map(|part| {
                Arc::new(SimStation {
                    part: part.clone(),
                    data: self.splits.clone(),
                    model: self.model.clone(),
                    device,
                    defaults: defaults.clone(),
                })
            })
            .collect()
    }

    /// Training samples per station, in partition order.
    pub fn station_sizes(&self) -> Vec<usize> {
        self.stations.iter().map(|s| s.train.len()).collect()
    }
}

/// A partition's station name as a certificate name (lowercase letters,
/// digits and `-`, starting with a letter): names that start otherwise
/// (`77th-street`) get a `station-` prefix. Both transports use it, so
/// sampling and aggregation see the same, identically ordered names. The
/// result is checked by the identity rules like any certificate name.
pub fn certificate_name(name: &str) -> Result<StationId, IdentityError> {
    let clean: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let clean = clean.trim_end_matches('-');
    let name: String = if clean.starts_with(|c: char| c.is_ascii_lowercase()) {
        clean.chars().take(63).collect()
    } else {
        format!("station-{clean}").chars().take(63).collect()
    };
    StationId::new(name.trim_end_matches('-'))
}

/// The architecture of the study: the kind's defaults for the pooled
/// training split (widths, target prior), the configured overrides, and the
/// class weights of the pooled training labels.
pub fn model_config(cfg: &SimConfig, train: &Dataset) -> Result<ModelConfig> {
    let m = &cfg.model;
    let mut model = ModelConfig::for_dataset(m.kind, train);
    if let Some(h) = m.hidden {
        model.hidden = h;
    }
    if let Some(l) = m.layers {
        model.layers = l;
    }
    model.dropout = m.dropout;
    if train.task == Task::Risk {
        model.class_weights = m.class_weights.weights(train);
    }
    model
        .validate()
        .with_context(|| format!("the {} model for the {} task", m.kind, train.task))?;
    Ok(model)
}

/// A virtual station: a name and index lists into the shared splits. Serves
/// each request with a [`Station`] assembled for it and dropped after it, so
/// it holds no rows and no model between requests.
#[derive(Debug)]
pub struct SimStation {
    part: StationSplits,
    data: Arc<Splits>,
    model: Arc<ModelConfig>,
    device: Device,
    defaults: TrainConfig,
}

impl SimStation {
    /// The station's name in the partition (`central`, `77th-street`, `station-03`).
    pub fn name(&self) -> &str {
        &self.part.name
    }

    /// The station's identity on every transport: its name, made a valid
    /// certificate name ([`certificate_name`]).
    pub fn id(&self) -> Result<StationId, IdentityError> {
        certificate_name(&self.part.name)
    }

    /// Its training samples.
    pub fn train_len(&self) -> usize {
        self.part.train.len()
    }

    /// A [`Station`] holding the station's training rows and, when `eval`,
    /// its validation and test rows (else those stay empty).
    fn assemble(&self, eval: bool) -> fedcrime_station::Result<Station> {
        let take =
            |ds: &Dataset, idx: &[usize], wanted: bool| ds.subset(if wanted { idx } else { &[] });
        let splits = Splits {
            train: take(&self.data.train, &self.part.train, true),
            val: take(&self.data.val, &self.part.val, eval),
            test: take(&self.data.test, &self.part.test, eval),
        };
        Station::new(
            self.part.name.clone(),
            splits,
            (*self.model).clone(),
            self.device,
        )?
        .with_defaults(self.defaults.clone())
    }
}

impl Learner for SimStation {
    fn fit(&self, ins: &FitIns) -> fedcrime_station::Result<FitRes> {
        self.assemble(false)?.fit(ins)
    }

    fn evaluate(&self, ins: &EvaluateIns) -> fedcrime_station::Result<EvaluateRes> {
        self.assemble(true)?.evaluate(ins)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrime_data::Partition;

    fn small() -> SimConfig {
        let mut c = SimConfig::default();
        c.data.rows = 8_000;
        c.data.days = 90;
        c.federation.partition = Partition::Iid { stations: 4 };
        c.federation.stations = Some(4);
        c
    }

    #[test]
    fn certificate_names_are_valid_for_every_partition() {
        let name = |n| certificate_name(n).unwrap().to_string();
        assert_eq!(name("central"), "central");
        assert_eq!(name("77th-street"), "station-77th-street");
        assert_eq!(name("station-03"), "station-03");
        assert_eq!(name("N Hollywood"), "n-hollywood");
        assert_eq!(name("x-"), "x");
        assert_eq!(name(""), "station");
    }

    #[test]
    fn stations_cover_the_pooled_splits_once() {
        let cfg = small();
        let data = StudyData::prepare(&cfg).unwrap();
        assert_eq!(data.stations.len(), 4);
        let total: usize = data.station_sizes().iter().sum();
        assert_eq!(total, data.splits.train.len());
        let val: usize = data.stations.iter().map(|s| s.val.len()).sum();
        assert_eq!(val, data.splits.val.len());
        assert_eq!(data.model.input_dim, data.splits.train.feature_dim);
        assert!(data.model.class_weights.is_some());
        // A station's assembled rows are exactly its indices' rows.
        let learners = data.learners(&cfg, Device::Cpu);
        let st = learners[1].assemble(true).unwrap();
        let want = data.splits.train.subset(&data.stations[1].train);
        assert_eq!(st.splits().train, want);
        assert_eq!(st.splits().val.len(), data.stations[1].val.len());
        assert_eq!(learners[1].assemble(false).unwrap().splits().val.len(), 0);
    }
}
