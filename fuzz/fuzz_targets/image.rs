//! PNG or JPEG bytes as a fundus photograph: decoding (and, for small images, the tensor and a
//! resize) must return an image or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        unsafe { std::env::set_var("PRETEXT_MAX_ALLOC", "256M") };
    },
    |data: &[u8]| {
        if let Ok(img) = pretext::Image::from_bytes(data, "fuzz.png") {
            if img.width() * img.height() <= 1 << 16 {
                let t = img.tensor().expect("a decoded image has a tensor");
                assert_eq!(t.dims()[1..], [img.height(), img.width()]);
                let _ = img.resize(7, 5).expect("a small resize works");
            }
        }
    }
);
