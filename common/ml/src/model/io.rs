//! Models as `.safetensors` files that describe themselves.
//!
//! [`save_safetensors`] writes every variable of a store (f32, names as in
//! the store, e.g. `lstm.weight_ih_l0`) plus string metadata in the header's
//! `__metadata__`; [`save_model`] adds the model's config JSON under
//! [`META_MODEL_CONFIG`] (and `format: pt`, the convention of PyTorch
//! checkpoints), so [`load_model`] rebuilds the right architecture from the
//! file alone and Python's `safetensors.torch.load_file` reads the tensors.
//! Writes go to a temporary file that is renamed into place, so a reader
//! never sees half a model.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, View};
use tch::{nn::VarStore, Device, Kind, Tensor};

use super::config::ModelConfig;
use super::error::{ModelError, Result};
use super::{build, CrimeModel};

// safetensors stores little-endian values; tensors are copied byte for byte.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "model files assume a little-endian host"
);

/// Metadata key of the model config JSON.
pub const META_MODEL_CONFIG: &str = "fedcrime.model_config";

/// Metadata key of the file format tag (`pt`, as PyTorch checkpoints).
pub const META_FORMAT: &str = "format";

/// One variable as the safetensors writer sees it: its bytes are copied out
/// of the tensor (device to host if need be) once, when written.
struct TensorBytes {
    tensor: Tensor,
    shape: Vec<usize>,
}

impl View for TensorBytes {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let numel = self.tensor.numel();
        let mut bytes = vec![0u8; numel * 4];
        // An f32 tensor with `numel` values into a buffer of that size.
        self.tensor.copy_data_u8(&mut bytes, numel);
        bytes.into()
    }

    fn data_len(&self) -> usize {
        self.tensor.numel() * 4
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn st_err(path: &Path) -> impl FnOnce(safetensors::SafeTensorError) -> ModelError + '_ {
    move |e| ModelError::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Writes every variable of `vs` (as f32) and `metadata` (into the header's
/// `__metadata__`) to `path`, atomically.
pub fn save_safetensors(
    vs: &VarStore,
    path: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let views: Vec<(String, TensorBytes)> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| {
            let shape = t.size().iter().map(|&d| d as usize).collect();
            let tensor = t.detach().to_kind(Kind::Float).contiguous();
            (name, TensorBytes { tensor, shape })
        })
        .collect();
    let meta: Option<HashMap<String, String>> = if metadata.is_empty() {
        None
    } else {
        Some(
            metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    };
    let bytes = safetensors::tensor::serialize(views, &meta).map_err(st_err(path))?;
    // The same model and metadata always give the same bytes.
    let bytes = fedcrime_params::io::canonical_safetensors(&bytes).map_err(|reason| {
        ModelError::Safetensors {
            path: path.to_path_buf(),
            reason,
        }
    })?;
    Ok(fedcrime_files::write_atomic(path, &bytes)?)
}

/// The `__metadata__` of a `.safetensors` file (empty when it has none).
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    metadata_of(path, &bytes)
}

fn metadata_of(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, String>> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(st_err(path))?;
    Ok(meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default())
}

/// Overwrites every variable of `vs` with the tensor of the same name in the
/// file and returns the file's metadata. The file must hold exactly the
/// store's tensors, as f32 with the same shapes; otherwise the error names
/// the tensor and nothing is written.
pub fn load_safetensors(vs: &mut VarStore, path: &Path) -> Result<BTreeMap<String, String>> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let metadata = metadata_of(path, &bytes)?;
    let file = SafeTensors::deserialize(&bytes).map_err(st_err(path))?;
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    // Check everything before writing anything.
    let mut views = Vec::with_capacity(vars.len());
    for (name, var) in &vars {
        let view = file
            .tensor(name)
            .map_err(|_| ModelError::MissingParam { name: name.clone() })?;
        if view.dtype() != Dtype::F32 {
            return Err(ModelError::Dtype {
                name: name.clone(),
                dtype: format!("{:?}", view.dtype()),
            });
        }
        let expected: Vec<usize> = var.size().iter().map(|&d| d as usize).collect();
        if view.shape() != expected.as_slice() {
            return Err(ModelError::Shape {
                name: name.clone(),
                expected,
                got: view.shape().to_vec(),
            });
        }
        views.push(view);
    }
    if let Some(extra) = file.names().into_iter().find(|n| {
        vars.binary_search_by(|(v, _)| v.as_str().cmp(n.as_str()))
            .is_err()
    }) {
        return Err(ModelError::UnexpectedParam {
            name: extra.clone(),
        });
    }
    let device = vs.device();
    tch::no_grad(|| -> Result<()> {
        for ((_, var), view) in vars.iter().zip(&views) {
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let src = Tensor::f_from_data_size(view.data(), &shape, Kind::Float)?;
            let src = if device == Device::Cpu {
                src
            } else {
                src.f_to_device(device)?
            };
            var.shallow_clone().f_copy_(&src)?;
        }
        Ok(())
    })?;
    Ok(metadata)
}

