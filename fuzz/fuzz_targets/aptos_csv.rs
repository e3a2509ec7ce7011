//! Bytes as an APTOS `train.csv`: parsing must give rows with plain-name ids and grades 0..4
//! plus problems, or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("train.csv");
    if let Ok((rows, _problems)) = pretext::data::aptos::parse_csv(path, data) {
        for r in rows {
            assert!(r.grade <= 4);
            assert!(!r.id.is_empty() && !r.id.contains('/'), "id {:?}", r.id);
        }
    }
});
