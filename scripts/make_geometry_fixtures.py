#!/usr/bin/env python3
"""A synthetic CT case in an oblique, flipped geometry, and what nibabel reads from it, for the
test that predictions come back in the original image's geometry (tests/predict.rs).

    python scripts/make_geometry_fixtures.py                 # needs numpy and nibabel
    python scripts/make_geometry_fixtures.py --check P.nii.gz [P2.nii.gz ...]

The first form writes tests/fixtures/geometry/:
  images/ct_001.nii.gz   int16 with scl_slope 1, scl_inter -1024, qform (code 1) and sform
                         (code 2) both set to an oblique affine (15 degrees about z, x and y
                         flipped, 0.8 x 0.9 x 2.5 mm), 40 x 36 x 18 voxels: air, a body, an
                         organ (label 1, 120 HU) and a lesion in it (label 2, 60 HU)
  labels/ct_001.nii.gz   uint8 labels, same geometry
  expected.json          nibabel's view: shape, zooms, affine, qform, sform and their codes,
                         numpy's 0.5/99.5 percentiles of the HU values, and per label the
                         voxel count and the world-space centroid (mm)

The second form checks label maps that pretext wrote for this case (e.g. by the test, kept with
PRETEXT_KEEP=DIR) the way a user's tools would see them: nibabel must read the source's shape
and affine (and qform), uint8 values, and each label's world centroid within 2 mm of the
truth's.
"""
import json
import os
import sys

import nibabel as nib
import numpy as np

OUT = os.path.join("tests", "fixtures", "geometry")
SHAPE = (40, 36, 18)


def affine():
    t = np.deg2rad(15.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([-1.0, -1.0, 1.0]) @ np.diag([0.8, 0.9, 2.5])
    a[:3, 3] = [100.5, -80.25, -30.0]
    return a


def phantom():
    i, j, k = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in SHAPE], indexing="ij")
    hu = np.full(SHAPE, -1000.0)
    # The body: an elliptic cylinder along z, slices 2..15.
    body = ((i - 20) / 15.0) ** 2 + ((j - 17) / 13.0) ** 2 <= 1.0
    body &= (k >= 2) & (k <= 15)
    rng = np.random.default_rng(7)
    hu[body] = 20.0 + rng.normal(0, 8, size=body.sum())
    # The organ: an off-centre ellipsoid; the lesion: a sphere inside it.
    organ = ((i - 25) / 7.0) ** 2 + ((j - 14) / 6.0) ** 2 + ((k - 9) / 3.5) ** 2 <= 1.0
    lesion = ((i - 27) / 3.2) ** 2 + ((j - 13) / 2.9) ** 2 + ((k - 9) / 1.3) ** 2 <= 1.0
    hu[organ] = 120.0
    hu[lesion] = 60.0
    label = np.zeros(SHAPE, np.uint8)
    label[organ] = 1
    label[lesion] = 2
    return hu, label


def centroids(label, aff):
    out = {}
    for v in sorted(int(x) for x in np.unique(label) if x > 0):
        idx = np.argwhere(label == v).mean(axis=0)
        out[str(v)] = {
            "count": int((label == v).sum()),
            "world": (aff[:3, :3] @ idx + aff[:3, 3]).tolist(),
        }
    return out


def write():
    os.makedirs(os.path.join(OUT, "images"), exist_ok=True)
    os.makedirs(os.path.join(OUT, "labels"), exist_ok=True)
    hu, label = phantom()
    a = affine()
    raw = np.round(hu + 1024).astype(np.int16)
    img = nib.Nifti1Image(raw, None)
    img.set_qform(a, code=1)
    img.set_sform(a, code=2)
    img.header.set_slope_inter(1.0, -1024.0)
    p = os.path.join(OUT, "images", "ct_001.nii.gz")
    nib.save(img, p)
    lab = nib.Nifti1Image(label, None)
    lab.set_qform(a, code=1)
    lab.set_sform(a, code=2)
    nib.save(lab, os.path.join(OUT, "labels", "ct_001.nii.gz"))
    back = nib.load(p)
    data = back.get_fdata()
    expected = {
        "nibabel": nib.__version__,
        "shape": list(data.shape),
        "zooms": [float(z) for z in back.header.get_zooms()],
        "affine": back.affine.tolist(),
        "qform": back.get_qform().tolist(),
        "qform_code": int(back.header["qform_code"]),
        "sform": back.get_sform().tolist(),
        "sform_code": int(back.header["sform_code"]),
        "percentiles": [float(x) for x in np.percentile(data, [0.5, 99.5])],
        "min": float(data.min()),
        "max": float(data.max()),
        "labels": centroids(np.asarray(nib.load(os.path.join(OUT, "labels", "ct_001.nii.gz")).dataobj), back.affine),
    }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    print(f"wrote {OUT}: {SHAPE}, labels {expected['labels']}")


def check(paths):
    src = nib.load(os.path.join(OUT, "images", "ct_001.nii.gz"))
    truth = np.asarray(nib.load(os.path.join(OUT, "labels", "ct_001.nii.gz")).dataobj)
    want = centroids(truth, src.affine)
    bad = 0
    for p in paths:
        img = nib.load(p)
        pred = np.asarray(img.dataobj)
        problems = []
        if pred.shape != src.shape:
            problems.append(f"shape {pred.shape} != source {src.shape}")
        if not np.allclose(img.affine, src.affine, atol=1e-4):
            problems.append(f"affine\n{img.affine}\n!= source\n{src.affine}")
        if not np.allclose(img.get_qform(), src.get_qform(), atol=1e-4):
            problems.append("qform differs from the source's")
        if img.get_data_dtype() != np.uint8:
            problems.append(f"dtype {img.get_data_dtype()}")
        got = centroids(pred, img.affine) if not problems else {}
        for v, c in want.items():
            if v not in got:
                problems.append(f"label {v} missing")
                continue
            d = float(np.linalg.norm(np.array(got[v]["world"]) - np.array(c["world"])))
            inter = float(((pred == int(v)) & (truth == int(v))).sum())
            dice = 2 * inter / (got[v]["count"] + c["count"])
            print(f"{p}: label {v}: centroid {d:.2f} mm from the truth's, Dice {dice:.3f}")
            if d > 2.0:
                problems.append(f"label {v} centroid {d:.2f} mm away")
        print(f"{p}: {'ok' if not problems else 'PROBLEMS: ' + '; '.join(problems)}")
        bad += bool(problems)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--check":
        check(sys.argv[2:])
    else:
        write()
