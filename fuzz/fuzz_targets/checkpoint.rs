//! Bytes as a safetensors checkpoint: loading into a small parameter store (whole, by prefix,
//! with renaming) and reading its manifest must succeed or give an error, never panic.
#![no_main]

use candle_core::{DType, Device};
use libfuzzer_sys::fuzz_target;
use pretext::nn::{LoadOptions, ParamStore};

fuzz_target!(|data: &[u8]| {
    let store = ParamStore::new(0);
    let vb = store.builder(DType::F32, &Device::Cpu);
    for (name, shape) in [
        ("encoder.conv.weight", vec![2, 1, 3, 3]),
        ("encoder.conv.bias", vec![2]),
        ("encoder.bn.running_mean", vec![2]),
        ("head.weight", vec![3, 4]),
    ] {
        vb.get_with_hints(shape, name, candle_nn::Init::Const(0.5))
            .expect("store tensor");
    }
    let options = [
        LoadOptions::default(),
        LoadOptions {
            prefix: Some("encoder.".into()),
            rename: vec![("module.".into(), String::new())],
        },
    ];
    for opts in &options {
        if let Ok(report) = store.load_bytes(data, "fuzz.safetensors", opts) {
            let _ = report.is_complete();
        }
    }
    let _ = ParamStore::manifest_bytes(data, "fuzz.safetensors");
});
