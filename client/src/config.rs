//! [`StationConfig`]: the typed form of `station.toml` and of the flags that
//! override it. Unknown keys are errors, and [`StationConfig::validate`]
//! names the first bad setting by its path in the file (e.g. `data.area`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use fedcrime_cli::config_file::{parse_toml, read_toml, ConfigFileError};
pub use fedcrime_cli::logging::{LogFormat, LogSection};
use fedcrime_data::{area, Incident, Partition};
use fedcrime_ml::DeviceChoice;
use fedcrime_net::{ClientTls, ReconnectPolicy, TransportSettings};
use fedcrime_station::data::{PartRef, Selection};
use serde::{Deserialize, Serialize};

use crate::error::{ClientError, Result};

/// The whole station configuration (see `client/station.example.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationConfig {
    /// The server's address, `host:port` (default `127.0.0.1:4433`).
    #[serde(default = "default_server")]
    pub server: String,
    /// The name the server certificate must carry (default `localhost`).
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// CA, station certificate and key.
    pub tls: TlsSection,
    /// Which records this station trains on.
    #[serde(default)]
    pub data: DataSection,
    /// `auto` (default: CUDA when available), `cpu`, `cuda` or `cuda:N`.
    #[serde(default)]
    pub device: DeviceChoice,
    /// CPU threads libtorch may use (0: its default).
    #[serde(default)]
    pub threads: usize,
    /// Seed of the reconnection jitter. Default: drawn from the station's
    /// name, its process and the start time ([`jitter_seed`]), so stations
    /// restarted together do not reconnect in lockstep; set it to replay.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Reconnection after network loss.
    #[serde(default)]
    pub reconnect: ReconnectPolicy,
    /// QUIC settings.
    #[serde(default)]
    pub transport: TransportSettings,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
    /// The prediction service, served beside training when set.
    #[serde(default)]
    pub serve: Option<ServeSection>,
    /// For benchmarks of the network path: answer each round with the model
    /// received, without data or training (`fedcrime_station::Echo`).
    #[serde(default)]
    pub echo: bool,
    /// The server's audit log, as this station sees it.
    #[serde(default)]
    pub audit: AuditSection,
    /// Local differential privacy's bookkeeping.
    #[serde(default)]
    pub privacy: PrivacySection,
}

/// `[privacy]`: where the station keeps what its records have spent under
/// local differential privacy (DP-SGD, when the server asks for it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacySection {
    /// The accountant's file (default: with `--pki`,
    /// `stations/NAME.privacy-accountant.json`, else
    /// `privacy-accountant.json` beside the config file).
    /// It must survive restarts: ε composes over every run the records
    /// took part in.
    pub accountant: Option<PathBuf>,
}

/// `[serve]`: the station's prediction service (see `fedcrime_client::serve`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeSection {
    /// Where it listens (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// The model to serve until a federated round brings a newer one: a
    /// `.safetensors` file or a folder holding `model.safetensors`, as
    /// `fedcrime-sim train`, `fedcrime-sim simulate` or `fedcrime-server`
    /// write them. Without it the service is not ready before the first
    /// global model arrives.
    pub model: Option<PathBuf>,
    /// The model's name in `/v2/models/{name}` (default `fedcrime`).
    pub name: String,
    /// The durable store of ingested incidents (default `incidents.store`).
    pub store: PathBuf,
    /// HTTPS; plain HTTP when absent.
    pub tls: Option<fedcrime_net::http::HttpTls>,
    /// The largest request body in bytes (default 4 MiB).
    pub max_body_bytes: usize,
    /// Rows of one `POST /incidents` at most (default 10,000).
    pub max_rows: usize,
    /// Keep each period's predictions until the model or the data change
    /// (default true).
    pub cache: bool,
}

impl Default for ServeSection {
    fn default() -> Self {
        ServeSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            model: None,
            name: "fedcrime".into(),
            store: PathBuf::from("incidents.store"),
            tls: None,
            max_body_bytes: 4 << 20,
            max_rows: 10_000,
            cache: true,
        }
    }
}

