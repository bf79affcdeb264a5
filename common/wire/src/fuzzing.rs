//! Sample traffic and the decode entry point for fuzzing.
//!
//! Nothing here is behind `#[cfg(fuzzing)]`: the cargo-fuzz target in
//! `common/wire/fuzz`, the property tests and the seed corpus all use the same
//! small public surface, so the fuzzed code is exactly the shipped code.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::message::*;
use super::settings::RoundSettings;
use super::stream::{decode_all, decode_message, encode_message};
use super::tensor::{Encoding, ModelHeader};
use super::{Result, WireConfig};
use fedcrime_params::{ParamSpec, Params};

/// Limits for hostile input: whatever it announces, decoding it allocates
/// at most a few hundred KiB.
pub(crate) const FUZZ_CONFIG: WireConfig = WireConfig {
    max_frame_bytes: 1 << 16,
    chunk_bytes: 64,
    max_model_params: 1 << 16,
    max_tensors: 64,
};

/// Decodes `data` as a stream of messages, both learning model layouts from
/// the stream and against [`sample_spec`]. Returns how many messages decoded
/// (an error stops a pass). Never panics, whatever `data` is.
pub(crate) fn decode_untrusted(data: &[u8]) -> usize {
    let learned = decode_all(data, &FUZZ_CONFIG).map_or(0, |v| v.len());
    let spec = sample_spec();
    let expected = usize::from(decode_message(data, Some(&spec), &FUZZ_CONFIG).is_ok());
    learned + expected
}

/// The layout of [`sample_model`]: a matrix, a vector, a scalar, an empty
/// tensor and another matrix.
pub(crate) fn sample_spec() -> Arc<ParamSpec> {
    let spec = ParamSpec::new([
        ("lstm.weight_ih_l0", vec![8, 5]),
        ("lstm.bias", vec![8]),
        ("head.scale", vec![]),
        ("gat.empty", vec![0, 3]),
        ("head.weight", vec![3, 7]),
    ]);
    match spec {
        Ok(s) => Arc::new(s),
        Err(e) => unreachable!("constant layout with unique names: {e}"),
    }
}

/// [`sample_spec`] filled with N(0, std) values drawn from `seed`.
pub fn sample_model(seed: u64, std: f32) -> Params {
    let spec = sample_spec();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, std.abs()).unwrap_or_else(|_| unreachable!("finite std"));
    let data = (0..spec.total()).map(|_| normal.sample(&mut rng)).collect();
    Params::new(spec, data).unwrap_or_else(|_| unreachable!("length matches the layout"))
}

/// The seed corpus of the fuzz target: every message in every encoding, one
/// file each (`(file name, bytes)`).
pub(crate) fn seed_corpus() -> Result<Vec<(String, Vec<u8>)>> {
    let model = sample_model(1, 0.1);
    let mut out = Vec::new();
    for enc in Encoding::ALL {
        for (i, (msg, params)) in sample_messages(&model, enc)?.iter().enumerate() {
            if enc != Encoding::F32 && params.is_none() {
                continue; // identical in every encoding
            }
            let mut buf = Vec::new();
            encode_message(msg, params.as_ref(), &FUZZ_CONFIG, &mut buf)?;
            out.push((format!("seed-{i:02}-{}-{enc}", msg.name()), buf));
        }
    }
    Ok(out)
}

fn metrics() -> Metrics {
    BTreeMap::from([("loss".to_string(), 0.42), ("mae".to_string(), 1.5)])
}

