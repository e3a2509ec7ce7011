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

/// O's scoring of decoded grades (`score_kappa_kaggle`: scikit-learn with `labels=[0..4]`): the
/// undecodable −1 predictions are counted, and left out of the kappa and the accuracy. The
/// fixture's kappa and accuracy come from scikit-learn on the same vectors, the count from the
/// vectors themselves.
#[test]
fn undecodable_grades_are_counted_and_left_out_as_o_does() {
    use pretext::train::metrics::grade_scores;
    let f = fixture();
    let mut total_undecodable = 0;
    for (i, case) in f["classification"].as_array().unwrap().iter().enumerate() {
        let (t, p) = (ints(&case["truth"]), ints(&case["pred"]));
        let s = grade_scores(&t, &p, 5).unwrap();
        let minus_one = p.iter().filter(|&&x| x == -1).count();
        assert_eq!(s.undecodable, minus_one, "case {i}");
        assert_eq!(s.scored + s.undecodable, p.len(), "case {i}");
        assert!(
            (s.qwk - case["qwk"].as_f64().unwrap()).abs() < 1e-12,
            "case {i}"
        );
        assert!(
            (s.accuracy - case["accuracy_valid"].as_f64().unwrap()).abs() < 1e-12,
            "case {i}"
        );
        total_undecodable += minus_one;
    }
    assert!(total_undecodable > 0, "the fixture has undecodable grades");
    assert!(
        grade_scores(&[5], &[0], 5).is_err(),
        "a true grade outside 0..5"
    );
}

/// O's decoding (`sum(sigmoid > 0.5) − 1`) on hand-made logits, then O's scoring: a row with no
/// output above 0.5 is −1, counted and left out; non-monotone bits count as they are.
#[test]
fn cumulative_decoding_then_scoring_follows_os_definition() {
    use candle_core::{Device, Tensor};
    use pretext::train::finetune::decode_cumulative;
    use pretext::train::metrics::grade_scores;
    let rows: [[f32; 5]; 5] = [
        [-3.0, -3.0, -3.0, -3.0, -3.0], // none above 0.5: −1
        [3.0, 3.0, -3.0, -3.0, -3.0],   // grade 1
        [3.0, -3.0, 3.0, -3.0, -3.0],   // non-monotone: two above, grade 1
        [3.0, 3.0, 3.0, 3.0, 3.0],      // grade 4
        [-0.1, -3.0, -3.0, -3.0, -3.0], // sigmoid 0.475: −1
    ];
    let logits = Tensor::from_vec(
        rows.iter().flatten().copied().collect::<Vec<_>>(),
        (5, 5),
        &Device::Cpu,
    )
    .unwrap();
    let pred = decode_cumulative(&logits).unwrap();
    assert_eq!(pred, vec![-1, 1, 1, 4, -1]);
    let truth = [0, 1, 2, 4, 3];
    let s = grade_scores(&truth, &pred, 5).unwrap();
    assert_eq!((s.undecodable, s.scored), (2, 3));
    // The three decodable pairs (1,1), (2,1), (4,4): two of three correct.
    assert!((s.accuracy - 2.0 / 3.0).abs() < 1e-15);
    let mut c = Confusion::new(5);
    c.add(&[1, 2, 4], &[1, 1, 4]).unwrap();
    assert_eq!(s.confusion, c);
    assert_eq!(s.qwk.to_bits(), c.quadratic_kappa().to_bits());
}