impl ServeSection {
    /// Checks the settings, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(config_err(
                "serve.name",
                format!("{:?}: use letters, digits, '-', '_' or '.'", self.name),
            ));
        }
        if self.max_body_bytes < 1024 {
            return Err(config_err("serve.max_body_bytes", "at least 1024"));
        }
        if self.max_rows == 0 {
            return Err(config_err("serve.max_rows", "at least 1"));
        }
        if self.store.as_os_str().is_empty() {
            return Err(config_err("serve.store", "is empty"));
        }
        Ok(())
    }

    /// Makes relative paths relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let mut paths = vec![&mut self.store];
        if let Some(m) = &mut self.model {
            paths.push(m);
        }
        if let Some(t) = &mut self.tls {
            paths.push(&mut t.cert);
            paths.push(&mut t.key);
            if let Some(ca) = &mut t.client_ca {
                paths.push(ca);
            }
        }
        for p in paths {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

fn default_server() -> String {
    "127.0.0.1:4433".into()
}

fn default_server_name() -> String {
    "localhost".into()
}

/// `[tls]`: the station's certificate, made by `fedcrime-certs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The agency CA certificate (PEM).
    pub ca: PathBuf,
    /// This station's certificate (PEM); the station's identity is in it.
    pub cert: PathBuf,
    /// This station's private key (PEM).
    pub key: PathBuf,
    /// This station's Ed25519 update-signing key (`<name>.sign.key` from
    /// `fedcrime-certs`, whose public key the certificate binds). Set, every
    /// update is signed; a server that requires signed updates refuses the
    /// station without it.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
}

/// `[audit]`: the station's copy of the server's audit-log tree heads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSection {
    /// The server's audit public key (`audit.pub` from the agency's PKI).
    /// Set, the station checks and keeps the signed tree head each round
    /// carries, and reports a log rewritten since.
    pub server_key: Option<PathBuf>,
    /// Where the kept heads go (default `tree-heads.jsonl` beside the
    /// config file, or in the working folder).
    pub heads: Option<PathBuf>,
}

/// One area code or several.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Areas {
    /// One LAPD area code (1..=21).
    One(u8),
    /// Several.
    Many(Vec<u8>),
}

impl Areas {
    /// The codes.
    pub fn codes(&self) -> Vec<u8> {
        match self {
            Areas::One(a) => vec![*a],
            Areas::Many(v) => v.clone(),
        }
    }
}

/// `[data]`: the records and which of them are this station's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// A LAPD export (`.csv` or `.csv.gz`). Absent: the embedded LA-like
    /// synthetic data (`synthetic_rows`, `synthetic_seed`).
    pub file: Option<PathBuf>,
    /// Rows of synthetic data (default 200,000).
    pub synthetic_rows: usize,
    /// Seed of the synthetic data (default 7).
    pub synthetic_seed: u64,
    /// This precinct's LAPD area code(s), e.g. `area = 7` or `area = [7, 8]`;
    /// only their incidents are kept.
    pub area: Option<Areas>,
    /// For studies: a partitioner (`natural`, `bureau`, `iid`, `dirichlet:ALPHA`)
    /// of all the samples, of which this station takes one `part`.
    pub partition: Option<String>,
    /// Stations of an `iid` or `dirichlet` partition (default 21).
    pub stations: Option<usize>,
    /// Which part: an index from 0 or a station name (`station-03`, `hollywood`).
    pub part: Option<PartRef>,
    /// Seed of the partitioner (default 0).
    pub partition_seed: u64,
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            file: None,
            synthetic_rows: 200_000,
            synthetic_seed: 7,
            area: None,
            partition: None,
            stations: None,
            part: None,
            partition_seed: 0,
        }
    }
}

/// Reads the key file of setting `field` with `parse(text, origin)`.
fn read_key_file<T>(
    field: &str,
    path: &Path,
    parse: impl FnOnce(&str, &str) -> fedcrime_audit::Result<T>,
) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_err(field, format!("cannot read {}: {e}", path.display())))?;
    parse(&text, &path.display().to_string()).map_err(|e| config_err(field, e.to_string()))
}

fn config_err(field: impl Into<String>, message: impl Into<String>) -> ClientError {
    ConfigFileError::setting(field, message).into()
}

