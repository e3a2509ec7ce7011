#!/usr/bin/env python3
"""Writes tests/fixtures/metrics/metrics.json: quadratic weighted kappa, confusion matrices and
accuracy from scikit-learn, and per-class hard Dice the way O computes it (sklearn's per-class
Jaccard over pooled voxels, Dice = 2J / (1 + J)), on seeded random labels.

    python scripts/make_metric_fixtures.py      # needs numpy, scikit-learn
"""
import json
import os

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, jaccard_score

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "metrics")


def main():
    rng = np.random.default_rng(0)
    cases = []
    for n, noise in [(50, 0.3), (200, 0.6), (37, 0.0)]:
        truth = rng.integers(0, 5, n)
        pred = np.where(rng.random(n) < noise, rng.integers(-1, 5, n), truth)  # -1: O's undecodable grade
        cases.append(dict(
            truth=truth.tolist(), pred=pred.tolist(),
            qwk=cohen_kappa_score(truth, pred, weights="quadratic", labels=[0, 1, 2, 3, 4]),
            confusion=confusion_matrix(truth, pred, labels=[0, 1, 2, 3, 4]).tolist(),
            accuracy_valid=float(accuracy_score(truth[pred >= 0], pred[pred >= 0])),
        ))
    truth = rng.integers(0, 3, 4000)
    pred = np.where(rng.random(4000) < 0.4, rng.integers(0, 3, 4000), truth)
    j = jaccard_score(truth, pred, labels=[0, 1, 2], average=None)
    seg = dict(truth=truth.tolist(), pred=pred.tolist(), dice=(2 * j / (1 + j)).tolist())
    # A test set without tumour (class 2) in truth and prediction: scikit-learn's Jaccard (and
    # so O's Dice) of that class is 0 (zero_division's default), not 1.
    t2 = rng.integers(0, 2, 300)
    p2 = np.where(rng.random(300) < 0.2, 1 - t2, t2)
    j2 = jaccard_score(t2, p2, labels=[0, 1, 2], average=None, zero_division=0.0)
    absent = dict(truth=t2.tolist(), pred=p2.tolist(), dice=(2 * j2 / (1 + j2)).tolist())
    # Kappa is undefined (scikit-learn: NaN) when truth and prediction are each one class.
    with np.errstate(all="ignore"):
        undefined = dict(truth=[2] * 6, pred=[2] * 6,
                         qwk=cohen_kappa_score([2] * 6, [2] * 6, weights="quadratic", labels=[0, 1, 2, 3, 4]))
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "metrics.json"), "w") as f:
        json.dump(dict(classification=cases, segmentation=seg, absent_class=absent,
                       undefined_kappa=dict(undefined, qwk=None if np.isnan(undefined["qwk"]) else undefined["qwk"],
                                            qwk_is_nan=bool(np.isnan(undefined["qwk"])))), f)
    print("wrote", os.path.join(OUT, "metrics.json"))


if __name__ == "__main__":
    main()
