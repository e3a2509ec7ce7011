//! NIfTI-1 bytes gzipped by the target, then read as a `.nii.gz` file, whole and cut short at
//! a point the input chooses: the gzip reading paths (streamed header, extensions, voxels,
//! truncation inside each) must return a volume or an error, never panic.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        unsafe { std::env::set_var("PRETEXT_MAX_ALLOC", "256M") };
    },
    |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        let gz = e.finish().unwrap();
        let _ = pretext::Volume::from_bytes(&gz, "fuzz.nii.gz");
        if let Some(&last) = data.last() {
            let cut = (last as usize * gz.len()) / 256;
            let _ = pretext::Volume::from_bytes(&gz[..cut], "fuzz.nii.gz");
        }
    }
);