impl DataSection {
    /// Which records and samples are the station's.
    pub fn selection(&self) -> Result<Selection> {
        match (&self.area, &self.partition) {
            (Some(_), Some(_)) => Err(config_err(
                "data.area",
                "give either an area filter or a partition, not both",
            )),
            (Some(a), None) => {
                let codes = a.codes();
                if codes.is_empty() {
                    return Err(config_err("data.area", "no area code given"));
                }
                if let Some(bad) = codes.iter().find(|c| area(**c).is_none()) {
                    return Err(config_err(
                        "data.area",
                        format!("{bad} is not an LAPD area code (1 to 21)"),
                    ));
                }
                Ok(Selection::Areas(codes))
            }
            (None, Some(spec)) => {
                let mut p: Partition = spec
                    .parse()
                    .map_err(|e: String| config_err("data.partition", e))?;
                if let Some(n) = self.stations {
                    if !matches!(p, Partition::Iid { .. } | Partition::Dirichlet { .. }) {
                        return Err(config_err(
                            "data.stations",
                            format!(
                                "only iid and dirichlet partitions take a station count, not {p}"
                            ),
                        ));
                    }
                    if n == 0 {
                        return Err(config_err("data.stations", "must be at least 1"));
                    }
                    p = p.with_stations(n);
                }
                let part = self
                    .part
                    .clone()
                    .ok_or_else(|| config_err("data.part", "a partition needs the part to take"))?;
                if let PartRef::Index(i) = part {
                    if i >= p.stations() {
                        return Err(config_err(
                            "data.part",
                            format!(
                                "index {i} is past the partition's {} stations",
                                p.stations()
                            ),
                        ));
                    }
                }
                Ok(Selection::Part {
                    partition: p,
                    part,
                    seed: self.partition_seed,
                })
            }
            (None, None) => {
                if self.part.is_some() || self.stations.is_some() {
                    return Err(config_err("data.part", "given without data.partition"));
                }
                Ok(Selection::All)
            }
        }
    }

    /// Loads the records (keeping only the station's areas when filtered).
    pub fn load(&self) -> Result<Vec<Incident>> {
        let mut incidents = match &self.file {
            Some(path) => {
                let loaded = fedcrime_data::load_path(path)?;
                tracing::info!(
                    path = %path.display(),
                    rows = loaded.report.rows_read,
                    kept = loaded.incidents.len(),
                    "loaded the records"
                );
                loaded.incidents
            }
            None => {
                tracing::info!(
                    rows = self.synthetic_rows,
                    seed = self.synthetic_seed,
                    "generating LA-like synthetic records"
                );
                fedcrime_data::synth::generate_incidents(self.synthetic_rows, self.synthetic_seed)
            }
        };
        if let Some(a) = &self.area {
            let codes = a.codes();
            incidents.retain(|i| codes.contains(&i.area));
            incidents.shrink_to_fit();
        }
        Ok(incidents)
    }
}

impl StationConfig {
    /// A configuration with every default, with these TLS files.
    pub fn new(tls: TlsSection) -> Self {
        StationConfig {
            server: default_server(),
            server_name: default_server_name(),
            tls,
            data: DataSection::default(),
            device: DeviceChoice::Auto,
            threads: 0,
            seed: None,
            reconnect: ReconnectPolicy::default(),
            transport: TransportSettings::default(),
            log: LogSection::default(),
            serve: None,
            echo: false,
            audit: AuditSection::default(),
            privacy: PrivacySection::default(),
        }
    }

