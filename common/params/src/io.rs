//! [`Params`] on disk: safetensors files with string metadata, and a
//! crash-safe writes (`fedcrime_files::write_atomic`).
//!
//! The files are plain safetensors (little-endian `F32` tensors, a JSON header
//! with `__metadata__`), so Python reads them with
//! `safetensors.numpy.load_file` or `safetensors.torch.load_file`. safetensors
//! stores tensors sorted by name; the layout's own order is kept in the
//! reserved metadata key `ORDER_KEY` and restored on load. Files written
//! elsewhere (PyTorch, another framework) load too: without that key the order
//! is the file's data order, and `F16`, `BF16` and `F64` tensors are converted
//! to `f32`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::{ParamError, ParamSpec, Params};

/// Metadata key holding the tensor order as a JSON list of names.
///
/// Reserved: a caller's value under this key is replaced on save and removed
/// from the metadata returned on load.
pub(crate) const ORDER_KEY: &str = "fedcrime.order";

/// Reading or writing parameters failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParamsIoError {
    /// An operating-system call on a file or directory failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`create`, `write`, `rename`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bytes are not a valid safetensors file.
    #[error("{source_name}: not a valid safetensors file: {message}")]
    Format {
        /// The file (or stream) the bytes came from.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor has an element type that cannot become `f32`.
    #[error(
        "{source_name}: tensor {tensor:?} has dtype {dtype}, expected F32 (or F16, BF16, F64)"
    )]
    Dtype {
        /// The file the tensor came from.
        source_name: String,
        /// The tensor's name.
        tensor: String,
        /// Its dtype as safetensors names it.
        dtype: String,
    },
    /// The tensors do not form a valid layout (for example a duplicate name).
    #[error("{source_name}: {source}")]
    Layout {
        /// The file the tensors came from.
        source_name: String,
        /// The layout error.
        source: ParamError,
    },
    /// Writing a file failed.
    #[error(transparent)]
    File(#[from] fedcrime_files::FilesError),
}

/// Shorthand for results of this module.
pub type Result<T, E = ParamsIoError> = std::result::Result<T, E>;

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ParamsIoError + 'a {
    move |source| ParamsIoError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The same safetensors file with its JSON header's keys in sorted order
/// (tensors, then `__metadata__`, each object's keys sorted too), padded with
/// spaces to 8 bytes: the same tensors and metadata then always give the
/// same bytes. The `safetensors` crate writes the metadata from a `HashMap`,
/// in a different order every time; data offsets are relative to the data
/// section, so the data is copied unchanged.
pub fn canonical_safetensors(bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("shorter than the 8-byte header length")?;
    let header_len =
        usize::try_from(u64::from_le_bytes(len_bytes)).map_err(|_| "header length out of range")?;
    let header = bytes
        .get(8..8 + header_len)
        .ok_or("header longer than the file")?;
    let parsed: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("header: {e}"))?;
    let sorted: BTreeMap<String, BTreeMap<String, serde_json::Value>> = parsed
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::Object(o) => Ok((k, o.into_iter().collect())),
            other => Err(format!("header entry {k:?} is {other}, not an object")),
        })
        .collect::<std::result::Result<_, String>>()?;
    let mut json = serde_json::to_vec(&sorted).map_err(|e| e.to_string())?;
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let data = &bytes[8 + header_len..];
    let mut out = Vec::with_capacity(8 + json.len() + data.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(data);
    Ok(out)
}

/// One tensor of a [`Params`] seen as safetensors bytes, without copying on
/// little-endian machines.
struct F32View<'a> {
    shape: &'a [usize],
    values: &'a [f32],
}

impl safetensors::tensor::View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        #[cfg(target_endian = "little")]
        {
            std::borrow::Cow::Borrowed(bytemuck::cast_slice(self.values))
        }
        #[cfg(not(target_endian = "little"))]
        {
            std::borrow::Cow::Owned(self.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
    }

    fn data_len(&self) -> usize {
        self.values.len() * 4
    }
}

impl Params {
    /// Serializes to safetensors bytes with `metadata` in the header.
    pub(crate) fn to_safetensors_bytes(
        &self,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Vec<u8>> {
        let mut info: HashMap<String, String> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let order: Vec<&str> = self
            .spec()
            .entries()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        let order = serde_json::to_string(&order).map_err(|e| ParamsIoError::Format {
            source_name: "<memory>".into(),
            message: e.to_string(),
        })?;
        info.insert(ORDER_KEY.to_string(), order);
        let views = self.iter().map(|(entry, values)| {
            (
                entry.name.as_str(),
                F32View {
                    shape: &entry.shape,
                    values,
                },
            )
        });
        let bytes = safetensors::tensor::serialize(views, &Some(info)).map_err(|e| {
            ParamsIoError::Format {
                source_name: "<memory>".into(),
                message: e.to_string(),
            }
        })?;
        canonical_safetensors(&bytes).map_err(|message| ParamsIoError::Format {
            source_name: "<memory>".into(),
            message,
        })
    }

    /// Parses safetensors bytes into parameters and the header's metadata
    /// (without [`ORDER_KEY`]). `source_name` names the origin in errors.
    pub(crate) fn from_safetensors_bytes(
        bytes: &[u8],
        source_name: &str,
    ) -> Result<(Params, BTreeMap<String, String>)> {
        let format = |message: String| ParamsIoError::Format {
            source_name: source_name.to_string(),
            message,
        };
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| format(format!("{e}")))?;
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| format(format!("{e}")))?;
        let mut metadata: BTreeMap<String, String> = header
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let stored_order = metadata.remove(ORDER_KEY);