/// Saves a model with its config (under [`META_MODEL_CONFIG`]), the format
/// tag and the caller's `extra` metadata (e.g. the featurizer JSON).
pub fn save_model(
    model: &dyn CrimeModel,
    path: &Path,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    let mut meta = extra.clone();
    meta.insert(META_MODEL_CONFIG.into(), model.config().to_json());
    meta.entry(META_FORMAT.into())
        .or_insert_with(|| "pt".into());
    save_safetensors(model.var_store(), path, &meta)
}

/// Rebuilds the model saved at `path` (architecture from its metadata,
/// parameters from its tensors) on `device`; returns it with the file's
/// metadata.
pub fn load_model(
    path: &Path,
    device: Device,
) -> Result<(Box<dyn CrimeModel>, BTreeMap<String, String>)> {
    let meta = read_metadata(path)?;
    let json = meta
        .get(META_MODEL_CONFIG)
        .ok_or_else(|| ModelError::Metadata {
            path: path.to_path_buf(),
            key: META_MODEL_CONFIG.into(),
            reason: "missing: not a fedcrime model file".into(),
        })?;
    let cfg = ModelConfig::from_json(json).map_err(|e| ModelError::Metadata {
        path: path.to_path_buf(),
        key: META_MODEL_CONFIG.into(),
        reason: e.to_string(),
    })?;
    let mut model = build(&cfg, device)?;
    let meta = load_safetensors(model.var_store_mut(), path)?;
    Ok((model, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::counts_dataset;
    use crate::model::test_util::one_thread;
    use crate::model::{to_batch, ModelKind};

    fn small(kind: ModelKind) -> Box<dyn CrimeModel> {
        let ds = counts_dataset(8, 3, 4, 2);
        let mut cfg = ModelConfig::for_dataset(kind, &ds);
        cfg.hidden = 6;
        build(&cfg, Device::Cpu).unwrap()
    }

    #[test]
    fn save_then_load_model_round_trips() {
        one_thread();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        tch::manual_seed(1);
        let model = small(ModelKind::Lstm);
        let extra = BTreeMap::from([("featurizer".to_string(), "{\"x\":1}".to_string())]);
        save_model(model.as_ref(), &path, &extra).unwrap();
        let (back, meta) = load_model(&path, Device::Cpu).unwrap();
        assert_eq!(back.config(), model.config());
        assert_eq!(back.export_params(), model.export_params());
        assert_eq!(meta["featurizer"], "{\"x\":1}");
        assert_eq!(meta[META_FORMAT], "pt");
        let ds = counts_dataset(8, 3, 4, 2);
        let batch = to_batch(&ds, &[0, 1, 2], Device::Cpu);
        assert!(back
            .forward_t(&batch, false)
            .equal(&model.forward_t(&batch, false)));
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn wrong_files_are_refused_with_the_tensor_named() {
        one_thread();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dnn.safetensors");
        let dnn = small(ModelKind::Dnn);
        save_model(dnn.as_ref(), &path, &BTreeMap::new()).unwrap();
        let mut lstm = small(ModelKind::Lstm);
        let before = lstm.export_params();
        let err = load_safetensors(lstm.var_store_mut(), &path).unwrap_err();
        // Sorted names: head.bias fits, head.weight is [2, 6] in the dnn and
        // [2, 6 + 3] in the lstm (hidden state next to the flat features).
        assert!(
            matches!(&err, ModelError::Shape { name, .. } if name == "head.weight"),
            "{err}"
        );
        assert_eq!(lstm.export_params(), before);

        let plain = dir.path().join("plain.safetensors");
        save_safetensors(dnn.var_store(), &plain, &BTreeMap::new()).unwrap();
        let err = load_model(&plain, Device::Cpu).unwrap_err().to_string();
        assert!(err.contains(META_MODEL_CONFIG), "{err}");

        let junk = dir.path().join("junk.safetensors");
        std::fs::write(&junk, b"not a model").unwrap();
        let err = load_model(&junk, Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("junk.safetensors"), "{err}");
    }

    /// Python (torch + safetensors from the venv) reads the file: names,
    /// shapes, values and metadata match; and PyTorch's `nn.LSTM` loaded
    /// with the saved `lstm.*` tensors computes the same final hidden state.
    #[test]
    fn python_reads_saved_models() {
        one_thread();
        let Some(python) = std::env::var_os("VIRTUAL_ENV")
            .map(|v| std::path::PathBuf::from(v).join("bin/python"))
            .filter(|p| p.exists())
        else {
            eprintln!("skipped: no $VIRTUAL_ENV/bin/python");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lstm.safetensors");
        tch::manual_seed(2);
        let ds = counts_dataset(4, 3, 4, 2);
        let mut cfg = ModelConfig::for_dataset(ModelKind::Lstm, &ds);
        cfg.hidden = 5;
        cfg.layers = 2;
        let model = build(&cfg, Device::Cpu).unwrap();
        let extra = BTreeMap::from([("note".to_string(), "hello".to_string())]);
        save_model(model.as_ref(), &path, &extra).unwrap();
        let seq_path = dir.path().join("seq.safetensors");
        let batch = to_batch(&ds, &[0, 1, 2, 3], Device::Cpu);
        let seq = batch.sequences.as_ref().unwrap();
        Tensor::write_safetensors(&[("seq", seq)], &seq_path).unwrap();
        let script = r#"
import json, sys, torch
from safetensors import safe_open
from safetensors.torch import load_file
path, seq_path = sys.argv[1], sys.argv[2]
t = load_file(path)
with safe_open(path, "pt") as f:
    meta = f.metadata()
cfg = json.loads(meta["fedcrime.model_config"])
lstm = torch.nn.LSTM(cfg["seq_dim"], cfg["hidden"], cfg["layers"], batch_first=True)
lstm.load_state_dict({k[5:]: v for k, v in t.items() if k.startswith("lstm.")})
seq = load_file(seq_path)["seq"]
with torch.no_grad():
    _, (h, _) = lstm(seq)
print(json.dumps({
    "meta": meta,
    "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype), "values": v.flatten().tolist()} for k, v in t.items()},
    "h_last": h[-1].flatten().tolist(),
}))
"#;
        let out = std::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .arg(&path)
            .arg(&seq_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got["meta"]["note"], "hello");
        assert_eq!(got["meta"][META_FORMAT], "pt");
        let params = model.export_params();
        let tensors = got["tensors"].as_object().unwrap();
        assert_eq!(tensors.len(), params.spec().len());
        for (entry, values) in params.iter() {
            let t = &tensors[&entry.name];
            assert_eq!(t["dtype"], "torch.float32", "{}", entry.name);
            let shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).unwrap();
            assert_eq!(shape, entry.shape, "{}", entry.name);
            let py: Vec<f32> = t["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(py, values, "{}", entry.name);
        }
        let h: Vec<f32> = got["h_last"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let ours = lstm_encode(model.as_ref(), &batch);
        for (a, b) in ours.iter().zip(&h) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert_eq!(ours.len(), h.len());
    }

    /// The final hidden state of a boxed lstm model (via a reload as the
    /// concrete type).
    fn lstm_encode(model: &dyn CrimeModel, batch: &crate::model::Batch) -> Vec<f32> {
        let mut concrete = super::super::Lstm::new(model.config(), Device::Cpu).unwrap();
        concrete.import_params(&model.export_params()).unwrap();
        let h = concrete.encode(batch, false);
        Vec::<f32>::try_from(h.reshape([-1])).unwrap()
    }
}
