#!/usr/bin/env python3
"""Writes small NIfTI files with nibabel, plus what nibabel reads back from them.

The Rust tests (tests/nifti.rs) load each file with pretext's reader and compare with
expected.json: shape, zooms, the affine nibabel reports (img.affine), the sum of
get_fdata() and a few voxel values by index. Run from the repository root:

    python scripts/make_nifti_fixtures.py        # needs numpy and nibabel
"""
import json
import os

import nibabel as nib
import numpy as np

OUT = os.path.join("tests", "fixtures", "nifti")


def record(path, img):
    img = nib.load(path)  # read back what was written, as a user would
    data = img.get_fdata()
    rng = np.random.default_rng(0)
    idx = [tuple(int(rng.integers(0, s)) for s in data.shape) for _ in range(8)]
    return {
        "file": os.path.basename(path),
        "shape": list(data.shape),
        "dtype": str(img.get_data_dtype()),
        "zooms": [float(z) for z in img.header.get_zooms()[:3]],
        "affine": img.affine.tolist(),
        "sum": float(data.sum()),
        "voxels": [{"index": list(i), "value": float(data[i])} for i in idx],
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(42)
    cases = []

    # 1. int16 CT-like volume with scl_slope/scl_inter and an oblique sform, gzipped.
    ct = rng.integers(-1024, 2000, size=(7, 6, 5)).astype(np.int16)
    aff = np.array([[0.7, 0.1, 0.0, -90.0], [-0.05, 0.8, 0.0, 120.5], [0.0, 0.0, 2.5, -40.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(ct, aff)
    img.header.set_slope_inter(0.5, -10.0)
    p = os.path.join(OUT, "ct_i16_scaled.nii.gz")
    nib.save(img, p)
    cases.append(record(p, img))

    # 2. qform only (sform code 0), uint8, uncompressed, with a rotation quaternion.
    u8 = rng.integers(0, 255, size=(5, 4, 3)).astype(np.uint8)
    theta = np.deg2rad(30)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([1.5, 1.5, 3.0])
    aff[:3, 3] = [10.0, -20.0, 30.0]
    img = nib.Nifti1Image(u8, None)
    img.set_qform(aff, code=1)
    img.set_sform(None, code=0)
    p = os.path.join(OUT, "qform_u8.nii")
    nib.save(img, p)
    cases.append(record(p, img))

    # 3. float64 4D volume, no orientation codes at all (nibabel's centred base affine).
    f64 = rng.normal(size=(4, 3, 2, 2))
    img = nib.Nifti1Image(f64, None)
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    img.header.set_zooms((2.0, 3.0, 4.0, 1.0))
    p = os.path.join(OUT, "nocode_f64_4d.nii.gz")
    nib.save(img, p)
    cases.append(record(p, img))

    # 4. float32 labels 0/1/2 with a plain diagonal sform.
    lab = rng.integers(0, 3, size=(6, 6, 4)).astype(np.float32)
    img = nib.Nifti1Image(lab, np.diag([0.8, 0.8, 2.0, 1.0]))
    p = os.path.join(OUT, "labels_f32.nii.gz")
    nib.save(img, p)
    cases.append(record(p, img))

    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump({"nibabel": nib.__version__, "cases": cases}, f, indent=1)
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
