//! `pretext bench parity` on the CPU: every op and model through the composed implementation
//! (what GPUs run) equals the CPU kernels, outputs and gradients.

#[test]
fn the_composed_paths_equal_the_cpu_kernels_for_every_op_and_model() {
    let checks = pretext::parity::parity(&candle_core::Device::Cpu).unwrap();
    assert!(checks.len() >= 18);
    for c in &checks {
        assert!(
            c.ok,
            "{}: {:.3e} > {:e} ({})",
            c.name, c.rel_err, c.tol, c.worst
        );
    }
}
