//! Parameters out of and into a [`VarStore`]: the bridge between tch models
//! and the federated [`Params`] currency.
//!
//! Tensors are ordered by name (byte order), so two models built from the
//! same config always agree on the layout, whatever order their layers were
//! created in. Export copies each tensor once, straight into the flat buffer
//! (on a GPU: one device-side concatenation and one transfer); import uploads
//! the flat buffer once and copies each tensor from a view of it. No
//! per-element loops.

use std::collections::HashMap;
use std::sync::Arc;

use tch::{nn::VarStore, Device, Kind, Tensor};

use super::error::{ModelError, Result};
use fedcrime_params::{ParamSpec, Params};

/// The store's variables sorted by name.
fn sorted_vars(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    vars
}

fn shape_of(t: &Tensor) -> Vec<usize> {
    t.size().iter().map(|&d| d.max(0) as usize).collect()
}

/// The layout of `vs`: every variable (trainable or not), sorted by name.
pub fn param_spec(vs: &VarStore) -> Arc<ParamSpec> {
    let vars = sorted_vars(vs);
    Arc::new(spec_of(&vars))
}

fn spec_of(vars: &[(String, Tensor)]) -> ParamSpec {
    // VarStore names are the keys of a map, hence unique: `new` cannot fail.
    ParamSpec::new(vars.iter().map(|(n, t)| (n.clone(), shape_of(t))))
        .unwrap_or_else(|e| unreachable!("VarStore names are unique: {e}"))
}

/// The values of every variable of `vs` in one flat buffer, ordered by name.
pub fn export_params(vs: &VarStore) -> Params {
    let vars = sorted_vars(vs);
    let spec = Arc::new(spec_of(&vars));
    let mut data = vec![0f32; spec.total()];
    copy_out(&vars, &spec, &mut data);
    // `data` has exactly `spec.total()` values.
    Params::new(spec, data).unwrap_or_else(|e| unreachable!("sized from its spec: {e}"))
}

/// Like [`export_params`], but into an existing [`Params`] (no allocation;
/// the layout `Arc` is kept, so every export of a model shares one spec).
/// Fails when `out`'s layout is not the store's.
pub fn export_params_into(vs: &VarStore, out: &mut Params) -> Result<()> {
    let vars = sorted_vars(vs);
    check_layout(&vars, out.spec())?;
    let spec = Arc::clone(out.spec());
    copy_out(&vars, &spec, out.data_mut());
    Ok(())
}

/// Copies every variable into its range of `data` (layout already checked).
fn copy_out(vars: &[(String, Tensor)], spec: &ParamSpec, data: &mut [f32]) {
    tch::no_grad(|| {
        let gpu = vars
            .iter()
            .map(|(_, t)| t.device())
            .find(|d| *d != Device::Cpu);
        if let Some(gpu) = gpu {
            // One concatenation on the device and one transfer, instead of a
            // synchronizing transfer per tensor (variables of a model split
            // across devices gather on the first one).
            let flat: Vec<Tensor> = vars
                .iter()
                .map(|(_, t)| t.to_kind(Kind::Float).to_device(gpu).reshape([-1]))
                .collect();
            if !flat.is_empty() {
                Tensor::cat(&flat, 0).copy_data(data, spec.total());
            }
        } else {
            for ((_, t), entry) in vars.iter().zip(spec.entries()) {
                let t = t.to_kind(Kind::Float);
                t.copy_data(&mut data[entry.range()], entry.numel());
            }
        }
    })
}

/// Checks that `spec` names exactly the tensors of `vars` (sorted) with the
/// same shapes, naming the first difference.
fn check_layout(vars: &[(String, Tensor)], spec: &ParamSpec) -> Result<()> {
    let by_name: HashMap<&str, &Tensor> = vars.iter().map(|(n, t)| (n.as_str(), t)).collect();
    for entry in spec.entries() {
        let Some(t) = by_name.get(entry.name.as_str()) else {
            return Err(ModelError::UnexpectedParam {
                name: entry.name.clone(),
            });
        };
        let expected = shape_of(t);
        if expected != entry.shape {
            return Err(ModelError::Shape {
                name: entry.name.clone(),
                expected,
                got: entry.shape.clone(),
            });
        }
    }
    if let Some((name, _)) = vars.iter().find(|(n, _)| spec.get(n).is_none()) {
        return Err(ModelError::MissingParam { name: name.clone() });
    }
    Ok(())
}

/// Overwrites every variable of `vs` with its values in `p`, matched by
/// name. Errors name the tensor when `p` lacks one of the store's tensors,
/// has one the store lacks, or has a different shape; nothing is written
/// then.
pub fn import_params(vs: &mut VarStore, p: &Params) -> Result<()> {
    let vars = sorted_vars(vs);
    check_layout(&vars, p.spec())?;
    let device = vs.device();
    // One upload of the whole buffer, then a device-side copy per tensor.
    let src = Tensor::f_from_slice(p.data())?;
    let src = if device == Device::Cpu {
        src
    } else {
        src.f_to_device(device)?
    };
    let by_name: HashMap<&str, &Tensor> = vars.iter().map(|(n, t)| (n.as_str(), t)).collect();
    tch::no_grad(|| -> Result<()> {
        for entry in p.spec().entries() {
            // `check_layout` guarantees presence and shape.
            if let Some(var) = by_name.get(entry.name.as_str()) {
                let shape: Vec<i64> = entry.shape.iter().map(|&d| d as i64).collect();
                let view = src
                    .f_narrow(0, entry.offset as i64, entry.numel() as i64)?
                    .f_view(shape.as_slice())?;
                let mut var = var.shallow_clone();
                var.f_copy_(&view)?;
            }
        }
        Ok(())
    })
}

