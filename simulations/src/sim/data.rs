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
//!
//! `gat-tcn` (counts, `bureau` partition only) reads whole areas' count
//! series instead: the pooled splits are the graph windows of all 21 areas
//! (what the centralized baselines train on and every method is scored on),
//! and each bureau station holds the graph windows of its own areas and
//! the boundaries among them ([`StationGraph`]; boundaries to other
//! bureaus' areas are dropped) with the run's model on that subgraph. The
//! weights have one layout whatever the node count, so the stations' updates
//! average into a model that runs on the whole city. What leaves a station:
//! its weights, example count and training loss, as for every model.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tch::Device;

use fedcrime_data::areas::Bureau;
use fedcrime_data::loader::load_path;
use fedcrime_data::partition::{partition_splits, StationSplits};
use fedcrime_data::synth::{generate_incidents_with, SynthConfig};
use fedcrime_data::tasks::TaskData;
use fedcrime_data::tasks::{build_task, TaskConfig};
use fedcrime_data::{Dataset, Featurizer, Partition, Splits, Task};
use fedcrime_fl::{EvaluateIns, EvaluateRes, FitIns, FitRes, StationId};
use fedcrime_identity::IdentityError;
use fedcrime_ml::model::{AreaGraph, GraphWindows, ModelConfig, ModelKind};
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
    /// The architecture every method trains (for gat-tcn: on all 21 areas).
    pub model: Arc<ModelConfig>,
    /// gat-tcn: each station's own graph data and model, in `stations`
    /// order (empty for the other models).
    pub station_graphs: Vec<StationGraph>,
    /// Every area's rows at the period after the data end (dnn and lstm
    /// over natural or bureau partitions: stations that own whole areas).
    pub forecast: Option<Arc<Dataset>>,
}

/// A gat-tcn station's own data: the graph windows of its areas.
#[derive(Debug)]
pub struct StationGraph {
    /// Its areas and the boundaries among them.
    pub graph: AreaGraph,
    /// Its graph samples (the same periods as the pooled graph splits).
    pub splits: Arc<Splits>,
    /// The study's model on its subgraph (same weights layout).
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
        let whole_areas = matches!(cfg.partition(), Partition::Natural | Partition::Bureau);
        let forecast = (whole_areas && cfg.model.kind != ModelKind::GatTcn)
            .then(|| fedcrime_station::forecast_rows(&built.featurizer, &incidents, None))
            .flatten()
            .map(Arc::new);
        drop(incidents);
        let (splits, stations, model, station_graphs) = if cfg.model.kind == ModelKind::GatTcn {
            graph_study(cfg, &built)?
        } else {
            let splits = built.splits;
            let partition = cfg.partition();
            let stations = partition_splits(&splits, &partition, cfg.seed)
                .with_context(|| format!("partitioning the samples ({partition})"))?;
            if stations.is_empty() {
                bail!("the {partition} partition left no station with training samples");
            }
            let model = model_config(cfg, &splits.train)?;
            (splits, stations, model, Vec::new())
        };
        Ok(StudyData {
            source,
            incidents: n_incidents,
            task,
            splits: Arc::new(splits),
            featurizer: built.featurizer,
            stations,
            model: Arc::new(model),
            station_graphs,
            forecast,
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
            fairness: cfg.train.fairness,
            fairness_groups: cfg.train.fairness_groups,
            ..default_train_config()
        }
    }

    /// One learner per station, in partition order.
    pub fn learners(&self, cfg: &SimConfig, device: Device) -> Vec<Arc<SimStation>> {
        let defaults = self.station_defaults(cfg);
        self.stations
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let (data, model) = match self.station_graphs.get(i) {
                    Some(g) => (g.splits.clone(), g.model.clone()),
                    None => (self.splits.clone(), self.model.clone()),
                };
                let forecast = self.forecast.as_ref().and_then(|all| {
                    let areas: std::collections::BTreeSet<u8> = part
                        .train
                        .iter()
                        .map(|&i| self.splits.train.area[i])
                        .collect();
                    let idx: Vec<usize> = (0..all.len())
                        .filter(|&i| areas.contains(&all.area[i]))
                        .collect();
                    (!idx.is_empty()).then(|| Arc::new(all.subset(&idx)))
                });
                Arc::new(SimStation {
                    part: part.clone(),
                    data,
                    model,
                    device,
                    defaults: defaults.clone(),
                    forecast,
                    accountant: Default::default(),
                })
            })
            .collect()
    }

    /// Training samples per station, in partition order.
    pub fn station_sizes(&self) -> Vec<usize> {
        self.stations.iter().map(|s| s.train.len()).collect()
    }
}

