//! # fedcrime-cli
//!
//! What fedcrime's binaries (`fedcrime-server`, `fedcrime-client`,
//! `fedcrime-sim`) share around `main`: reading their TOML config files with
//! errors that name the file and the setting ([`config_file`]), and the
//! `[log]` section, `tracing` set-up and tokio runtime ([`logging`]).
//! Nothing here knows about federated learning.

pub mod config_file;
pub mod logging;

#[doc(hidden)]
pub use tikv_jemallocator;

/// The memory allocator settings every fedcrime binary runs with (see
/// [`use_jemalloc!`]): jemalloc, large buffers kept for reuse, idle pages
/// returned to the system after 2 s.
pub const MALLOC_CONF: &str = "oversize_threshold:0,dirty_decay_ms:2000,muzzy_decay_ms:0";

/// Makes jemalloc the binary's allocator, configured with [`MALLOC_CONF`].
///
/// Why: a 10M-parameter model is a 40 MB buffer, and every round allocates
/// dozens (updates received, models decoded, updates trained). glibc maps
/// each buffer above 32 MiB afresh and jemalloc by default purges buffers
/// above 8 MiB at once, so each one costs ~10,000 page faults and zeroing
/// 40 MB in the kernel: at 10M parameters that was a third of a QUIC round's
/// CPU time (`fedcrime-sim bench rounds --params 10m`, BENCHMARKS.md).
/// Keeping freed pages for 2 s serves the next round's buffers from memory
/// already mapped; an idle process still gives them back.
///
/// Call once at the top level of a binary crate.
#[macro_export]
macro_rules! use_jemalloc {
    () => {
        #[global_allocator]
        static GLOBAL_ALLOCATOR: $crate::tikv_jemallocator::Jemalloc =
            $crate::tikv_jemallocator::Jemalloc;

        /// Read by jemalloc at start-up (its documented configuration symbol).
        #[allow(unsafe_code, non_upper_case_globals)]
        #[export_name = "_rjem_malloc_conf"]
        #[used]
        static malloc_conf: &[u8; $crate::MALLOC_CONF.len() + 1] = &{
            let mut out = [0u8; $crate::MALLOC_CONF.len() + 1];
            let src = $crate::MALLOC_CONF.as_bytes();
            let mut i = 0;
            while i < src.len() {
                out[i] = src[i];
                i += 1;
            }
            out
        };
    };
}
