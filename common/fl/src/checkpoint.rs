//! Checkpoints: after each round the global model, the strategy's state, the
//! round number and the metrics history go to disk so that a restarted
//! server continues after the last completed round.
//!
//! Layout of a checkpoint folder:
//!
//! ```text
//! latest.json                      {"format":1,"round":3,"dir":"round-000003"}
//! round-000003/model.safetensors   the global model (Python-readable)
//! round-000003/strategy-m.safetensors, ...   parameter-sized strategy buffers
//! round-000003/state.json          round, seed, strategy state, metrics history
//! ```
//!
//! Every file is written with [`write_atomic`] (temp file, fsync, rename,
//! fsync of the folder) into a folder of its own round, and `latest.json`,
//! the only file that names the current round, is replaced last. A crash at
//! any point therefore leaves `latest.json` naming a complete earlier round
//! or the new complete one. Older round folders are pruned after the switch,
//! keeping the last [`CheckpointStore::keep`].

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::error::{FlError, Result};
use super::metrics::RoundMetrics;
use super::strategy::StrategyState;
use fedcrime_files::{sync_dir, write_atomic};
use fedcrime_params::io::ParamsIoError;
use fedcrime_params::Params;

const FORMAT: u32 = 1;
const LATEST: &str = "latest.json";
const MODEL: &str = "model.safetensors";
const STATE: &str = "state.json";

/// Everything needed to continue a run after `round`.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The last completed round.
    pub round: u64,
    /// The global model after that round.
    pub global: Arc<Params>,
    /// The strategy's state after that round.
    pub strategy: StrategyState,
    /// Metrics of rounds 1..=round.
    pub history: Vec<RoundMetrics>,
    /// The run's sampling seed.
    pub seed: u64,
}

#[derive(Serialize, Deserialize)]
struct Pointer {
    format: u32,
    round: u64,
    dir: String,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: u32,
    round: u64,
    seed: u64,
    strategy: String,
    strategy_json: serde_json::Value,
    strategy_buffers: Vec<String>,
    history: Vec<RoundMetrics>,
}

/// A checkpoint folder.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    dir: PathBuf,
    keep: usize,
}

fn round_dir_name(round: u64) -> String {
    format!("round-{round:06}")
}