/// The gat-tcn study of a counts task: the pooled graph splits of all 21
/// areas, one station per bureau with the graph splits of its areas (every
/// sample index of them is the station's), the model on all areas, and each
/// station's data and model on its subgraph.
fn graph_study(
    cfg: &SimConfig,
    built: &TaskData,
) -> Result<(Splits, Vec<StationSplits>, ModelConfig, Vec<StationGraph>)> {
    let partition = cfg.partition();
    if partition != Partition::Bureau {
        bail!("gat-tcn federates over the bureau partition only, not {partition}");
    }
    let series = built
        .graph
        .as_ref()
        .context("the counts task came without its graph series")?;
    let windows = GraphWindows::for_period(cfg.data.period);
    let pooled = AreaGraph::lapd()
        .splits(series, &windows)
        .context("graph windows of all areas")?;
    let model = model_config(cfg, &pooled.train)?;
    let mut stations = Vec::new();
    let mut graphs = Vec::new();
    for b in Bureau::ALL {
        let graph = AreaGraph::bureau(b);
        let splits = graph
            .splits(series, &windows)
            .with_context(|| format!("graph windows of the {b} bureau"))?;
        if splits.train.is_empty() {
            continue;
        }
        let local = model
            .on_graph(&graph, &splits.train)
            .with_context(|| format!("the model on the {b} bureau's areas"))?;
        let all = |ds: &Dataset| (0..ds.len()).collect::<Vec<_>>();
        stations.push(StationSplits {
            name: format!("{}-bureau", b.name().to_ascii_lowercase()),
            train: all(&splits.train),
            val: all(&splits.val),
            test: all(&splits.test),
        });
        graphs.push(StationGraph {
            graph,
            splits: Arc::new(splits),
            model: Arc::new(local),
        });
    }
    if stations.is_empty() {
        bail!("no bureau has training periods");
    }
    Ok((pooled, stations, model, graphs))
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
    /// Its areas' rows at the period after the data end (natural and
    /// bureau partitions), for the dashboard's map.
    forecast: Option<Arc<Dataset>>,
    /// What its DP-SGD rounds have spent (local differential privacy).
    accountant: fedcrime_station::PrivacyAccountant,
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
        let station = Station::new(
            self.part.name.clone(),
            splits,
            (*self.model).clone(),
            self.device,
        )?
        .with_defaults(self.defaults.clone())?
        .with_privacy_accountant(self.accountant.clone());
        match (&self.forecast, eval) {
            (Some(rows), true) => station.with_forecast(rows.clone()),
            _ => Ok(station),
        }
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

    #[test]
    fn gat_tcn_bureau_stations_train_on_their_subgraphs_and_average_into_the_city_model() {
        use fedcrime_fl::FitIns;
        use fedcrime_params::Params;
        let mut cfg = small();
        cfg.data.task = Task::Counts;
        cfg.model.kind = ModelKind::GatTcn;
        cfg.model.hidden = Some(8);
        cfg.federation.partition = Partition::Bureau;
        cfg.federation.stations = None;
        cfg.validate().unwrap();
        let data = StudyData::prepare(&cfg).unwrap();
        assert_eq!(data.model.areas, 21);
        assert_eq!(data.stations.len(), 4);
        let all_edges = fedcrime_data::areas::adjacency().len();
        let mut kept = 0;
        for (st, g) in data.stations.iter().zip(&data.station_graphs) {
            assert!(st.name.ends_with("-bureau"));
            assert_eq!(g.model.areas, g.graph.len());
            // No cross-bureau edge inside a station's model.
            for &(i, j) in &g.model.adjacency {
                let (a, b) = (g.graph.codes()[i], g.graph.codes()[j]);
                assert_eq!(
                    fedcrime_data::area(a).unwrap().bureau,
                    fedcrime_data::area(b).unwrap().bureau
                );
            }
            kept += g.model.adjacency.len();
            assert_eq!(st.train.len(), data.splits.train.len());
        }
        assert!(kept < all_edges, "cross-bureau boundaries are dropped");
        tch::manual_seed(1);
        let global = fedcrime_ml::model::build(&data.model, Device::Cpu)
            .unwrap()
            .export_params();
        let ins = FitIns {
            global: Arc::new(global.clone()),
            round: 1,
            settings: Arc::new(crate::sim::round_settings(&cfg)),
        };
        // FedAvg by hand: the updates share the city model's layout.
        let mut sum = vec![0f64; global.data().len()];
        let mut n = 0.0;
        for l in data.learners(&cfg, Device::Cpu) {
            let res = l.fit(&ins).unwrap();
            assert_eq!(res.params.spec(), global.spec());
            for (s, v) in sum.iter_mut().zip(res.params.data()) {
                *s += f64::from(*v) * res.num_examples as f64;
            }
            n += res.num_examples as f64;
        }
        let avg = Params::new(
            global.spec().clone(),
            sum.iter().map(|s| (s / n) as f32).collect(),
        )
        .unwrap();
        assert!(avg.l2_distance(&global).unwrap() > 0.0);
        let mut eval = super::super::eval::Evaluator::new(
            &data.model,
            data.splits.clone(),
            cfg.train.eval_batch_size,
        )
        .unwrap();
        let scores = eval.evaluate(&avg).unwrap();
        assert!(scores.test.headline().is_finite());
    }
}
