//! # fedcrime-params
//!
//! Model parameters as the federated code sees them: an ordered list of named
//! tensors stored in one contiguous `f32` buffer.
//!
//! The layout ([`ParamSpec`]) is shared through an [`Arc`], so every station's
//! update points at the same names and shapes and holds only its own numbers.
//! One flat buffer keeps aggregation a tight, vectorizable loop and lets the
//! wire layer write each tensor as raw little-endian bytes without copying.
//!
//! [`io`] reads and writes them as safetensors files that Python reads.
//! This crate links neither libtorch nor any async runtime: the round engine,
//! the wire codec and the models all build on it.

pub mod io;

use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One named tensor's place in a [`ParamSpec`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamEntry {
    /// The VarStore path, e.g. `hidden.0.weight`.
    pub name: String,
    /// The tensor's shape.
    pub shape: Vec<usize>,
    /// Offset of the first element in the flat buffer.
    pub offset: usize,
}

impl ParamEntry {
    /// Number of elements (product of the shape; 1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The entry's range in the flat buffer.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.numel()
    }
}

/// The layout of a model's parameters: names, shapes and offsets, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamSpec {
    entries: Vec<ParamEntry>,
    total: usize,
}

/// A layout could not be built or two layouts disagree.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParamError {
    /// The same name occurs twice.
    #[error("duplicate parameter name {0:?}")]
    DuplicateName(String),
    /// A buffer's length does not match the layout.
    #[error("parameter buffer has {got} values, layout needs {expected}")]
    Length {
        /// Values the layout needs.
        expected: usize,
        /// Values supplied.
        got: usize,
    },
    /// Two layouts differ (names, order or shapes).
    #[error("parameter layout mismatch: {0}")]
    Mismatch(String),
}

impl ParamSpec {
    /// Builds a layout from `(name, shape)` pairs in order.
    pub fn new<I, S>(tensors: I) -> Result<Self, ParamError>
    where
        I: IntoIterator<Item = (S, Vec<usize>)>,
        S: Into<String>,
    {
        let mut entries: Vec<ParamEntry> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut offset = 0;
        for (name, shape) in tensors {
            let name = name.into();
            if !seen.insert(name.clone()) {
                return Err(ParamError::DuplicateName(name));
            }
            let entry = ParamEntry {
                name,
                shape,
                offset,
            };
            offset += entry.numel();
            entries.push(entry);
        }
        Ok(Self {
            entries,
            total: offset,
        })
    }

    /// The tensors in order.
    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }

    /// Total number of scalar parameters.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the layout has no tensors.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Looks a tensor up by name.
    pub fn get(&self, name: &str) -> Option<&ParamEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Checks that `other` has the same names, order and shapes, naming the first difference.
    pub fn check_same(&self, other: &ParamSpec) -> Result<(), ParamError> {
        if self.entries.len() != other.entries.len() {
            return Err(ParamError::Mismatch(format!(
                "{} tensors, expected {}",
                other.entries.len(),
                self.entries.len()
            )));
        }
        for (a, b) in self.entries.iter().zip(&other.entries) {
            if a.name != b.name {
                return Err(ParamError::Mismatch(format!(
                    "tensor {:?} where {:?} was expected",
                    b.name, a.name
                )));
            }
            if a.shape != b.shape {
                return Err(ParamError::Mismatch(format!(
                    "tensor {:?} has shape {:?}, expected {:?}",
                    a.name, b.shape, a.shape
                )));
            }
        }
        Ok(())
    }
}

/// A model's parameters: a shared layout and one flat `f32` buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    spec: Arc<ParamSpec>,
    data: Vec<f32>,
}

impl Params {
    /// Wraps a buffer, checking its length against the layout.
    pub fn new(spec: Arc<ParamSpec>, data: Vec<f32>) -> Result<Self, ParamError> {
        if data.len() != spec.total() {
            return Err(ParamError::Length {
                expected: spec.total(),
                got: data.len(),
            });
        }
        Ok(Self { spec, data })
    }

    /// All zeros in the given layout.
    pub fn zeros(spec: Arc<ParamSpec>) -> Self {
        let data = vec![0.0; spec.total()];
        Self { spec, data }
    }

    /// The layout.
    pub fn spec(&self) -> &Arc<ParamSpec> {
        &self.spec
    }

    /// The flat buffer.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The flat buffer, mutable.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Gives the buffer back.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// The values of one tensor.
    pub fn tensor(&self, entry: &ParamEntry) -> &[f32] {
        &self.data[entry.range()]
    }

    /// `(entry, values)` for each tensor in order.
    pub fn iter(&self) -> impl Iterator<Item = (&ParamEntry, &[f32])> {
        self.spec
            .entries()
            .iter()
            .map(move |e| (e, &self.data[e.range()]))
    }

    /// Euclidean norm of all values (f64 accumulation).
    pub fn l2_norm(&self) -> f64 {
        self.data
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt()
    }

    /// Euclidean norm of `self - other`; the layouts must match.
    pub fn l2_distance(&self, other: &Params) -> Result<f64, ParamError> {
        self.spec.check_same(&other.spec)?;
        Ok(self
            .data
            .iter()
            .zip(&other.data)
            .map(|(&a, &b)| {
                let d = f64::from(a) - f64::from(b);
                d * d
            })
            .sum::<f64>()
            .sqrt())
    }

    /// The first non-finite value, as `(tensor name, index within the tensor)`.
    pub fn first_non_finite(&self) -> Option<(&str, usize)> {
        let pos = self.data.iter().position(|v| !v.is_finite())?;
        let entry = self
            .spec
            .entries()
            .iter()
            .find(|e| e.range().contains(&pos))?;
        Some((&entry.name, pos - entry.offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Arc<ParamSpec> {
        Arc::new(ParamSpec::new([("a.weight", vec![2, 3]), ("a.bias", vec![3])]).unwrap())
    }

    #[test]
    fn layout_offsets_follow_order() {
        let s = spec();
        assert_eq!(s.total(), 9);
        assert_eq!(s.entries()[1].offset, 6);
        assert_eq!(s.get("a.bias").unwrap().range(), 6..9);
    }

    #[test]
    fn duplicate_names_and_wrong_lengths_are_errors() {
        assert_eq!(
            ParamSpec::new([("x", vec![1]), ("x", vec![2])]).unwrap_err(),
            ParamError::DuplicateName("x".into())
        );
        assert!(matches!(
            Params::new(spec(), vec![0.0; 8]),
            Err(ParamError::Length {
                expected: 9,
                got: 8
            })
        ));
    }

    #[test]
    fn mismatch_names_the_tensor() {
        let other = ParamSpec::new([("a.weight", vec![3, 2]), ("a.bias", vec![3])]).unwrap();
        let err = spec().check_same(&other).unwrap_err().to_string();
        assert!(err.contains("a.weight") && err.contains("[3, 2]"), "{err}");
    }

    #[test]
    fn non_finite_is_located() {
        let mut p = Params::zeros(spec());
        p.data_mut()[7] = f32::NAN;
        assert_eq!(p.first_non_finite(), Some(("a.bias", 1)));
        p.data_mut()[7] = 1.0;
        assert_eq!(p.first_non_finite(), None);
        assert!((p.l2_norm() - 1.0).abs() < 1e-12);
    }
}
