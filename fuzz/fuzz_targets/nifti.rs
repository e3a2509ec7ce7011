//! NIfTI-1 bytes as a `.nii` file (gzip, recognised by its magic bytes, included): reading
//! must return a volume or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        // Keep a header's claimed size within the fuzzer's memory limit (an error beyond).
        unsafe { std::env::set_var("PRETEXT_MAX_ALLOC", "256M") };
    },
    |data: &[u8]| {
        if let Ok(v) = pretext::Volume::from_bytes(data, "fuzz.nii") {
            let values = v.to_vec().expect("a loaded volume has values");
            assert_eq!(values.len(), v.shape().iter().product::<usize>());
            let _ = (v.spacing(), v.affine(), v.scaling());
        }
    }
);
