#!/usr/bin/env python3
"""What independent readers see in files pretext writes (issue 22, item 9): runs
tests/fixtures/readback/write.rhai with the release binary, reads its NIfTI files with nibabel
and its checkpoint with the `safetensors` package, and writes tests/fixtures/readback/expected.json
(shapes, dtypes, zooms, affines, header codes, every voxel; tensor names, shapes, dtypes, sums,
metadata; and a SHA-256 of each file's data, which tests/readback.rs compares with what pretext
writes today).

    cargo build --release && python scripts/make_readback_fixtures.py   # nibabel, safetensors, numpy
"""
import gzip
import hashlib
import json
import os
import subprocess
import tempfile

import nibabel as nib
import numpy as np
from safetensors.numpy import load_file
from safetensors import safe_open

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIX = os.path.join(ROOT, "tests", "fixtures", "readback")


def data_sha256(path):
    """SHA-256 of the file's bytes, decompressed for .gz (the compressed stream may differ
    between zlib versions; the data may not)."""
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".gz"):
        raw = gzip.decompress(raw)
    return hashlib.sha256(raw).hexdigest()


def main():
    out = tempfile.mkdtemp()
    subprocess.run([os.path.join(ROOT, "target", "release", "pretext"), "run",
                    os.path.join(FIX, "write.rhai"), "--set", f"out={out}"], check=True, cwd=ROOT)
    report = {"nifti": {}, "checkpoint": {}}
    for name in ["f32.nii.gz", "i16.nii", "u8.nii.gz"]:
        p = os.path.join(out, name)
        img = nib.load(p)
        h = img.header
        data = np.asanyarray(img.dataobj)
        report["nifti"][name] = {
            "shape": list(img.shape),
            "dtype": str(img.get_data_dtype()),
            "zooms": [float(z) for z in h.get_zooms()],
            "affine": img.affine.tolist(),
            "sform_code": int(h["sform_code"]),
            "qform_code": int(h["qform_code"]),
            # The scaling nibabel applies (it moves scl_slope/scl_inter into the data proxy).
            "slope": float(img.dataobj.slope),
            "inter": float(img.dataobj.inter),
            "xyzt_units": int(h["xyzt_units"]),
            # Voxel [x, y, z] at flat index (x·4 + y)·3 + z, as nibabel indexes.
            "voxels": data.astype(np.float64).ravel(order="C").tolist(),
            "sha256": data_sha256(p),
        }
    p = os.path.join(out, "unet.safetensors")
    tensors = load_file(p)
    with safe_open(p, "np") as f:
        meta = f.metadata()
    report["checkpoint"] = {
        "metadata": meta,
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype), "sum": float(v.astype(np.float64).sum())}
                    for k, v in sorted(tensors.items())},
        "sha256": data_sha256(p),
    }
    with open(os.path.join(FIX, "expected.json"), "w") as fh:
        json.dump(report, fh, indent=1)
        fh.write("\n")
    print(f"{FIX}/expected.json: {len(report['nifti'])} NIfTI files, {len(tensors)} tensors")


if __name__ == "__main__":
    main()
