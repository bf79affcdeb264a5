//! # fedcrime-client
//!
//! A precinct station of a fedcrime federation. It loads only its own
//! records (an LAPD export filtered to its area, or the embedded synthetic
//! data; a partition of the samples for studies), connects to the agency's
//! server over QUIC with mutual TLS, and for each round trains locally from
//! the global model and sends back its parameters; it answers evaluation
//! requests on its local validation split. Raw records never leave the
//! station: only parameters, example counts and aggregate metrics do.
//!
//! - [`StationConfig`]: the typed `station.toml`;
//! - [`run`]: load the data, connect, take part until the run ends or
//!   Ctrl-C, reconnecting after network loss;
//! - [`Client`] with a [`LearnerFactory`]: the protocol client on its own,
//!   for tests and embedders that bring their own learner.
//!
//! The station learns the run's task, model architecture and shared
//! featurizer from the server's Welcome, so it cannot train something other
//! than what the server aggregates; a station whose data does not fit the
//! run tells the server and stops.

mod client;
pub mod config;
mod error;
pub mod serve;

use std::sync::{Arc, Mutex};

use fedcrime_data::Incident;
use fedcrime_net::Connector;
use fedcrime_station::data::{prepare_for, Selection};
use fedcrime_station::protocol::RunSetup;
use fedcrime_station::{Learner, Station, StationError};

pub use client::{
    Client, ClientOptions, ClientOutcome, ClientReport, GlobalModelSink, LearnerFactory,
    SecAggDropout, TreeHeads, MAX_STANDBY,
};
pub use config::StationConfig;
pub use error::{ClientError, Result};

/// The learners of a station with its own records: a [`Station`] per run
/// setup, its splits prepared from the records on first use.
pub struct DataStation {
    name: String,
    incidents: Vec<Incident>,
    selection: Selection,
    device: tch::Device,
    cache: Mutex<Option<(RunSetup, Arc<Station>)>>,
    /// What the station's records have spent under local DP.
    accountant: fedcrime_station::PrivacyAccountant,
}

impl std::fmt::Debug for DataStation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataStation")
            .field("name", &self.name)
            .field("incidents", &self.incidents.len())
            .field("selection", &self.selection)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl DataStation {
    /// A station named `name` with `incidents`, of which `selection` are its own.
    pub fn new(
        name: impl Into<String>,
        incidents: Vec<Incident>,
        selection: Selection,
        device: tch::Device,
    ) -> Self {
        DataStation {
            name: name.into(),
            incidents,
            selection,
            device,
            cache: Mutex::new(None),
            accountant: Default::default(),
        }
    }

    /// Charges local DP (DP-SGD) rounds to `accountant` (e.g. one kept in
    /// a file, [`fedcrime_station::AccountantStore::open`]) instead of an
    /// accountant in memory.
    pub fn with_privacy_accountant(
        mut self,
        accountant: fedcrime_station::PrivacyAccountant,
    ) -> Self {
        self.accountant = accountant;
        self
    }
}

impl LearnerFactory for DataStation {
    fn learner(&self, setup: &RunSetup) -> std::result::Result<Arc<dyn Learner>, StationError> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, station)) = cache.as_ref() {
            if s == setup {
                return Ok(station.clone());
            }
        }
        // gat-tcn: the station's own areas as a subgraph, the run's
        // weights layout (see fedcrime_station::data::prepare_for).
        let (splits, model) = prepare_for(
            &setup.model,
            &self.incidents,
            &setup.task,
            setup.featurizer.as_ref(),
            &self.selection,
        )?;
        tracing::info!(
            station = %self.name,
            train = splits.train.len(),
            val = splits.val.len(),
            test = splits.test.len(),
            shared_featurizer = setup.featurizer.is_some(),
            "prepared the local data"
        );
        let mut station = Station::new(self.name.clone(), splits, model, self.device)?
            .with_privacy_accountant(self.accountant.clone());
        // The next period's rows, for the dashboard's map (rows models only),
        // featurized as the station trains: with the run's featurizer, else
        // with the one it fits on its own records.
        // (Not for a study's partition part: its records are not its areas'.)
        let whole_areas = !matches!(self.selection, Selection::Part { .. });
        if whole_areas && setup.model.kind != fedcrime_ml::model::ModelKind::GatTcn {
            let own;
            let featurizer = match &setup.featurizer {
                Some(f) => Some(f),
                None => {
                    own = fedcrime_data::build_task(&self.incidents, &setup.task)
                        .ok()
                        .map(|t| t.featurizer);
                    own.as_ref()
                }
            };
            let areas = served_areas(&self.selection);
            if let Some(rows) = featurizer
                .and_then(|f| fedcrime_station::forecast_rows(f, &self.incidents, areas.as_ref()))
            {
                station = station.with_forecast(Arc::new(rows))?;
            }
        }
        let station = Arc::new(station);
        *cache = Some((setup.clone(), station.clone()));
        Ok(station)
    }
}