/// `p`'s tensors on `device`, in `p`'s order, as views of one upload of the
/// flat buffer (e.g. the global model of a FedProx proximal term,
/// `mu/2 * sum ||w - w_global||^2`, matched to the store's variables by name).
pub fn params_to_tensors(p: &Params, device: Device) -> Result<Vec<(String, Tensor)>> {
    let src = Tensor::f_from_slice(p.data())?;
    let src = if device == Device::Cpu {
        src
    } else {
        src.f_to_device(device)?
    };
    p.spec()
        .entries()
        .iter()
        .map(|e| {
            let shape: Vec<i64> = e.shape.iter().map(|&d| d as i64).collect();
            let t = src
                .f_narrow(0, e.offset as i64, e.numel() as i64)?
                .f_view(shape.as_slice())?;
            Ok((e.name.clone(), t))
        })
        .collect()
}

/// Total number of scalar parameters (every variable of the store).
pub fn num_params(vs: &VarStore) -> usize {
    vs.variables().values().map(Tensor::numel).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::one_thread;

    fn store(seed: i64, out: i64) -> VarStore {
        tch::manual_seed(seed);
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        // Created out of name order on purpose.
        let _ = root.sub("z").randn_standard("w", &[3, out]);
        let _ = root.sub("a").randn_standard("b", &[4]);
        let _ = root.sub("m").zeros_no_train("buf", &[2, 2]);
        vs
    }

    #[test]
    fn export_is_sorted_and_complete() {
        one_thread();
        let vs = store(1, 2);
        let p = export_params(&vs);
        let names: Vec<_> = p.spec().entries().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a.b", "m.buf", "z.w"]);
        assert_eq!(p.spec().total(), 4 + 4 + 6);
        let w = Vec::<f32>::try_from(vs.variables()["z.w"].reshape([-1])).unwrap();
        assert_eq!(p.tensor(p.spec().get("z.w").unwrap()), w.as_slice());
        assert_eq!(num_params(&vs), 14);
        assert_eq!(*param_spec(&vs), **p.spec());
    }

    #[test]
    fn import_round_trips_between_stores() {
        one_thread();
        let a = store(1, 2);
        let mut b = store(2, 2);
        let pa = export_params(&a);
        assert_ne!(export_params(&b).data(), pa.data());
        import_params(&mut b, &pa).unwrap();
        assert_eq!(export_params(&b), pa);
        // The imported values are the variables the optimizer sees.
        let w = b.trainable_variables();
        assert!(w.iter().all(|t| t.requires_grad()));
    }

    #[test]
    fn export_into_reuses_the_layout() {
        one_thread();
        let vs = store(3, 2);
        let mut p = export_params(&vs);
        let spec = Arc::clone(p.spec());
        p.data_mut().fill(0.0);
        export_params_into(&vs, &mut p).unwrap();
        assert!(Arc::ptr_eq(&spec, p.spec()));
        assert_eq!(p, export_params(&vs));
        let mut other = export_params(&store(3, 5));
        let err = export_params_into(&vs, &mut other).unwrap_err().to_string();
        assert!(err.contains("z.w") && err.contains("[3, 5]"), "{err}");
    }

    #[test]
    fn mismatches_name_the_tensor_and_write_nothing() {
        one_thread();
        let mut a = store(1, 2);
        let before = export_params(&a);
        let wrong_shape = export_params(&store(2, 3));
        let err = import_params(&mut a, &wrong_shape).unwrap_err();
        assert!(
            matches!(&err, ModelError::Shape { name, .. } if name == "z.w"),
            "{err}"
        );
        assert_eq!(export_params(&a), before);

        let vs = VarStore::new(Device::Cpu);
        let _ = vs.root().sub("a").zeros("b", &[4]);
        let fewer = export_params(&vs);
        let err = import_params(&mut a, &fewer).unwrap_err();
        assert!(
            matches!(&err, ModelError::MissingParam { name } if name == "m.buf"),
            "{err}"
        );
        let mut small = vs;
        let err = import_params(&mut small, &before).unwrap_err();
        assert!(
            matches!(&err, ModelError::UnexpectedParam { name } if name == "m.buf"),
            "{err}"
        );
    }

    #[test]
    fn params_become_named_tensors() {
        one_thread();
        let vs = store(4, 2);
        let p = export_params(&vs);
        let tensors = params_to_tensors(&p, Device::Cpu).unwrap();
        let vars = vs.variables();
        assert_eq!(tensors.len(), vars.len());
        for (name, t) in &tensors {
            assert!(t.equal(&vars[name]), "{name}");
        }
    }

    #[test]
    fn import_accepts_any_order_of_names() {
        one_thread();
        let a = store(1, 2);
        let p = export_params(&a);
        // Same tensors, reversed order.
        let entries: Vec<_> = p.spec().entries().iter().rev().cloned().collect();
        let spec = Arc::new(
            ParamSpec::new(entries.iter().map(|e| (e.name.clone(), e.shape.clone()))).unwrap(),
        );
        let mut data = Vec::new();
        for e in &entries {
            data.extend_from_slice(p.tensor(e));
        }
        let reversed = Params::new(spec, data).unwrap();
        let mut b = store(9, 2);
        import_params(&mut b, &reversed).unwrap();
        assert_eq!(export_params(&b), p);
    }
}