    /// Parses TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self> {
        Ok(parse_toml(text, origin)?)
    }

    /// Reads a TOML file; relative paths in it are relative to its folder.
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut cfg: Self = read_toml(path)?;
        if let Some(base) = path.parent() {
            cfg.resolve_paths(base);
        }
        Ok(cfg)
    }

    /// Makes every relative path absolute against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.tls.ca, &mut self.tls.cert, &mut self.tls.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for p in [
            &mut self.tls.signing_key,
            &mut self.audit.server_key,
            &mut self.audit.heads,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if self.audit.server_key.is_some() && self.audit.heads.is_none() {
            self.audit.heads = Some(base.join("tree-heads.jsonl"));
        }
        if let Some(p) = &mut self.privacy.accountant {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(f) = &mut self.data.file {
            if f.is_relative() {
                *f = base.join(&*f);
            }
        }
        if let Some(s) = &mut self.serve {
            s.resolve_paths(base);
        }
    }

    /// The update-signing key, when configured.
    pub fn signing_key(&self) -> Result<Option<fedcrime_audit::SigningKey>> {
        let Some(path) = &self.tls.signing_key else {
            return Ok(None);
        };
        read_key_file(
            "tls.signing_key",
            path,
            fedcrime_audit::SigningKey::from_pkcs8_pem,
        )
        .map(Some)
    }

    /// The tree-head store settings, when `audit.server_key` is set.
    pub fn tree_heads(&self) -> Result<Option<crate::client::TreeHeads>> {
        let Some(path) = &self.audit.server_key else {
            return Ok(None);
        };
        let server_key = read_key_file("audit.server_key", path, |text, origin| {
            fedcrime_audit::PublicKey::from_text(text.trim(), origin)
        })?;
        Ok(Some(crate::client::TreeHeads {
            server_key,
            path: self
                .audit
                .heads
                .clone()
                .unwrap_or_else(|| PathBuf::from("tree-heads.jsonl")),
        }))
    }

    /// The TLS material in the net layer's form.
    pub fn client_tls(&self) -> ClientTls {
        ClientTls {
            ca: self.tls.ca.clone(),
            cert: self.tls.cert.clone(),
            key: self.tls.key.clone(),
            server_name: self.server_name.clone(),
        }
    }

    /// The server address (resolving a host name).
    pub fn server_addr(&self) -> Result<SocketAddr> {
        let mut addrs = self
            .server
            .to_socket_addrs()
            .map_err(|e| config_err("server", format!("{:?}: {e}", self.server)))?;
        addrs.next().ok_or_else(|| {
            config_err(
                "server",
                format!("{:?} resolves to no address", self.server),
            )
        })
    }

    /// Checks every section, naming the first bad setting.
    pub fn validate(&self) -> Result<()> {
        if self.server.trim().is_empty() {
            return Err(config_err("server", "is empty"));
        }
        if self.echo && self.serve.is_some() {
            return Err(config_err(
                "echo",
                "an echoing station has no data to serve predictions from: drop [serve] or echo",
            ));
        }
        if !self.server.contains(':') {
            return Err(config_err(
                "server",
                format!("{:?} has no port (expected host:port)", self.server),
            ));
        }
        if self.server_name.trim().is_empty() {
            return Err(config_err("server_name", "is empty"));
        }
        for (field, p) in [
            ("tls.ca", &self.tls.ca),
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
        ] {
            if p.as_os_str().is_empty() {
                return Err(config_err(field, "is empty"));
            }
        }
        self.data.selection()?;
        if let Some(s) = &self.serve {
            s.validate()?;
        }
        if self.data.file.is_none() && self.data.synthetic_rows == 0 {
            return Err(config_err("data.synthetic_rows", "must be at least 1"));
        }
        self.reconnect.validate().map_err(|e| match e {
            fedcrime_net::NetError::Settings { field, reason } => {
                config_err(format!("reconnect.{field}"), reason)
            }
            other => ClientError::Net(other),
        })?;
        self.transport.validate().map_err(|e| match e {
            fedcrime_net::NetError::Settings { field, reason } => {
                config_err(format!("transport.{field}"), reason)
            }
            other => ClientError::Net(other),
        })?;
        Ok(())
    }
}

/// The seed of a station's reconnection jitter: `configured` when set, else
/// a mix of the station's `name`, this process's id and the clock, different
/// for every station and every start.
pub fn jitter_seed(configured: Option<u64>, name: &str) -> u64 {
    if let Some(seed) = configured {
        return seed;
    }
    // FNV-1a over the name, then the process and the time folded in.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    h ^ u64::from(std::process::id()).rotate_left(32) ^ nanos
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11, defect 4: every station drew the same reconnection jitter
    /// (seed 0), so after a server restart they all reconnected in lockstep.
    #[test]
    fn every_station_draws_the_same_reconnect_jitter() {
        use rand::SeedableRng;
        let delays = |seed: u64| {
            let mut b = fedcrime_net::Backoff::new(
                fedcrime_net::ReconnectPolicy::default(),
                rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            );
            (0..4)
                .map(|_| b.next_delay(std::time::Duration::ZERO))
                .collect::<Vec<_>>()
        };
        let a = jitter_seed(None, "station-01");
        let b = jitter_seed(None, "station-02");
        assert_ne!(a, b);
        assert_ne!(delays(a), delays(b), "two stations wait differently");
        // A configured seed replays exactly.
        assert_eq!(jitter_seed(Some(7), "station-01"), 7);
        assert_eq!(delays(7), delays(7));
    }
}