/// Runs a station with `config` until the server's run ends or Ctrl-C.
pub async fn run(config: StationConfig) -> Result<ClientReport> {
    config.validate()?;
    if config.threads > 0 {
        tch::set_num_threads(i32::try_from(config.threads).unwrap_or(i32::MAX));
    }
    let device = config.device.resolve().map_err(ClientError::Device)?;
    let tls = config.client_tls();
    let name = tls.station()?.as_str().to_string();
    let seed = config::jitter_seed(config.seed, &name);
    let selection = config.data.selection()?;
    let data = config.data.clone();
    let incidents = if config.echo {
        tracing::info!(station = %name, "echo: answering each round with the model received");
        Vec::new()
    } else {
        let incidents = tokio::task::spawn_blocking(move || data.load())
            .await
            .map_err(|e| ClientError::Handshake(format!("loading the data: {e}")))??;
        tracing::info!(station = %name, incidents = incidents.len(), device = ?device, "records loaded");
        incidents
    };
    let service = match &config.serve {
        Some(section) => Some(
            serve::start(
                section,
                incidents.clone(),
                served_areas(&selection),
                device,
                async {
                    fedcrime_cli::logging::shutdown_signal().await;
                },
            )
            .await?,
        ),
        None => None,
    };
    let factory: Arc<dyn LearnerFactory> = if config.echo {
        let echo: Arc<dyn Learner> = Arc::new(fedcrime_station::Echo);
        Arc::new(move |_: &RunSetup| Ok(echo.clone()))
    } else {
        let accountant = match &config.privacy.accountant {
            Some(path) => Arc::new(fedcrime_station::AccountantStore::open(path)?),
            None => Default::default(),
        };
        Arc::new(
            DataStation::new(name, incidents, selection, device)
                .with_privacy_accountant(accountant),
        )
    };
    let connector = Connector::new(
        &tls,
        &config.transport,
        config.server_addr()?,
        config.reconnect.clone(),
        seed,
    )?;
    let options = ClientOptions {
        signing_key: config.signing_key()?.map(Arc::new),
        tree_heads: config.tree_heads()?,
        device: config.device.to_string(),
        reconnect: config.reconnect.clone(),
        seed,
        standby: std::time::Duration::from_millis(2 * config.transport.idle_timeout_ms),
        ..ClientOptions::default()
    };
    let mut client = Client::new(connector, factory, options);
    if let Some(s) = &service {
        client = client.with_model_sink(Arc::new(serve::SwapIn::new(s.live.clone(), device)));
    }
    let report = client
        .run(async {
            fedcrime_cli::logging::shutdown_signal().await;
        })
        .await?;
    // Predictions outlive the federation: the station keeps serving its
    // last model until it is stopped (the service got the same signal).
    if let Some(s) = service {
        if report.outcome != ClientOutcome::Interrupted {
            let version = s.live.model().map(|m| m.version.clone()).ok();
            tracing::info!(
                addr = %s.addr,
                model = version.as_deref().unwrap_or("none"),
                "the run is over; still serving predictions (Ctrl-C stops)"
            );
            match s.task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "the prediction service stopped"),
                Err(e) => tracing::error!(error = %e, "the prediction service task failed"),
            }
        }
    }
    Ok(report)
}

/// The areas a station serves predictions for: its area filter, else all.
pub fn served_areas(selection: &Selection) -> Option<std::collections::BTreeSet<u8>> {
    match selection {
        Selection::Areas(codes) => Some(codes.iter().copied().collect()),
        Selection::All | Selection::Part { .. } => None,
    }
}