        // Names in data order, the fallback when no (usable) order is stored.
        let infos = header.tensors();
        let mut by_offset: Vec<(&String, usize)> = infos
            .iter()
            .map(|(name, info)| (name, info.data_offsets.0))
            .collect();
        by_offset.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(b.0)));
        let mut names: Vec<String> = by_offset.into_iter().map(|(n, _)| n.clone()).collect();
        if let Some(order) = stored_order {
            let order: Vec<String> = serde_json::from_str(&order).map_err(|e| {
                format(format!(
                    "metadata {ORDER_KEY:?} is not a list of names: {e}"
                ))
            })?;
            let mut sorted_stored = order.clone();
            sorted_stored.sort();
            let mut sorted_names = names.clone();
            sorted_names.sort();
            if sorted_stored != sorted_names {
                return Err(format(format!(
                    "metadata {ORDER_KEY:?} lists {} tensors that differ from the {} in the file",
                    order.len(),
                    names.len()
                )));
            }
            names = order;
        }

        let mut views: Vec<TensorView<'_>> = Vec::with_capacity(names.len());
        for name in &names {
            let view = tensors.tensor(name).map_err(|e| format(format!("{e}")))?;
            match view.dtype() {
                Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64 => {}
                other => {
                    return Err(ParamsIoError::Dtype {
                        source_name: source_name.to_string(),
                        tensor: name.clone(),
                        dtype: format!("{other:?}"),
                    })
                }
            }
            views.push(view);
        }
        let spec = ParamSpec::new(
            names
                .iter()
                .zip(&views)
                .map(|(name, view)| (name.clone(), view.shape().to_vec())),
        )
        .map_err(|source| ParamsIoError::Layout {
            source_name: source_name.to_string(),
            source,
        })?;
        let mut data: Vec<f32> = Vec::with_capacity(spec.total());
        for view in &views {
            let raw = view.data();
            match view.dtype() {
                Dtype::F32 => data.extend(
                    raw.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ),
                Dtype::F16 => data.extend(
                    raw.chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
                ),
                Dtype::BF16 => data.extend(
                    raw.chunks_exact(2)
                        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
                ),
                // F64 (the only other dtype admitted above).
                _ => data.extend(raw.chunks_exact(8).map(|b| {
                    f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                })),
            }
        }
        let params = Params::new(Arc::new(spec), data).map_err(|source| ParamsIoError::Layout {
            source_name: source_name.to_string(),
            source,
        })?;
        Ok((params, metadata))
    }

    /// Writes a safetensors file atomically (`fedcrime_files::write_atomic`).
    pub fn save_safetensors(
        &self,
        path: impl AsRef<Path>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_safetensors_bytes(metadata).map_err(|e| match e {
            ParamsIoError::Format { message, .. } => ParamsIoError::Format {
                source_name: path.display().to_string(),
                message,
            },
            other => other,
        })?;
        Ok(fedcrime_files::write_atomic(path, &bytes)?)
    }

    /// Reads a safetensors file: the parameters and the header's metadata.
    pub fn load_safetensors(path: impl AsRef<Path>) -> Result<(Params, BTreeMap<String, String>)> {
        let path = path.as_ref();
        let bytes = fs::read(path).map_err(io_err("read", path))?;
        Params::from_safetensors_bytes(&bytes, &path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Params {
        // Deliberately not in name order: the order must survive a round trip.
        let spec = ParamSpec::new([
            ("z.weight", vec![2, 3]),
            ("a.bias", vec![3]),
            ("m.scalar", vec![]),
        ])
        .unwrap();
        let data = (0..10).map(|i| i as f32 * 0.5 - 1.25).collect();
        Params::new(Arc::new(spec), data).unwrap()
    }

    #[test]
    fn round_trip_keeps_order_shapes_values_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let p = sample();
        let meta = BTreeMap::from([
            ("round".to_string(), "3".to_string()),
            ("model".to_string(), "dnn".to_string()),
        ]);
        p.save_safetensors(&path, &meta).unwrap();
        let (q, meta2) = Params::load_safetensors(&path).unwrap();
        assert_eq!(q, p);
        assert_eq!(meta2, meta);
        let names: Vec<_> = q.spec().entries().iter().map(|e| e.name.clone()).collect();
        assert_eq!(names, ["z.weight", "a.bias", "m.scalar"]);
        // No temp file is left behind.
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn foreign_files_load_in_data_order_and_convert_dtypes() {
        // A file as another tool writes it: no order key, f64 and bf16 tensors.
        let a: Vec<u8> = [1.5f64, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let b: Vec<u8> = [0.25f32, 4.0, 8.0]
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        let views = vec![
            ("w", TensorView::new(Dtype::F64, vec![2], &a).unwrap()),
            ("b", TensorView::new(Dtype::BF16, vec![1, 3], &b).unwrap()),
        ];
        let bytes = safetensors::tensor::serialize(views, &None).unwrap();
        let (p, meta) = Params::from_safetensors_bytes(&bytes, "foreign").unwrap();
        assert!(meta.is_empty());
        // safetensors writes higher-alignment dtypes first: w (f64) then b.
        assert_eq!(p.spec().entries()[0].name, "w");
        assert_eq!(p.spec().entries()[1].shape, vec![1, 3]);
        assert_eq!(p.data(), &[1.5, -2.0, 0.25, 4.0, 8.0]);
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_source() {
        let err = Params::from_safetensors_bytes(b"\x05\0\0\0\0\0\0\0{oops", "x.st").unwrap_err();
        assert!(
            err.to_string().starts_with("x.st: not a valid safetensors"),
            "{err}"
        );

        let ints: Vec<u8> = [1i32, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
        let bytes = safetensors::tensor::serialize(
            [("idx", TensorView::new(Dtype::I32, vec![2], &ints).unwrap())],
            &None,
        )
        .unwrap();
        let err = Params::from_safetensors_bytes(&bytes, "y.st").unwrap_err();
        assert!(
            matches!(&err, ParamsIoError::Dtype { tensor, .. } if tensor == "idx"),
            "{err}"
        );

        let mut meta = HashMap::new();
        meta.insert(ORDER_KEY.to_string(), r#"["a","nope"]"#.to_string());
        let f: Vec<u8> = 1f32.to_le_bytes().to_vec();
        let bytes = safetensors::tensor::serialize(
            [("a", TensorView::new(Dtype::F32, vec![1], &f).unwrap())],
            &Some(meta),
        )
        .unwrap();
        assert!(Params::from_safetensors_bytes(&bytes, "z.st").is_err());

        let missing = Params::load_safetensors("/nonexistent/dir/m.safetensors").unwrap_err();
        assert!(missing
            .to_string()
            .contains("/nonexistent/dir/m.safetensors"));
    }

    /// The file is readable by Python's safetensors (skipped without the torch venv).
    #[test]
    fn python_reads_the_file() {
        let Some(venv) = std::env::var_os("VIRTUAL_ENV") else {
            eprintln!("skipped: VIRTUAL_ENV not set");
            return;
        };
        let python = Path::new(&venv).join("bin/python");
        if !python.exists() {
            eprintln!("skipped: no python in {}", python.display());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        sample()
            .save_safetensors(&path, &BTreeMap::from([("k".into(), "v".into())]))
            .unwrap();
        let script = r#"
import sys
try:
    from safetensors import safe_open
except ImportError:
    print('skip'); sys.exit(0)
with safe_open(sys.argv[1], 'numpy') as f:
    m = f.metadata(); w = f.get_tensor('z.weight'); s = f.get_tensor('m.scalar')
    print(m['k'], list(w.shape), float(w[1][2]), list(s.shape), float(s), str(w.dtype))
"#;
        let out = std::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .arg(&path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if stdout.trim() == "skip" {
            eprintln!("skipped: python has no safetensors");
            return;
        }
        assert_eq!(stdout.trim(), "v [2, 3] 1.25 [] 3.25 float32");
    }

    /// Issue 11, defect 8: model files were not byte-reproducible (the
    /// safetensors metadata went through a HashMap).
    #[test]
    fn model_files_are_not_byte_reproducible() {
        let spec = Arc::new(ParamSpec::new([("b", vec![2]), ("a", vec![3, 2])]).unwrap());
        let p = Params::new(spec, (0..8).map(|i| i as f32 * 0.5).collect()).unwrap();
        let meta: BTreeMap<String, String> = (0..8)
            .map(|i| (format!("key{i}"), format!("value {i}")))
            .collect();
        let first = p.to_safetensors_bytes(&meta).unwrap();
        for _ in 0..5 {
            assert_eq!(p.to_safetensors_bytes(&meta).unwrap(), first);
        }
        let (back, m) = Params::from_safetensors_bytes(&first, "mem").unwrap();
        assert_eq!((back, m), (p, meta));
        // Still a safetensors file to the reference reader.
        let st = SafeTensors::deserialize(&first).unwrap();
        assert_eq!(st.tensor("a").unwrap().shape(), &[3, 2]);
    }
}
