//! Choosing where tensors live: `auto`, `cpu`, `cuda` or `cuda:N`, and
//! loading libtorch's CUDA backend only when a CUDA device may be used.
//!
//! libtorch splits into a CPU library and a CUDA backend (`libtorch_cuda.so`)
//! that registers itself when loaded. PyPI's torch wheel, which fedcrime
//! builds against, brings the CUDA backend and its CUDA libraries; loading
//! them costs every process about 190 MB of private memory (cuBLASLt's BSS
//! alone is 84 MiB) and start-up time, also on machines without a GPU. So
//! binaries do not link the backend: they call [`prepare`] first thing,
//! which loads it where an NVIDIA driver is present.
//!
//! It must be loaded before libtorch first asks for its CUDA hooks (seeding
//! the generators does, for one): libtorch keeps the answer it got then.

use std::ffi::{CStr, CString};
use std::path::Path;
use std::str::FromStr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// A device request as written on the command line or in a config file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    /// CUDA device 0 when CUDA is available, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// A CUDA device by ordinal.
    Cuda(usize),
}

impl DeviceChoice {
    /// Resolves the request on this machine. Asking for CUDA where there is
    /// none (or for an ordinal past the last device) is an error, not a silent
    /// fall back to the CPU.
    pub fn resolve(self) -> Result<tch::Device, String> {
        match self {
            DeviceChoice::Auto => Ok(if cuda_devices() > 0 {
                tch::Device::Cuda(0)
            } else {
                tch::Device::Cpu
            }),
            DeviceChoice::Cpu => Ok(tch::Device::Cpu),
            DeviceChoice::Cuda(n) => {
                load_cuda_backend().map_err(|e| format!("device cuda:{n} requested but {e}"))?;
                let count = tch::Cuda::device_count();
                if count <= 0 {
                    Err(format!(
                        "device cuda:{n} requested but CUDA is not available"
                    ))
                } else if n as i64 >= count {
                    Err(format!(
                        "device cuda:{n} requested but only {count} CUDA device(s) exist"
                    ))
                } else {
                    Ok(tch::Device::Cuda(n))
                }
            }
        }
    }
}

/// Loads libtorch's CUDA backend when this machine has an NVIDIA driver, so
/// that `auto` and `cuda` devices can be used; on a machine without one it
/// does nothing, and the process never maps the CUDA libraries. Binaries
/// call it at the start of `main`, before any libtorch call. A failure is
/// logged, not fatal: the process then runs on the CPU, and an explicit
/// `cuda` request fails with the reason.
pub fn prepare() {
    if nvidia_driver_present() {
        // A failure is logged once, where the load is attempted.
        let _ = load_cuda_backend();
    }
}

/// CUDA devices this process can use: 0 without an NVIDIA driver (then the
/// CUDA backend is not loaded) or when the backend cannot be loaded.
pub fn cuda_devices() -> usize {
    let loaded = matches!(LOADED.get(), Some(Ok(())));
    if !loaded && !nvidia_driver_present() {
        return 0;
    }
    match load_cuda_backend() {
        Ok(()) => tch::Cuda::device_count().max(0) as usize,
        Err(_) => 0,
    }
}

/// Whether this machine has an NVIDIA driver (its control device or its
/// `/proc` entry), the cheap test before loading the CUDA backend.
fn nvidia_driver_present() -> bool {
    ["/dev/nvidiactl", "/proc/driver/nvidia/version"]
        .iter()
        .any(|p| Path::new(p).exists())
}

/// Loads libtorch's CUDA backend into this process, once; later calls
/// return the first call's result. Afterwards `tch::Cuda` sees the CUDA
/// devices, as if the backend had been linked.
///
/// The library is looked up like any shared library: in the binary's run
/// path (libtorch's folder, embedded at build time) and `LD_LIBRARY_PATH`.
pub fn load_cuda_backend() -> Result<(), String> {
    LOADED.get_or_init(load_cuda_backend_now).clone()
}

/// The outcome of the one attempt to load the CUDA backend.
static LOADED: OnceLock<Result<(), String>> = OnceLock::new();