fn parse_round_dir(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("round-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Buffer names become file names: `[A-Za-z0-9_]+` only.
fn check_buffer_name(name: &str, dir: &Path) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    {
        return Err(FlError::Checkpoint {
            path: dir.to_path_buf(),
            message: format!("strategy buffer name {name:?} is not [A-Za-z0-9_]+"),
        });
    }
    Ok(())
}

fn buffer_file(name: &str) -> String {
    format!("strategy-{name}.safetensors")
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FlError + 'a {
    move |source| {
        FlError::Io(ParamsIoError::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}

impl CheckpointStore {
    /// A store in `dir` (created on the first save) keeping the last 3 rounds.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CheckpointStore {
            dir: dir.into(),
            keep: 3,
        }
    }

    /// Keeps the last `keep` (at least 1) round folders.
    pub fn with_keep(mut self, keep: usize) -> Self {
        self.keep = keep.max(1);
        self
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Round folders kept.
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// Persists `checkpoint` and makes it the latest; returns its round folder.
    pub fn save(&self, checkpoint: &Checkpoint) -> Result<PathBuf> {
        self.save_steps(checkpoint, usize::MAX)
            .map(|dir| dir.unwrap_or_else(|| self.dir.join(round_dir_name(checkpoint.round))))
    }

    /// Runs the save's steps in order, stopping (as a crash would) before step
    /// number `stop`; `Ok(None)` when stopped.
    fn save_steps(&self, c: &Checkpoint, stop: usize) -> Result<Option<PathBuf>> {
        let mut step = 0;
        let mut go = || {
            step += 1;
            step <= stop
        };
        let round_dir = self.dir.join(round_dir_name(c.round));
        for name in c.strategy.buffers.keys() {
            check_buffer_name(name, &round_dir)?;
        }
        if !go() {
            return Ok(None);
        }
        fs::create_dir_all(&round_dir).map_err(io("create directory", &round_dir))?;
        sync_dir(&self.dir)?;

        if !go() {
            return Ok(None);
        }
        let meta = BTreeMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("round".to_string(), c.round.to_string()),
            ("strategy".to_string(), c.strategy.strategy.clone()),
        ]);
        c.global.save_safetensors(round_dir.join(MODEL), &meta)?;

        for (name, buffer) in &c.strategy.buffers {
            if !go() {
                return Ok(None);
            }
            buffer.save_safetensors(round_dir.join(buffer_file(name)), &meta)?;
        }

        if !go() {
            return Ok(None);
        }
        let state = StateFile {
            format: FORMAT,
            round: c.round,
            seed: c.seed,
            strategy: c.strategy.strategy.clone(),
            strategy_json: c.strategy.json.clone(),
            strategy_buffers: c.strategy.buffers.keys().cloned().collect(),
            history: c.history.clone(),
        };
        let state_path = round_dir.join(STATE);
        let json = serde_json::to_vec_pretty(&state).map_err(|e| FlError::Checkpoint {
            path: state_path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&state_path, &json)?;

        // The commit point: from here on a resume sees the new round.
        if !go() {
            return Ok(None);
        }
        let pointer = Pointer {
            format: FORMAT,
            round: c.round,
            dir: round_dir_name(c.round),
        };
        let latest = self.dir.join(LATEST);
        let json = serde_json::to_vec(&pointer).map_err(|e| FlError::Checkpoint {
            path: latest.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&latest, &json)?;

        if !go() {
            return Ok(None);
        }
        self.prune(c.round, &round_dir);
        tracing::debug!(round = c.round, dir = %round_dir.display(), "checkpoint saved");
        Ok(Some(round_dir))
    }

    /// Removes round folders older than the kept ones and temp files left by
    /// crashed writes. Failures only cost disk space, so they are logged.
    fn prune(&self, latest: u64, round_dir: &Path) {
        let oldest_kept = latest.saturating_sub(self.keep as u64 - 1);
        let is_temp = |name: &str| name.starts_with('.') && name.contains(".tmp-");
        for dir in [&self.dir, round_dir] {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let path = entry.path();
                let result = if is_temp(name) {
                    fs::remove_file(&path)
                } else if *dir == self.dir && parse_round_dir(name).is_some_and(|r| r < oldest_kept)
                {
                    fs::remove_dir_all(&path)
                } else {
                    continue;
                };
                if let Err(e) = result {
                    tracing::warn!(path = %path.display(), "could not prune old checkpoint file: {e}");
                }
            }
        }
    }

    /// The latest intact checkpoint, or `None` when the folder holds none.
    ///
    /// `latest.json` names the newest round; when that round's files cannot
    /// be read (a disk that lost the tail of a file, an edit by hand), the
    /// newest older round folder that loads is used instead, with a warning
    /// naming what was broken, and the broken folder is renamed aside
    /// (`round-000007.broken`) so that nothing is lost and the round is
    /// written afresh. Only when no round loads is the newest error returned.
    pub fn load_latest(&self) -> Result<Option<Checkpoint>> {
        let latest = self.dir.join(LATEST);
        let newest = match self.read_pointer(&latest) {
            Ok(None) => return Ok(None),
            Ok(Some(round)) => self.load_round(round).map_err(|e| (Some(round), e)),
            Err(e) => Err((None, e)),
        };
        let (broken_round, first_err) = match newest {
            Ok(c) => return Ok(Some(c)),
            Err(x) => x,
        };
        tracing::warn!(error = %first_err, "the latest checkpoint cannot be read; looking for an older one");
        let mut rounds: Vec<u64> = fs::read_dir(&self.dir)
            .map_err(io("read", &self.dir))?
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(parse_round_dir))
            .filter(|r| broken_round.is_none_or(|b| *r < b))
            .collect();
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        let mut broken: Vec<u64> = broken_round.into_iter().collect();
        for round in rounds {
            match self.load_round(round) {
                Ok(c) => {
                    for b in broken {
                        self.set_aside(b);
                    }
                    tracing::warn!(round, "resuming from the newest intact checkpoint");
                    return Ok(Some(c));
                }
                Err(e) => {
                    tracing::warn!(round, error = %e, "this checkpoint cannot be read either");
                    broken.push(round);
                }
            }
        }
        Err(first_err)
    }

    /// The round `latest.json` names; `None` when there is no such file.
    fn read_pointer(&self, latest: &Path) -> Result<Option<u64>> {
        let bytes = match fs::read(latest) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", latest)(e)),
        };
        let pointer: Pointer = serde_json::from_slice(&bytes).map_err(|e| FlError::Checkpoint {
            path: latest.to_owned(),
            message: e.to_string(),
        })?;
        if pointer.format != FORMAT || parse_round_dir(&pointer.dir) != Some(pointer.round) {
            return Err(FlError::Checkpoint {
                path: latest.to_owned(),
                message: format!(
                    "unsupported pointer (format {}, dir {:?}, round {})",
                    pointer.format, pointer.dir, pointer.round
                ),
            });
        }
        Ok(Some(pointer.round))
    }

    /// Renames a broken round folder aside (kept for inspection, out of the
    /// way of the round's next save).
    fn set_aside(&self, round: u64) {
        let from = self.dir.join(round_dir_name(round));
        if !from.exists() {
            return;
        }
        let mut to = self.dir.join(format!("{}.broken", round_dir_name(round)));
        let mut n = 1;
        while to.exists() {
            n += 1;
            to = self
                .dir
                .join(format!("{}.broken-{n}", round_dir_name(round)));
        }
        match fs::rename(&from, &to) {
            Ok(()) => {
                tracing::warn!(from = %from.display(), to = %to.display(), "broken checkpoint set aside")
            }
            Err(e) => {
                tracing::warn!(path = %from.display(), "could not set the broken checkpoint aside: {e}")
            }
        }
    }

    /// The checkpoint of `round`, which must be complete.
    pub fn load_round(&self, round: u64) -> Result<Checkpoint> {
        let round_dir = self.dir.join(round_dir_name(round));
        let state_path = round_dir.join(STATE);
        let bytes = fs::read(&state_path).map_err(io("read", &state_path))?;
        let bad = |message: String| FlError::Checkpoint {
            path: state_path.clone(),
            message,
        };
        let state: StateFile = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if state.format != FORMAT {
            return Err(bad(format!("unsupported format {}", state.format)));
        }
        if state.round != round {
            return Err(bad(format!(
                "holds round {}, expected {round}",
                state.round
            )));
        }
        let (global, _) = Params::load_safetensors(round_dir.join(MODEL))?;
        let mut buffers = BTreeMap::new();
        for name in &state.strategy_buffers {
            check_buffer_name(name, &state_path)?;
            let path = round_dir.join(buffer_file(name));
            let (buffer, _) = Params::load_safetensors(&path)?;
            global
                .spec()
                .check_same(buffer.spec())
                .map_err(|e| FlError::Checkpoint {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            // Share the model's layout instead of a second copy of it.
            let buffer = Params::new(global.spec().clone(), buffer.into_data())?;
            buffers.insert(name.clone(), buffer);
        }
        Ok(Checkpoint {
            round,
            global: Arc::new(global),
            strategy: StrategyState {
                strategy: state.strategy,
                json: state.strategy_json,
                buffers,
            },
            history: state.history,
            seed: state.seed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::testutil::params;

    fn checkpoint(round: u64, with_buffers: bool) -> Checkpoint {
        let v = round as f32;
        let mut strategy =
            StrategyState::stateless(if with_buffers { "fedadam" } else { "fedavg" });
        if with_buffers {
            strategy.buffers.insert("m".into(), params(&[v, -v, 0.5]));
            strategy.buffers.insert("v".into(), params(&[1.0, 2.0, v]));
            strategy.json = serde_json::json!({"steps": round});
        }
        Checkpoint {
            round,
            global: Arc::new(params(&[v, v * 2.0, -v])),
            strategy,
            history: (1..=round).map(RoundMetrics::new).collect(),
            seed: 42,
        }
    }

    fn assert_same(a: &Checkpoint, b: &Checkpoint) {
        assert_eq!(a.round, b.round);
        assert_eq!(a.global, b.global);
        assert_eq!(a.strategy, b.strategy);
        assert_eq!(a.history, b.history);
        assert_eq!(a.seed, b.seed);
    }

    #[test]
    fn save_load_round_trip_and_prune() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(tmp.path().join("ckpt")).with_keep(2);
        assert!(store.load_latest().unwrap().is_none());
        for round in 1..=4 {
            store.save(&checkpoint(round, true)).unwrap();
            assert_same(
                &store.load_latest().unwrap().unwrap(),
                &checkpoint(round, true),
            );
        }
        let mut names: Vec<String> = fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["latest.json", "round-000003", "round-000004"]);
        // Buffers share the model's layout after loading.
        let c = store.load_latest().unwrap().unwrap();
        assert!(Arc::ptr_eq(c.global.spec(), c.strategy.buffers["m"].spec()));
    }

    /// A crash between any two steps of a save leaves a loadable checkpoint:
    /// the previous round before the pointer switch, the new one after it.
    #[test]
    fn crash_at_every_step_loses_no_completed_round() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        let store = CheckpointStore::new(&base).with_keep(1);
        store.save(&checkpoint(1, true)).unwrap();
        // Steps: create dir, model, 2 buffers, state, pointer, prune.
        let commit = 6;
        for stop in 0..=7 {
            let dir = tmp.path().join(format!("crash-{stop}"));
            copy_dir(&base, &dir);
            let s = CheckpointStore::new(&dir).with_keep(1);
            // A torn temp file from an even earlier crash must not matter.
            fs::write(dir.join(".latest.json.tmp-1-1"), b"{\"form").unwrap();
            let done = s.save_steps(&checkpoint(2, true), stop).unwrap();
            assert_eq!(done.is_some(), stop >= 7, "stop {stop}");
            let loaded = s.load_latest().unwrap().unwrap();
            let want = if stop >= commit { 2 } else { 1 };
            assert_same(&loaded, &checkpoint(want, true));
            // Saving again after the crash completes normally.
            s.save(&checkpoint(2, true)).unwrap();
            assert_same(&s.load_latest().unwrap().unwrap(), &checkpoint(2, true));
            assert!(!dir.join(".latest.json.tmp-1-1").exists());
        }
    }

    #[test]
    fn corrupt_files_are_errors_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(tmp.path());
        store.save(&checkpoint(1, false)).unwrap();
        let state = tmp.path().join("round-000001").join(STATE);
        fs::write(&state, b"{not json").unwrap();
        let err = store.load_latest().unwrap_err().to_string();
        assert!(err.contains("state.json"), "{err}");

        fs::write(
            tmp.path().join(LATEST),
            br#"{"format":1,"round":1,"dir":"../etc"}"#,
        )
        .unwrap();
        assert!(store.load_latest().is_err());

        // A state file naming a buffer outside the round folder is refused.
        let store2 = CheckpointStore::new(tmp.path().join("other"));
        store2.save(&checkpoint(1, true)).unwrap();
        let state2 = tmp.path().join("other/round-000001").join(STATE);
        let text = fs::read_to_string(&state2)
            .unwrap()
            .replace("\"m\"", "\"../m\"");
        fs::write(&state2, text).unwrap();
        let err = store2.load_latest().unwrap_err().to_string();
        assert!(err.contains("../m"), "{err}");

        let mut bad = checkpoint(1, true);
        let m = bad.strategy.buffers.remove("m").unwrap();
        bad.strategy.buffers.insert("../m".into(), m);
        assert!(store.save(&bad).is_err());
    }

    /// Issue 11, defect 11: a truncated latest checkpoint falls back to the
    /// previous intact one; the broken folder is kept aside.
    #[test]
    fn defect_11_resume_falls_back_to_the_previous_intact_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(tmp.path()).with_keep(3);
        for r in 1..=3 {
            store.save(&checkpoint(r, true)).unwrap();
        }
        let model = tmp.path().join("round-000003").join(MODEL);
        let len = fs::metadata(&model).unwrap().len();
        let f = fs::OpenOptions::new().write(true).open(&model).unwrap();
        f.set_len(len / 2).unwrap();
        drop(f);
        let c = store.load_latest().unwrap().unwrap();
        assert_same(&c, &checkpoint(2, true));
        assert!(tmp.path().join("round-000003.broken").join(MODEL).exists());
        assert!(!tmp.path().join("round-000003").exists());
        // The next save of round 3 is clean and becomes the latest again.
        store.save(&checkpoint(3, true)).unwrap();
        assert_same(&store.load_latest().unwrap().unwrap(), &checkpoint(3, true));

        // A broken pointer falls back to the newest round folder that loads.
        fs::write(tmp.path().join(LATEST), b"{\"form").unwrap();
        assert_same(&store.load_latest().unwrap().unwrap(), &checkpoint(3, true));

        // When nothing loads, the newest error is returned.
        let lone = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(lone.path());
        store.save(&checkpoint(1, false)).unwrap();
        fs::write(lone.path().join("round-000001").join(STATE), b"{").unwrap();
        let err = store.load_latest().unwrap_err().to_string();
        assert!(err.contains("state.json"), "{err}");
    }

    fn copy_dir(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    /// Issue 11, defect 7: a resumed run rewrote metrics by one float step,
    /// because JSON read floats back to the nearest of two neighbours. Every
    /// f64 a checkpoint or a metrics file holds must come back bit for bit.
    #[test]
    fn resume_rewrites_metrics_by_one_float_step() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = f64::from_bits(state);
            if !x.is_finite() {
                continue;
            }
            let text = serde_json::to_string(&x).unwrap();
            let back: f64 = serde_json::from_str(&text).unwrap();
            assert_eq!(back.to_bits(), x.to_bits(), "{x:e} came back as {back:e}");
        }
    }
}
