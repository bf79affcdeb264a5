//! Feeds arbitrary bytes to the frame, message and tensor decoders, both
//! learning the model layout from the stream and against an expected layout
//! (`fedcrime_wire::fuzzing::decode_untrusted`). Any panic, abort or
//! allocation beyond the fuzzing limits is a bug.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fedcrime_wire::fuzzing::decode_untrusted(data);
});
