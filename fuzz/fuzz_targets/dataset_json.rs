//! Text as a Decathlon `dataset.json`: parsing must give a dataset whose cases are plain names
//! inside the folder, or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let root = std::path::Path::new("/fuzz-dataset");
    if let Ok(d) = pretext::data::Decathlon::parse(root, text) {
        for c in d.cases() {
            assert!(
                c.image.starts_with(root),
                "{:?} outside the dataset",
                c.image
            );
            if let Some(l) = &c.label {
                assert!(l.starts_with(root), "{l:?} outside the dataset");
            }
            assert!(!c.id.contains('/') && !c.id.contains(".."), "id {:?}", c.id);
        }
        let _ = (d.labels(), d.modality(), d.name());
    }
});
