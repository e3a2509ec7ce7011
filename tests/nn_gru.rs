//! The GRU against PyTorch's `nn.GRU` (batch first, last hidden state).

mod common;
use candle_core::{DType, Device};
use common::torch::{Fixture, assert_close};
use pretext::nn::{ParamStore, gru};

#[test]
fn gru_last_state_and_gradients_match_pytorch() {
    let f = Fixture::load("gru");
    let store = ParamStore::new(0);
    let net = gru(5, 4, store.builder(DType::F32, &Device::Cpu)).unwrap();
    for name in ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"] {
        store.get(name).unwrap().set(&f.get(name)).unwrap();
    }
    let x = f.var("x", DType::F32);
    let h = net.forward(x.as_tensor()).unwrap();
    assert_close(&h, &f.get("h"), 1e-5, "last state");
    let grads = (&h * &f.get("g"))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_close(
        grads.get(x.as_tensor()).unwrap(),
        &f.get("dx"),
        1e-4,
        "input gradient",
    );
    for (name, var) in store.trainable("") {
        assert_close(
            grads.get(var.as_tensor()).unwrap(),
            &f.get(&format!("d{name}")),
            1e-4,
            &name,
        );
    }
}
