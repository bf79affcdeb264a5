//! From [`Dataset`] rows to [`Batch`] tensors.
//!
//! Two ways, for two situations:
//! - [`to_batch`] gathers the chosen rows on the host into one buffer per
//!   tensor and hands each buffer to libtorch in a single copy. This is what
//!   a background loader thread calls while the model trains.
//! - [`DatasetTensors`] uploads a whole split once; a batch is then one
//!   `index_select` per tensor on the device (no host work, no transfer),
//!   which is what a GPU wants and what evaluation over a split uses.

use tch::{Device, Kind, Tensor};

use super::error::{ModelError, Result};
use super::Batch;
use fedcrime_data::{Dataset, Target};

/// Appends rows `indices` of the row-major `src` (`width` values per row).
fn gather<T: Copy>(src: &[T], width: usize, indices: &[usize], out: &mut Vec<T>) {
    out.reserve(indices.len() * width);
    for &i in indices {
        out.extend_from_slice(&src[i * width..(i + 1) * width]);
    }
}

fn to_tensor<T: tch::kind::Element>(values: &[T], shape: &[i64], device: Device) -> Tensor {
    let t = Tensor::from_slice(values).view(shape);
    if device == Device::Cpu {
        t
    } else {
        t.to_device(device)
    }
}

/// The samples `indices` of `ds` (in that order) as tensors on `device`:
/// features `[b, feature_dim]` f32, sequences `[b, steps, step_dim]` f32 when
/// the dataset has them, targets `[b]` i64 (classes) or `[b, dim]` f32
/// (counts).
///
/// # Panics
/// When an index is `>= ds.len()` (indices come from the caller's sampler,
/// not from data).
pub fn to_batch(ds: &Dataset, indices: &[usize], device: Device) -> Batch {
    let b = indices.len() as i64;
    let mut buf = Vec::new();
    gather(&ds.features, ds.feature_dim, indices, &mut buf);
    let features = to_tensor(&buf, &[b, ds.feature_dim as i64], device);
    let sequences = ds.sequences.as_ref().map(|s| {
        buf.clear();
        let width = s.steps * s.step_dim;
        gather(&s.data, width, indices, &mut buf);
        to_tensor(&buf, &[b, s.steps as i64, s.step_dim as i64], device)
    });
    let target = match &ds.target {
        Target::Classes { labels, .. } => {
            let mut l = Vec::new();
            gather(labels, 1, indices, &mut l);
            to_tensor(&l, &[b], device)
        }
        Target::Counts { values, dim } => {
            buf.clear();
            gather(values, *dim, indices, &mut buf);
            to_tensor(&buf, &[b, *dim as i64], device)
        }
    };
    Batch {
        features,
        sequences,
        target,
    }
}

impl Batch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.target.size().first().copied().unwrap_or(0).max(0) as usize
    }

    /// Whether the batch has no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same batch on `device` (no copy when it is already there).
    pub fn to_device(&self, device: Device) -> Batch {
        Batch {
            features: self.features.to_device(device),
            sequences: self.sequences.as_ref().map(|s| s.to_device(device)),
            target: self.target.to_device(device),
        }
    }

    /// Rows `start..start + len` (views, no copy): how a data-parallel
    /// trainer splits a batch across replicas.
    pub fn narrow(&self, start: usize, len: usize) -> Batch {
        let (s, l) = (start as i64, len as i64);
        Batch {
            features: self.features.narrow(0, s, l),
            sequences: self.sequences.as_ref().map(|t| t.narrow(0, s, l)),
            target: self.target.narrow(0, s, l),
        }
    }
}

/// A whole dataset split resident on one device, for batches by
/// `index_select` (see the module docs).
#[derive(Debug)]
pub struct DatasetTensors {
    features: Tensor,
    sequences: Option<Tensor>,
    target: Tensor,
    len: usize,
}

