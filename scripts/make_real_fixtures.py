#!/usr/bin/env python3
"""Records what nibabel, scikit-image and Pillow make of the real sample files.

Run scripts/fetch-sample-data.sh first (it puts the files in data/samples/), then, from the
repository root (needs numpy, nibabel, scikit-image, Pillow):

    python scripts/make_real_fixtures.py

writes tests/fixtures/real/expected.json, which tests/data_real.rs compares with pretext:
  * per NIfTI file: what nibabel reads (shape, dtype, zooms, affine, sum of get_fdata(), a few
    voxels), or that nibabel reads it as NIfTI-2 (pretext reads NIfTI-1 only);
  * the MNI152 T1 through the original code's pancreas preprocessing (to 48x56x44), with a
    3-class label from the grey/white-matter maps (1 where GM >= 128, 2 where WM >= 128);
  * retina.jpg as Pillow decodes it and its LANCZOS resize to 224x224 (8x8 block means).
"""
import json
import os

import nibabel as nib
import numpy as np
import PIL
from PIL import Image
from skimage.transform import resize

SAMPLES = os.environ.get("PRETEXT_SAMPLES", os.path.join("data", "samples"))
OUT = os.path.join("tests", "fixtures", "real")
MNI = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def nifti(name):
    img = nib.load(os.path.join(SAMPLES, name))
    if isinstance(img, nib.Nifti2Image):
        return {"file": name, "nifti2": True}
    data = img.get_fdata()
    rng = np.random.default_rng(0)
    idx = [tuple(int(rng.integers(0, s)) for s in data.shape) for _ in range(12)]
    return {
        "file": name,
        "nifti2": False,
        "shape": list(data.shape),
        "dtype": str(img.get_data_dtype().newbyteorder("=")),
        "zooms": [float(z) for z in img.header.get_zooms()[:3]],
        "affine": img.affine.tolist(),
        "sum": float(data.sum()),
        "voxels": [{"index": list(i), "value": float(data[i])} for i in idx],
    }


def norm(x):
    return (x - x.min()) / (x.max() - x.min())


def bbox(image, threshold=0.05):
    """read_scan_find_bbox of the original code: first/last slice with a voxel > threshold."""
    out = []
    for axis in range(3):
        hit = np.any(np.moveaxis(image, axis, 0) > threshold, axis=(1, 2))
        first = int(np.argmax(hit))
        last = int(len(hit) - 1 - np.argmax(hit[::-1]))
        out += [first, last]
    return out


def mni_pipeline(target):
    t1 = nib.load(os.path.join(SAMPLES, MNI.format("t1"))).get_fdata()
    gm = nib.load(os.path.join(SAMPLES, MNI.format("gm"))).get_fdata()
    wm = nib.load(os.path.join(SAMPLES, MNI.format("wm"))).get_fdata()
    label = np.zeros(t1.shape)
    label[gm >= 128] = 1
    label[wm >= 128] = 2
    x = norm(t1)
    bb = bbox(x)
    crop = (slice(bb[0], bb[1]), slice(bb[2], bb[3]), slice(bb[4], bb[5]))
    image = norm(resize(x[crop], target, order=1, preserve_range=True))
    lab = np.rint(resize(label[crop], target, order=1, preserve_range=True))
    rng = np.random.default_rng(1)
    idx = [tuple(int(rng.integers(0, s)) for s in target) for _ in range(16)]
    return {
        "shape": list(target),
        "bbox": bb,
        "label_counts_full": [int((label == c).sum()) for c in range(3)],
        "image_sum": float(image.sum()),
        "image_voxels": [{"index": list(i), "value": float(image[i])} for i in idx],
        "label_counts": [int((lab == c).sum()) for c in range(3)],
    }


def retina():
    img = Image.open(os.path.join(SAMPLES, "retina.jpg")).convert("RGB")
    full = np.asarray(img, dtype=np.float64)
    small = np.asarray(img.resize((224, 224), Image.LANCZOS), dtype=np.float64)
    blocks = small.reshape(8, 28, 8, 28, 3).mean(axis=(1, 3))
    return {
        "file": "retina.jpg",
        "size": [img.width, img.height],
        "mean": full.mean(axis=(0, 1)).tolist(),
        "resized_224_block_means": blocks.tolist(),
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    names = [MNI.format("t1"), MNI.format("gm"), MNI.format("wm"), "example4d.nii.gz",
             "anatomical.nii", "functional.nii", "standard.nii.gz", "example_nifti2.nii.gz"]
    expected = {
        "nibabel": nib.__version__,
        "pillow": PIL.__version__,
        "nifti": [nifti(n) for n in names],
        "mni_pipeline": mni_pipeline((48, 56, 44)),
        "retina": retina(),
    }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    print(f"wrote {OUT}/expected.json")


if __name__ == "__main__":
    main()