fn load_cuda_backend_now() -> Result<(), String> {
    let loaded = dlopen_cuda_backend();
    if let Err(e) = &loaded {
        if nvidia_driver_present() {
            tracing::warn!("an NVIDIA driver is present but {e}; training runs on the CPU");
        }
    }
    loaded
}

fn dlopen_cuda_backend() -> Result<(), String> {
    const LIB: &str = "libtorch_cuda.so";
    if option_env!("FEDCRIME_TORCH_HAS_CUDA").is_none() {
        return Err(format!(
            "the libtorch this binary was built against has no CUDA backend ({LIB})"
        ));
    }
    let name = CString::new(LIB).expect("no NUL in the name");
    // SAFETY: `name` is NUL-terminated and outlives the call. The handle is
    // never closed, so the library stays mapped for the life of the process;
    // loading it runs its static initialisers, which register libtorch's
    // CUDA hooks exactly as when it is linked.
    #[allow(unsafe_code)]
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns null or a NUL-terminated string owned by
        // the C library, valid until the next dl* call on this thread.
        #[allow(unsafe_code)]
        let why = unsafe {
            let e = libc::dlerror();
            if e.is_null() {
                "no reason given".to_string()
            } else {
                CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        };
        return Err(format!(
            "libtorch's CUDA backend could not be loaded: {why}"
        ));
    }
    tracing::debug!("loaded libtorch's CUDA backend ({LIB})");
    Ok(())
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(format!(
                    "unknown device {other:?} (expected auto, cpu, cuda or cuda:N)"
                )),
            },
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        d.to_string()
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_rejects_others() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        assert!("gpu".parse::<DeviceChoice>().unwrap_err().contains("gpu"));
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn cpu_always_resolves() {
        assert_eq!(DeviceChoice::Cpu.resolve(), Ok(tch::Device::Cpu));
    }

    /// The CUDA backend is not linked, and loading it at run time registers
    /// it with libtorch. `hasCUDART` is answered by the backend's hooks: false
    /// from the CPU library's stubs, true once the backend is loaded, with or
    /// without a GPU. libtorch fixes its hooks at their first use, so each
    /// case runs in a fresh process: this test binary again, running only
    /// [`cuda_backend_probe`] (ignored otherwise).
    #[test]
    fn the_cuda_backend_is_not_linked_and_loads_at_run_time() {
        if option_env!("FEDCRIME_TORCH_HAS_CUDA").is_none() {
            eprintln!("skipped: this libtorch has no CUDA backend");
            return;
        }
        let probe = |load: &str| {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "device::tests::cuda_backend_probe", "--ignored"])
                .args(["--nocapture", "--test-threads", "1"])
                .env("FEDCRIME_PROBE_LOAD", load)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{text}");
            text.lines()
                .find_map(|l| l.split_once("probe: ").map(|(_, r)| r.to_string()))
                .unwrap_or_else(|| panic!("no probe line in {text}"))
        };
        assert_eq!(probe("0"), "mapped false cudart false");
        assert_eq!(probe("1"), "mapped true cudart true");
    }

    /// One process's view (see the test above): loads the backend when
    /// `FEDCRIME_PROBE_LOAD=1`, then reports whether it is mapped and
    /// registered. Without a GPU, an explicit request names the reason.
    #[test]
    #[ignore = "run by the_cuda_backend_is_not_linked_and_loads_at_run_time"]
    fn cuda_backend_probe() {
        if std::env::var("FEDCRIME_PROBE_LOAD").as_deref() == Ok("1") {
            load_cuda_backend().unwrap();
            if tch::Cuda::device_count() == 0 {
                let e = DeviceChoice::Cuda(0).resolve().unwrap_err();
                assert!(e.contains("not available"), "{e}");
                assert_eq!(cuda_devices(), 0);
            }
        }
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        println!(
            "probe: mapped {} cudart {}",
            maps.contains("libtorch_cuda.so"),
            tch::utils::has_cudart()
        );
    }
}