/// One message of every kind (two EvaluateRequests: with and without a
/// model); those announcing a model come with `model`.
pub(crate) fn sample_messages(
    model: &Params,
    encoding: Encoding,
) -> Result<Vec<(Message, Option<Params>)>> {
    let header = ModelHeader::describe(model, encoding)?;
    let ext = Extensions::from([
        ("secagg".to_string(), Scalar::Bool(false)),
        ("threads".to_string(), Scalar::Int(4)),
        ("clip".to_string(), Scalar::Float(1.5)),
        ("note".to_string(), Scalar::Str("hi".into())),
        ("key".to_string(), Scalar::Bytes(vec![1, 2, 3])),
    ]);
    let m = Some(model.clone());
    Ok(vec![
        (
            Hello::new(
                "fedcrime-client 0.1.0",
                Capabilities {
                    encodings: Encoding::ALL.to_vec(),
                    device: "cuda:0".into(),
                    extensions: ext.clone(),
                },
            )
            .into(),
            None,
        ),
        (
            Welcome {
                protocol_version: PROTOCOL_VERSION,
                session_id: 0xdead_beef,
                run_id: "run-2024-02".into(),
                station: "station-07".into(),
                encoding,
                limits: ServerLimits {
                    max_frame_bytes: 1 << 20,
                    max_model_params: 1 << 24,
                    heartbeat_interval_ms: 5_000,
                    idle_timeout_ms: 30_000,
                },
                extensions: ext.clone(),
            }
            .into(),
            None,
        ),
        (
            Reject {
                code: RejectCode::NotAuthorized,
                text: "certificate revoked".into(),
            }
            .into(),
            None,
        ),
        (
            RoundStart {
                round: 3,
                settings: RoundSettings {
                    local_epochs: 2,
                    lr: 1e-3,
                    batch_size: 64,
                    weight_decay: 1e-4,
                    max_grad_norm: Some(1.0),
                    proximal_mu: 0.01,
                    seed: 42,
                    extensions: ext.clone(),
                },
                update_encoding: Encoding::Int8,
                send_delta: true,
                model: header,
            }
            .into(),
            m.clone(),
        ),
        (
            Update {
                round: 3,
                kind: UpdateKind::Delta,
                num_examples: 1234,
                metrics: metrics(),
                train_seconds: 12.5,
                model: header,
            }
            .into(),
            m.clone(),
        ),
        (
            EvaluateRequest {
                round: 3,
                model: EvalModel::LastGlobal,
                config: ext.clone(),
            }
            .into(),
            None,
        ),
        (
            EvaluateRequest {
                round: 4,
                model: EvalModel::Attached(header),
                config: Extensions::new(),
            }
            .into(),
            m,
        ),
        (
            EvaluateResult {
                round: 3,
                num_examples: 99,
                loss: 0.37,
                metrics: metrics(),
            }
            .into(),
            None,
        ),
        (Heartbeat { seq: 17 }.into(), None),
        (
            ErrorMsg {
                code: ErrorCode::InvalidUpdate,
                text: "tensor head.weight has a NaN".into(),
            }
            .into(),
            None,
        ),
        (
            Bye {
                reason: ByeReason::Done,
                text: "run complete".into(),
            }
            .into(),
            None,
        ),
        (
            Message::SecAggDown(SecAgg {
                round: 3,
                body: vec![0, 1, 2, 255],
            }),
            None,
        ),
        (
            Message::SecAggUp(SecAgg {
                round: 3,
                body: (0..=255).collect(),
            }),
            None,
        ),
        (
            Message::UpdateSignature(crate::UpdateSignature {
                round: 3,
                signature: vec![7; 64],
            }),
            None,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_corpus_decodes_completely() {
        let seeds = seed_corpus().unwrap();
        assert_eq!(seeds.len(), 14 + 2 * 3);
        for (name, bytes) in &seeds {
            let all = decode_all(bytes, &FUZZ_CONFIG).unwrap();
            assert_eq!(all.len(), 1, "{name}");
            assert_eq!(decode_untrusted(bytes), 2, "{name}");
        }
    }

    #[test]
    fn committed_seed_corpus_is_current() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/frame_decoder");
        if !std::path::Path::new(dir).is_dir() {
            eprintln!("skipped: {dir} is absent");
            return;
        }
        for (name, bytes) in seed_corpus().unwrap() {
            let on_disk = std::fs::read(format!("{dir}/{name}")).unwrap_or_default();
            assert!(
                on_disk == bytes,
                "{name} is stale: regenerate with the ignored test write_seed_corpus"
            );
        }
    }

    /// Regenerates the fuzz seed corpus:
    /// `cargo test -p fedcrime-wire --lib fuzzing -- --ignored`
    #[test]
    #[ignore = "writes common/wire/fuzz/corpus/frame_decoder"]
    fn write_seed_corpus() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/frame_decoder");
        std::fs::create_dir_all(dir).unwrap();
        for (name, bytes) in seed_corpus().unwrap() {
            std::fs::write(format!("{dir}/{name}"), bytes).unwrap();
        }
    }
}
