//! Codec benchmark: encode + decode of a model against a `memcpy` of the same
//! bytes, measured in the same run (the machines are shared and noisy, so
//! only the ratio means something).
//!
//! Run it with `fedcrime-sim bench wire`, or from the ignored test:
//! `cargo test --release -p fedcrime-wire --features bench --lib bench -- --ignored --nocapture`.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::Serialize;

use super::tensor::{self, Encoding, ModelDecoder, ModelHeader};
use super::WireConfig;
use fedcrime_params::{ParamSpec, Params};

/// One encoding's figures (best of the iterations).
#[derive(Clone, Debug, Serialize)]
pub struct EncodingFigures {
    /// The encoding (`f32`, `f16`, `int8`; `f32-async` for the tokio path).
    pub encoding: String,
    /// Bytes on the wire.
    pub wire_bytes: u64,
    /// Seconds to encode the model into a (reused) buffer.
    pub encode_s: f64,
    /// Seconds to decode it into a (reused) parameter buffer.
    pub decode_s: f64,
    /// `memcpy_s / (encode_s + decode_s)`: 1.0 means as fast as one copy of
    /// the f32 model; the target is at least 0.5.
    pub ratio_vs_memcpy: f64,
    /// Model (f32) gigabytes per second through encode + decode.
    pub gb_per_s: f64,
    /// Largest absolute error of a decoded value.
    pub max_abs_error: f32,
}

/// The benchmark's result.
#[derive(Clone, Debug, Serialize)]
pub struct CodecBench {
    /// Scalar parameters in the model.
    pub params: usize,
    /// Tensors in the model.
    pub tensors: usize,
    /// Iterations (the best is kept).
    pub iterations: usize,
    /// Bytes of the f32 model.
    pub model_bytes: u64,
    /// Seconds for one `copy_from_slice` of the f32 model (best).
    pub memcpy_s: f64,
    /// Per encoding.
    pub encodings: Vec<EncodingFigures>,
}

impl fmt::Display for CodecBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "wire codec: {} parameters in {} tensors ({:.1} MB f32), best of {}",
            self.params,
            self.tensors,
            self.model_bytes as f64 / 1e6,
            self.iterations
        )?;
        writeln!(
            f,
            "memcpy: {:.3} ms ({:.2} GB/s)",
            self.memcpy_s * 1e3,
            self.model_bytes as f64 / self.memcpy_s / 1e9
        )?;
        writeln!(
            f,
            "{:<10} {:>12} {:>10} {:>10} {:>9} {:>9} {:>12}",
            "encoding", "wire bytes", "encode ms", "decode ms", "GB/s", "x memcpy", "max |err|"
        )?;
        for e in &self.encodings {
            writeln!(
                f,
                "{:<10} {:>12} {:>10.3} {:>10.3} {:>9.2} {:>9.3} {:>12.3e}",
                e.encoding,
                e.wire_bytes,
                e.encode_s * 1e3,
                e.decode_s * 1e3,
                e.gb_per_s,
                e.ratio_vs_memcpy,
                e.max_abs_error
            )?;
        }
        Ok(())
    }
}

/// A model of about `params` values: 1024x1024 weight + bias layers and a
/// remainder tensor, weights ~ N(0, 0.05), seeded.
pub(crate) fn synthetic_model(params: usize, seed: u64) -> Params {
    let mut tensors: Vec<(String, Vec<usize>)> = Vec::new();
    let mut left = params;
    let mut layer = 0;
    while left >= 1024 * 1024 + 1024 {
        tensors.push((format!("layer{layer}.weight"), vec![1024, 1024]));
        tensors.push((format!("layer{layer}.bias"), vec![1024]));
        left -= 1024 * 1024 + 1024;
        layer += 1;
    }
    if left > 0 || tensors.is_empty() {
        tensors.push(("head.weight".to_string(), vec![left]));
    }
    // Names are unique by construction.
    let spec = match ParamSpec::new(tensors) {
        Ok(s) => Arc::new(s),
        Err(e) => unreachable!("synthetic layout has unique names: {e}"),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.05).unwrap_or_else(|_| unreachable!("valid std"));
    let data: Vec<f32> = (0..spec.total()).map(|_| normal.sample(&mut rng)).collect();
    Params::new(spec, data).unwrap_or_else(|_| unreachable!("length matches the layout"))
}

