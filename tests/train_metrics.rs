//! Metrics against scikit-learn: quadratic weighted kappa (with O's undecodable −1 grades),
//! confusion matrices, accuracy, and O's pooled per-class Dice.

use pretext::train::metrics::Confusion;

fn fixture() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/metrics/metrics.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ints(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

#[test]
fn quadratic_kappa_confusion_and_accuracy_match_scikit_learn() {
    let f = fixture();
    for (i, case) in f["classification"].as_array().unwrap().iter().enumerate() {
        let mut c = Confusion::new(5);
        c.add(&ints(&case["truth"]), &ints(&case["pred"])).unwrap();
        let expected: Vec<Vec<u64>> = case["confusion"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(c.counts, expected, "case {i}");
        let qwk = case["qwk"].as_f64().unwrap();
        assert!(
            (c.quadratic_kappa() - qwk).abs() < 1e-12,
            "case {i}: {} vs {qwk}",
            c.quadratic_kappa()
        );
        assert!(
            (c.accuracy() - case["accuracy_valid"].as_f64().unwrap()).abs() < 1e-12,
            "case {i}"
        );
    }
}

#[test]
fn hard_dice_matches_os_jaccard_based_dice() {
    let f = fixture();
    let seg = &f["segmentation"];
    let mut c = Confusion::new(3);
    // Accumulating in two halves gives the pooled result.
    let (t, p) = (ints(&seg["truth"]), ints(&seg["pred"]));
    let mut half = Confusion::new(3);
    c.add(&t[..2000], &p[..2000]).unwrap();
    half.add(&t[2000..], &p[2000..]).unwrap();
    c.merge(&half);
    let expected: Vec<f64> = seg["dice"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    for (a, b) in c.dice().iter().zip(&expected) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
}

#[test]
fn a_perfect_prediction_has_kappa_and_dice_one() {
    let mut c = Confusion::new(3);
    c.add(&[0, 1, 2, 2], &[0, 1, 2, 2]).unwrap();
    assert_eq!(c.quadratic_kappa(), 1.0);
    assert_eq!(c.dice(), vec![1.0; 3]);
    assert!(c.add(&[0], &[0, 1]).is_err());
}

#[test]
fn a_class_absent_from_truth_and_prediction_has_os_dice_zero_unless_asked_otherwise() {
    use pretext::train::metrics::AbsentClass;
    let case = &fixture()["absent_class"];
    let mut c = Confusion::new(3);
    c.add(&ints(&case["truth"]), &ints(&case["pred"])).unwrap();
    let expected: Vec<f64> = case["dice"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(expected[2], 0.0, "scikit-learn's route");
    for (a, b) in c.dice().iter().zip(&expected) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
    let one = c.dice_with(AbsentClass::One);
    assert_eq!(one[2], 1.0);
    assert_eq!(&one[..2], &c.dice()[..2]);
}

#[test]
fn an_undefined_kappa_is_nan_as_in_scikit_learn_not_zero() {
    let case = &fixture()["undefined_kappa"];
    assert!(case["qwk_is_nan"].as_bool().unwrap());
    let mut c = Confusion::new(5);
    c.add(&ints(&case["truth"]), &ints(&case["pred"])).unwrap();
    assert!(c.quadratic_kappa().is_nan());
    assert!(Confusion::new(5).quadratic_kappa().is_nan(), "no pairs");
}
