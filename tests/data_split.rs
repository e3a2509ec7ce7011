//! Splits: seeded train/test, nested fractions, the original code's fraction and strided
//! cross-validation splits, seeded K-fold, saving.

use std::collections::{BTreeMap, HashSet};

use pretext::data::split::{
    fraction_size, kfold, nested_fractions, original_fraction, save_splits, strided_folds,
    train_test,
};

fn sorted(mut v: Vec<usize>) -> Vec<usize> {
    v.sort_unstable();
    v
}

#[test]
fn a_train_test_split_is_a_seeded_partition() {
    let a = train_test(20, 0.25, 7).unwrap();
    assert_eq!(a.test.len(), 5);
    assert_eq!(
        sorted([a.train.clone(), a.test.clone()].concat()),
        (0..20).collect::<Vec<_>>()
    );
    assert_eq!(a, train_test(20, 0.25, 7).unwrap(), "same seed, same split");
    assert_ne!(
        a.test,
        train_test(20, 0.25, 8).unwrap().test,
        "another seed"
    );
    assert_eq!(
        train_test(3, 0.01, 0).unwrap().test.len(),
        1,
        "at least one test case"
    );
    assert_eq!(
        train_test(3, 0.9, 0).unwrap().train.len(),
        1,
        "at least one training case"
    );
    let e = train_test(10, 1.0, 0).unwrap_err().to_string();
    assert!(e.contains("test_frac"), "{e}");
}

#[test]
fn label_fractions_are_nested_prefixes_of_one_permutation() {
    let cases: Vec<usize> = (100..367).collect(); // 267 cases, as the student's split
    let fr = [0.05, 0.1, 0.25, 0.5, 1.0];
    let sets = nested_fractions(&cases, &fr, 42).unwrap();
    let sizes: Vec<usize> = sets.iter().map(|s| s.len()).collect();
    assert_eq!(sizes, vec![13, 27, 67, 134, 267]);
    for w in sets.windows(2) {
        assert_eq!(
            w[0][..],
            w[1][..w[0].len()],
            "smaller fractions are prefixes"
        );
    }
    assert_eq!(sorted(sets[4].clone()), cases);
    assert_eq!(sets, nested_fractions(&cases, &fr, 42).unwrap());
    assert_ne!(sets[0], nested_fractions(&cases, &fr, 43).unwrap()[0]);
    // Never fewer than one case.
    assert_eq!(
        nested_fractions(&[5, 6, 7], &[0.05], 0).unwrap()[0].len(),
        1
    );
    assert_eq!(fraction_size(4, 0.1).unwrap(), 1);
    let e = nested_fractions(&cases, &[0.0], 0).unwrap_err().to_string();
    assert!(e.contains("fraction"), "{e}");
}

#[test]
fn the_original_fraction_split_truncates_like_the_original_code() {
    let cases: Vec<usize> = (0..100).collect();
    let s = original_fraction(&cases, 0.5, 0.05).unwrap();
    assert_eq!(s.train, (0..47).collect::<Vec<_>>()); // int(100 * 0.5 * 0.95)
    assert_eq!(s.val, (47..52).collect::<Vec<_>>()); // int(100 * 0.05)
    let s = original_fraction(&cases, 1.0, 0.05).unwrap();
    assert_eq!((s.train.len(), s.val.len()), (95, 5));
    let tiny = original_fraction(&[3, 4], 0.05, 0.05).unwrap();
    assert_eq!(tiny.train, vec![3], "at least one training case");
}

#[test]
fn strided_folds_test_on_every_kth_case_and_train_on_the_other_chunks() {
    let cases: Vec<usize> = (0..23).collect();
    let folds = strided_folds(&cases, 5, 1.0, 0.05).unwrap();
    assert_eq!(folds.len(), 5);
    assert_eq!(folds[0].test, vec![0, 5, 10, 15, 20]);
    assert_eq!(folds[3].test, vec![3, 8, 13, 18]);
    // Fold 0: the other chunks in order, 18 cases; train int(18 * 0.95) = 17, val 0.
    assert_eq!(folds[0].train[..6], [1, 6, 11, 16, 21, 2]);
    assert_eq!((folds[0].train.len(), folds[0].val.len()), (17, 0));
    let tests: Vec<usize> = folds.iter().flat_map(|f| f.test.clone()).collect();
    assert_eq!(sorted(tests), cases, "the test chunks partition the cases");
    for f in &folds {
        let t: HashSet<_> = f.test.iter().collect();
        assert!(f.train.iter().chain(&f.val).all(|c| !t.contains(c)));
    }
    let half = strided_folds(&cases, 5, 0.5, 0.05).unwrap();
    assert_eq!(
        half[0].train,
        folds[0].train[..8],
        "nested: int(18 * 0.5 * 0.95) = 8"
    );
    let e = strided_folds(&cases, 1, 1.0, 0.05).unwrap_err().to_string();
    assert!(e.contains('k'), "{e}");
}

#[test]
fn kfold_partitions_a_seeded_permutation_like_scikit_learn() {
    let folds = kfold(10, 3, 1).unwrap();
    let sizes: Vec<usize> = folds.iter().map(|f| f.test.len()).collect();
    assert_eq!(sizes, vec![4, 3, 3]);
    let all: Vec<usize> = folds.iter().flat_map(|f| f.test.clone()).collect();
    assert_eq!(sorted(all), (0..10).collect::<Vec<_>>());
    for f in &folds {
        assert_eq!(f.train.len() + f.test.len(), 10);
        assert!(f.train.iter().all(|c| !f.test.contains(c)));
    }
    assert_eq!(folds, kfold(10, 3, 1).unwrap());
    assert_ne!(folds[0].test, kfold(10, 3, 2).unwrap()[0].test);
    assert!(kfold(3, 5, 0).is_err());
}

#[test]
fn saved_splits_read_back_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = BTreeMap::new();
    m.insert(
        "train".to_string(),
        vec!["case_001".to_string(), "case_007".into()],
    );
    m.insert("test".to_string(), vec!["case_002".to_string()]);
    let path = save_splits(&dir.path().join("run"), &m).unwrap();
    let back: BTreeMap<String, Vec<String>> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(back, m);
}