fn max_abs_error(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Measures encode + decode of a `params`-value model in every encoding (and
/// the async f32 path) against a memcpy of the same f32 bytes.
pub fn bench_codec(params: usize) -> super::Result<CodecBench> {
    let iterations = 7;
    let cfg = WireConfig::default();
    let model = synthetic_model(params, 7);
    let model_bytes = (model.data().len() * 4) as u64;
    let mut memcpy_dst = vec![0f32; model.data().len()];
    let mut memcpy_s = f64::INFINITY;
    let mut out = Vec::new();
    let mut decoded = Params::zeros(model.spec().clone());
    let mut figures = Vec::new();

    let mut memcpy = |best: &mut f64| {
        let t = Instant::now();
        memcpy_dst.copy_from_slice(model.data());
        *best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(&memcpy_dst);
    };

    for encoding in Encoding::ALL {
        let header = ModelHeader::describe(&model, encoding)?;
        let (mut enc_s, mut dec_s) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..iterations {
            memcpy(&mut memcpy_s);
            out.clear();
            let t = Instant::now();
            tensor::encode_params(&model, encoding, cfg.chunk_bytes(), &mut out)?;
            enc_s = enc_s.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let mut dec = ModelDecoder::into_params(header, &mut decoded)?;
            dec.feed_slice(&out, cfg.max_frame_bytes)?;
            dec.finish()?;
            dec_s = dec_s.min(t.elapsed().as_secs_f64());
        }
        figures.push((
            encoding.name().to_string(),
            out.len() as u64,
            enc_s,
            dec_s,
            max_abs_error(model.data(), decoded.data()),
        ));
    }

    // The async path (what a QUIC stream sees), f32, through tokio's
    // AsyncWrite for Vec<u8> and AsyncRead for &[u8].
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|source| super::WireError::Io {
            context: "starting the benchmark runtime",
            source,
        })?;
    let header = ModelHeader::describe(&model, Encoding::F32)?;
    let (mut enc_s, mut dec_s) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..iterations {
        memcpy(&mut memcpy_s);
        out.clear();
        let t = Instant::now();
        rt.block_on(tensor::write_params(
            &mut out,
            &model,
            Encoding::F32,
            cfg.chunk_bytes(),
        ))?;
        enc_s = enc_s.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut src: &[u8] = &out;
        rt.block_on(tensor::read_params_into(
            &mut src,
            header,
            &mut decoded,
            &cfg,
        ))?;
        dec_s = dec_s.min(t.elapsed().as_secs_f64());
    }
    figures.push((
        "f32-async".to_string(),
        out.len() as u64,
        enc_s,
        dec_s,
        max_abs_error(model.data(), decoded.data()),
    ));

    let encodings = figures
        .into_iter()
        .map(
            |(encoding, wire_bytes, encode_s, decode_s, err)| EncodingFigures {
                encoding,
                wire_bytes,
                encode_s,
                decode_s,
                ratio_vs_memcpy: memcpy_s / (encode_s + decode_s),
                gb_per_s: model_bytes as f64 / (encode_s + decode_s) / 1e9,
                max_abs_error: err,
            },
        )
        .collect();
    Ok(CodecBench {
        params: model.data().len(),
        tensors: model.spec().len(),
        iterations,
        model_bytes,
        memcpy_s,
        encodings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bench_runs_and_is_exact_for_f32() {
        let r = bench_codec(3000).unwrap();
        assert_eq!(r.params, 3000);
        assert_eq!(r.encodings.len(), 4);
        for e in &r.encodings {
            if e.encoding.starts_with("f32") {
                assert_eq!(e.max_abs_error, 0.0, "{}", e.encoding);
            } else {
                assert!(e.max_abs_error > 0.0 && e.max_abs_error < 0.01, "{e:?}");
            }
            assert!(e.ratio_vs_memcpy > 0.0 && e.ratio_vs_memcpy.is_finite());
        }
        assert!(r.to_string().contains("int8"));
    }

    /// The benchmark: 10M parameters. Run in release:
    /// `cargo test --release -p fedcrime-wire --features bench --lib bench -- --ignored --nocapture`
    #[test]
    #[ignore = "benchmark; run in release (see the doc comment)"]
    fn bench_10m_parameters() {
        let r = bench_codec(10_000_000).unwrap();
        println!("{r}");
        println!("{}", serde_json::to_string(&r).unwrap());
    }
}