impl DatasetTensors {
    /// Uploads `ds` to `device` (one copy per tensor). Fails when the
    /// dataset's buffers disagree with its declared widths.
    pub fn new(ds: &Dataset, device: Device) -> Result<Self> {
        let n = ds.len();
        let bad = |what: &str, got: usize, want: usize| {
            ModelError::Dataset(format!("{what} has {got} values, expected {want}"))
        };
        if ds.features.len() != n * ds.feature_dim {
            return Err(bad("features", ds.features.len(), n * ds.feature_dim));
        }
        if let Some(s) = &ds.sequences {
            if s.data.len() != n * s.steps * s.step_dim {
                return Err(bad("sequences", s.data.len(), n * s.steps * s.step_dim));
            }
        }
        match &ds.target {
            Target::Classes { labels, .. } if labels.len() != n => {
                return Err(bad("target", labels.len(), n));
            }
            Target::Counts { values, dim } if values.len() != n * dim => {
                return Err(bad("target", values.len(), n * dim));
            }
            _ => {}
        }
        let all: Vec<usize> = (0..n).collect();
        let batch = to_batch(ds, &all, device);
        Ok(DatasetTensors {
            features: batch.features,
            sequences: batch.sequences,
            target: batch.target,
            len: n,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The samples at `indices` (an i64 tensor, on any device).
    pub fn batch(&self, indices: &Tensor) -> Batch {
        let idx = indices
            .to_device(self.features.device())
            .to_kind(Kind::Int64);
        Batch {
            features: self.features.index_select(0, &idx),
            sequences: self.sequences.as_ref().map(|s| s.index_select(0, &idx)),
            target: self.target.index_select(0, &idx),
        }
    }

    /// The samples at `indices`; fails on an index past the end.
    pub(crate) fn batch_of(&self, indices: &[usize]) -> Result<Batch> {
        if let Some(&i) = indices.iter().find(|&&i| i >= self.len) {
            return Err(ModelError::Dataset(format!(
                "index {i} past the end of a {}-sample dataset",
                self.len
            )));
        }
        let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        Ok(self.batch(&Tensor::from_slice(&idx)))
    }

    /// The whole dataset as one batch (views, no copy).
    pub fn all(&self) -> Batch {
        Batch {
            features: self.features.shallow_clone(),
            sequences: self.sequences.as_ref().map(Tensor::shallow_clone),
            target: self.target.shallow_clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::one_thread;
    use crate::model::test_util::{counts_dataset, risk_dataset};

    #[test]
    fn rows_land_in_order_with_their_targets() {
        one_thread();
        let ds = counts_dataset(10, 3, 2, 2);
        let b = to_batch(&ds, &[7, 2], Device::Cpu);
        assert_eq!(b.len(), 2);
        assert_eq!(b.features.size(), [2, 3]);
        let f = Vec::<f32>::try_from(b.features.reshape([-1])).unwrap();
        assert_eq!(f[..3], ds.features[21..24]);
        assert_eq!(f[3..], ds.features[6..9]);
        let seq = b.sequences.as_ref().unwrap();
        assert_eq!(seq.size(), [2, 2, 2]);
        let s = Vec::<f32>::try_from(seq.reshape([-1])).unwrap();
        assert_eq!(s[..4], ds.sequences.as_ref().unwrap().data[28..32]);
        let Target::Counts { values, .. } = &ds.target else {
            unreachable!()
        };
        let t = Vec::<f32>::try_from(b.target.reshape([-1])).unwrap();
        assert_eq!(t, [values[14], values[15], values[4], values[5]]);
    }

    #[test]
    fn class_targets_are_i64() {
        one_thread();
        let ds = risk_dataset(5, 2);
        let b = to_batch(&ds, &[4, 0], Device::Cpu);
        assert_eq!(b.target.kind(), Kind::Int64);
        let Target::Classes { labels, .. } = &ds.target else {
            unreachable!()
        };
        assert_eq!(
            Vec::<i64>::try_from(&b.target).unwrap(),
            [labels[4], labels[0]]
        );
        assert!(b.sequences.is_none());
    }

    #[test]
    fn device_tensors_match_host_batches() {
        one_thread();
        let ds = counts_dataset(12, 3, 2, 2);
        let dt = DatasetTensors::new(&ds, Device::Cpu).unwrap();
        assert_eq!(dt.len(), 12);
        let a = dt.batch_of(&[3, 11, 0]).unwrap();
        let b = to_batch(&ds, &[3, 11, 0], Device::Cpu);
        assert!(a.features.equal(&b.features));
        assert!(a.sequences.unwrap().equal(b.sequences.as_ref().unwrap()));
        assert!(a.target.equal(&b.target));
        assert!(dt.batch_of(&[12]).unwrap_err().to_string().contains("12"));
        let half = b.narrow(1, 2);
        assert_eq!(half.len(), 2);
        assert!(half.target.equal(&b.target.narrow(0, 1, 2)));
    }

    #[test]
    fn inconsistent_dataset_is_an_error() {
        one_thread();
        let mut ds = risk_dataset(5, 2);
        ds.features.pop();
        let err = DatasetTensors::new(&ds, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("features"), "{err}");
    }
}
