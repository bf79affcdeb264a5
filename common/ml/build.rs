//! Shared build script of every fedcrime crate that links libtorch.
//!
//! torch-sys (`links = "tch"`) exports the libtorch library folder it linked
//! against as `DEP_TCH_LIBTORCH_LIB`. Embedding it as an rpath lets binaries and
//! test executables find `libtorch*.so` without `LD_LIBRARY_PATH` (also the CUDA
//! backend, which fedcrime-ml loads at run time by name). Crates that
//! use this script depend on `torch-sys` directly, which is what makes cargo pass
//! the variable to them.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        if !dir.is_empty() {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
            // The CUDA backend is not linked (the linker drops it: nothing
            // refers to its symbols); fedcrime-ml loads it at run time where a
            // GPU may be used (src/device.rs), which spares CPU-only processes
            // ~190 MB each.
            if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
                println!("cargo:rustc-env=FEDCRIME_TORCH_HAS_CUDA=1");
            }
        }
    }
}
