//! What the round messages of the wire protocol weigh, for the memory
//! transport's byte counts: a RoundStart with the global model to each
//! sampled station, an Update with the trained model back (frame headers,
//! control payloads and tensor frames, as `fedcrime/1` encodes them; the
//! QUIC and TLS layers below are not counted).

use anyhow::Result;

use fedcrime_fl::{FitIns, FitRes};
use fedcrime_params::Params;
use fedcrime_station::protocol::{round_start, UpdateDelivery};
use fedcrime_wire::frame::HEADER_LEN;
use fedcrime_wire::tensor::encoded_len;
use fedcrime_wire::{Encoding, Message, ModelHeader, Update, UpdateKind, WireConfig};

/// Bytes of one control frame carrying `msg`, plus the model it announces.
fn message_bytes(msg: &Message, model: &Params, encoding: Encoding) -> Result<u64> {
    let mut payload = Vec::new();
    msg.encode_payload(&mut payload)?;
    let chunk = WireConfig::default().chunk_bytes();
    Ok((HEADER_LEN + payload.len()) as u64 + encoded_len(model, encoding, chunk))
}

/// The RoundStart carrying `ins` (f32 tensors, full updates requested).
pub fn round_start_bytes(ins: &FitIns) -> Result<u64> {
    let msg = Message::RoundStart(round_start(
        ins,
        F32_FULL,
        ModelHeader::describe(&ins.global, Encoding::F32)?,
    ));
    message_bytes(&msg, &ins.global, Encoding::F32)
}

/// What the memory transport counts: f32 tensors, full updates.
const F32_FULL: UpdateDelivery = UpdateDelivery {
    encoding: Encoding::F32,
    send_delta: false,
};

/// The Update answering `round` with `res` (f32 tensors).
pub fn update_bytes(round: u64, res: &FitRes, train_seconds: f64) -> Result<u64> {
    let msg = Message::Update(Update {
        round,
        kind: UpdateKind::Full,
        num_examples: res.num_examples,
        metrics: res.metrics.clone(),
        train_seconds,
        model: ModelHeader::describe(&res.params, Encoding::F32)?,
    });
    message_bytes(&msg, &res.params, Encoding::F32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrime_fl::RoundSettings;
    use fedcrime_params::ParamSpec;
    use fedcrime_wire::{encode_message, Received, RoundStart};
    use std::sync::Arc;

    #[test]
    fn counts_match_the_encoder() {
        let spec = Arc::new(ParamSpec::new([("w", vec![300, 7]), ("b", vec![7])]).unwrap());
        let params =
            Params::new(spec.clone(), (0..spec.total()).map(|i| i as f32).collect()).unwrap();
        let ins = FitIns {
            global: Arc::new(params.clone()),
            round: 3,
            settings: Arc::new(RoundSettings {
                local_epochs: 2,
                ..RoundSettings::default()
            }),
        };
        let counted = round_start_bytes(&ins).unwrap();
        let msg = Message::RoundStart(RoundStart {
            round: 3,
            settings: (*ins.settings).clone(),
            update_encoding: Encoding::F32,
            send_delta: false,
            model: ModelHeader::describe(&params, Encoding::F32).unwrap(),
        });
        let mut out = Vec::new();
        encode_message(&msg, Some(&params), &WireConfig::default(), &mut out).unwrap();
        assert_eq!(counted, out.len() as u64);
        assert!(counted > 4 * spec.total() as u64);

        let res = FitRes {
            params: Arc::new(params.clone()),
            num_examples: 10,
            metrics: [("loss".to_string(), 0.5)].into(),
        };
        let counted = update_bytes(3, &res, 1.5).unwrap();
        let msg = Message::Update(Update {
            round: 3,
            kind: UpdateKind::Full,
            num_examples: 10,
            metrics: res.metrics.clone(),
            train_seconds: 1.5,
            model: ModelHeader::describe(&params, Encoding::F32).unwrap(),
        });
        let mut out = Vec::new();
        encode_message(&msg, Some(&params), &WireConfig::default(), &mut out).unwrap();
        assert_eq!(counted, out.len() as u64);
        let back: Vec<Received> = fedcrime_wire::decode_all(&out, &WireConfig::default()).unwrap();
        assert_eq!(back.len(), 1);
    }
}
