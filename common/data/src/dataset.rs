//! Featurized, model-ready datasets: the contract between the data pipeline
//! (which builds them) and the models and trainers (which consume them).

use serde::{Deserialize, Serialize};

/// The prediction task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Crime risk level 1-5 per (area, date, 4-hour block): 5-class classification.
    Risk,
    /// Next period's incident count per crime category per area: regression.
    Counts,
}

impl Task {
    /// The name used on the command line and in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Risk => "risk",
            Task::Counts => "counts",
        }
    }
}

impl std::str::FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "risk" => Ok(Task::Risk),
            "counts" => Ok(Task::Counts),
            other => Err(format!("unknown task {other:?} (expected risk or counts)")),
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the model predicts for each sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Target {
    /// Class indices `0..num_classes` (risk level minus one).
    Classes {
        /// One label per sample.
        labels: Vec<i64>,
        /// Number of classes (5 for risk).
        num_classes: usize,
    },
    /// Non-negative counts, `dim` per sample, row-major `[n, dim]`.
    Counts {
        /// The values.
        values: Vec<f32>,
        /// Values per sample (number of crime categories).
        dim: usize,
    },
}

impl Target {
    /// Number of samples.
    pub fn len(&self) -> usize {
        match self {
            Target::Classes { labels, .. } => labels.len(),
            Target::Counts { values, dim } => values.len() / (*dim).max(1),
        }
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Output width of a model for this target: classes or count dimensions.
    pub fn output_dim(&self) -> usize {
        match self {
            Target::Classes { num_classes, .. } => *num_classes,
            Target::Counts { dim, .. } => *dim,
        }
    }
}

/// A sequence view of the samples for recurrent models, row-major
/// `[n, steps, step_dim]` (the paper's previous-4-periods encoding).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sequences {
    /// The values, scaled like the flat features.
    pub data: Vec<f32>,
    /// Time steps per sample (4 by default).
    pub steps: usize,
    /// Values per step.
    pub step_dim: usize,
}

/// Model-ready samples of one split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    /// The task the samples are for.
    pub task: Task,
    /// Flat, min-max scaled features, row-major `[n, feature_dim]`.
    pub features: Vec<f32>,
    /// Features per sample.
    pub feature_dim: usize,
    /// One name per feature column.
    pub feature_names: Vec<String>,
    /// The sequence view for recurrent models, when the task provides one.
    pub sequences: Option<Sequences>,
    /// What to predict.
    pub target: Target,
    /// The LAPD area (1..=21) of each sample, for partitioning and fairness.
    pub area: Vec<u8>,
    /// The time index of each sample (4-hour block or period since the data's
    /// start), for temporal splits and baselines.
    pub time: Vec<u32>,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.area.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.area.is_empty()
    }

    /// The samples at `indices`, in that order (a partition or a batch).
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        fn rows<T: Copy>(src: &[T], width: usize, idx: &[usize]) -> Vec<T> {
            let mut out = Vec::with_capacity(idx.len() * width);
            for &i in idx {
                out.extend_from_slice(&src[i * width..(i + 1) * width]);
            }
            out
        }
        let target = match &self.target {
            Target::Classes {
                labels,
                num_classes,
            } => Target::Classes {
                labels: rows(labels, 1, indices),
                num_classes: *num_classes,
            },
            Target::Counts { values, dim } => Target::Counts {
                values: rows(values, *dim, indices),
                dim: *dim,
            },
        };
        Dataset {
            task: self.task,
            features: rows(&self.features, self.feature_dim, indices),
            feature_dim: self.feature_dim,
            feature_names: self.feature_names.clone(),
            sequences: self.sequences.as_ref().map(|s| Sequences {
                data: rows(&s.data, s.steps * s.step_dim, indices),
                steps: s.steps,
                step_dim: s.step_dim,
            }),
            target,
            area: rows(&self.area, 1, indices),
            time: rows(&self.time, 1, indices),
        }
    }
}

/// The temporal train / validation / test split of one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Splits {
    /// The earliest samples; scalers and thresholds are fit on these only.
    pub train: Dataset,
    /// The samples after the training window.
    pub val: Dataset,
    /// The latest samples.
    pub test: Dataset,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_keeps_rows_together() {
        let d = Dataset {
            task: Task::Counts,
            features: vec![0., 1., 10., 11., 20., 21.],
            feature_dim: 2,
            feature_names: vec!["a".into(), "b".into()],
            sequences: Some(Sequences {
                data: (0..6).map(|v| v as f32).collect(),
                steps: 2,
                step_dim: 1,
            }),
            target: Target::Counts {
                values: vec![1., 2., 3.],
                dim: 1,
            },
            area: vec![1, 2, 3],
            time: vec![0, 1, 2],
        };
        let s = d.subset(&[2, 0]);
        assert_eq!(s.features, vec![20., 21., 0., 1.]);
        assert_eq!(s.sequences.unwrap().data, vec![4., 5., 0., 1.]);
        assert_eq!(
            s.target,
            Target::Counts {
                values: vec![3., 1.],
                dim: 1
            }
        );
        assert_eq!((s.area, s.time), (vec![3, 1], vec![2, 0]));
    }
}
