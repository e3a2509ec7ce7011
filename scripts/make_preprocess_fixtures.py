#!/usr/bin/env python3
"""Writes reference outputs of scikit-image's resize and of the paper's pancreas preprocessing.

The Rust tests (tests/data_preprocess.rs) run pretext's implementation on the same inputs and
compare. Inputs and outputs are small NIfTI files (outputs in float64) plus cases.json:

  * resize_*: `skimage.transform.resize(x, shape, order, preserve_range=True, anti_aliasing)`
    on float64 volumes, down-, up- and mixed-sampling, with and without anti-aliasing, order 0
    and 1; `anti_aliasing: null` means skimage's default.
  * pipeline_*: the original code's preprocessing (HealthML/self-supervised-3d-tasks,
    `nifti_utils.read_scan_find_bbox` + `resize_and_save_nifty.data_generation_pancreas`)
    re-typed here: get_fdata, min-max, bounding box at > 0.05 (end index used as an exclusive
    end), crop, resize order 1 (image and label), then the loader's second min-max and np.rint
    for labels. Variants: the fixed bounding box (end + 1), HU clipping before the min-max,
    nearest-neighbour labels.

And for fundus images (tests/fixtures/fundus): a small RGB PNG and Pillow's resize of it to a
square with LANCZOS (the original code's `kaggle_resizer.py`) and BILINEAR.

Run from the repository root (needs numpy, nibabel, scikit-image, Pillow):

    python scripts/make_preprocess_fixtures.py
"""
import json
import os

import nibabel as nib
import numpy as np
import skimage
from PIL import Image
from skimage.transform import resize

OUT = os.path.join("tests", "fixtures", "preprocess")
FUNDUS = os.path.join("tests", "fixtures", "fundus")


def save(name, arr, dtype=np.float64, spacing=(1.0, 1.0, 1.0)):
    img = nib.Nifti1Image(arr.astype(dtype), np.diag(list(spacing) + [1.0]))
    nib.save(img, os.path.join(OUT, name))
    return name


def smooth_random(rng, shape):
    x = rng.random(shape)
    # a little structure so interpolation errors would show, plus white noise
    grid = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
    return 0.5 * x + 0.5 * np.sin(3 * grid[0] + 2 * grid[1]) * np.cos(4 * grid[2]) ** 2


def norm(x):
    return (x - x.min()) / (x.max() - x.min())


def find_bbox(image, threshold=0.05, fix_end=False):
    """read_scan_find_bbox of the original code (loops over each axis from both ends)."""
    bbox = []
    for axis in range(3):
        moved = np.moveaxis(image, axis, 0)
        st = en = 0
        for i in range(moved.shape[0]):
            if np.any(moved[i] > threshold):
                st = i
                break
        for i in range(moved.shape[0] - 1, -1, -1):
            if np.any(moved[i] > threshold):
                en = i
                break
        bbox += [st, en + 1 if fix_end else en]
    return bbox


def ct_phantom(rng, shape):
    """A small int16 CT-like volume: air with noise, an elliptic body, two organs, bone."""
    i, j, k = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    cx, cy, cz = [(s - 1) / 2 for s in shape]
    x = rng.normal(-1000, 8, size=shape)
    body = ((i - cx - 1.5) / (0.36 * shape[0])) ** 2 + ((j - cy) / (0.3 * shape[1])) ** 2 < 1
    body &= np.abs(k - cz) < 0.42 * shape[2]
    x[body] = rng.normal(40, 15, size=body.sum())
    organ = ((i - cx + 4) / 6) ** 2 + ((j - cy + 2) / 5) ** 2 + ((k - cz) / 5) ** 2 < 1
    x[organ] = rng.normal(110, 15, size=organ.sum())
    tumour = ((i - cx + 5) / 2.5) ** 2 + ((j - cy + 2) / 2) ** 2 + ((k - cz) / 2) ** 2 < 1
    x[tumour] = rng.normal(70, 15, size=tumour.sum())
    bone = ((i - cx - 2) / 3) ** 2 + ((j - cy - 7) / 3) ** 2 < 1
    bone &= body
    x[bone] = rng.normal(700, 40, size=bone.sum())
    label = np.zeros(shape, np.uint8)
    label[organ] = 1
    label[tumour] = 2
    return np.clip(np.round(x), -1024, 3071).astype(np.int16), label


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(7)
    cases = []

    inputs = {
        "a": smooth_random(rng, (20, 17, 11)),
        "b": smooth_random(rng, (5, 6, 4)),
        "c": smooth_random(rng, (7, 30, 3)),
    }
    for key, arr in inputs.items():
        save(f"in_{key}.nii.gz", arr)
    specs = [
        ("resize_down", "a", (8, 9, 7), 1, None),
        ("resize_down_no_aa", "a", (8, 9, 7), 1, False),
        ("resize_mixed", "b", (9, 13, 3), 1, None),
        ("resize_up", "b", (9, 13, 7), 1, None),
        ("resize_extreme", "c", (1, 4, 5), 1, None),
        ("resize_nearest_down", "a", (8, 9, 7), 0, False),
        ("resize_nearest_up", "b", (9, 13, 7), 0, False),
    ]
    for name, key, shape, order, aa in specs:
        out = resize(inputs[key], shape, order=order, preserve_range=True, anti_aliasing=aa)
        cases.append({
            "name": name,
            "input": f"in_{key}.nii.gz",
            "output": save(f"{name}.nii.gz", out),
            "shape": list(shape),
            "order": order,
            "anti_aliasing": aa,
        })

    ct, label = ct_phantom(np.random.default_rng(3), (48, 40, 24))
    spacing = (0.8, 0.8, 2.5)
    save("ct.nii.gz", ct, np.int16, spacing)
    save("ct_label.nii.gz", label, np.uint8, spacing)
    target = (16, 12, 10)
    pipelines = []
    for name, fix_end, clip, nearest in [
        ("pipeline_original", False, None, False),
        ("pipeline_fixed_bbox", True, None, False),
        ("pipeline_hu_clip", False, (-200.0, 300.0), False),
        ("pipeline_nearest_labels", False, None, True),
    ]:
        x = nib.load(os.path.join(OUT, "ct.nii.gz")).get_fdata()
        y = nib.load(os.path.join(OUT, "ct_label.nii.gz")).get_fdata()
        if clip is not None:
            x = np.clip(x, *clip)
        x = norm(x)
        bb = find_bbox(x, 0.05, fix_end)
        crop = (slice(bb[0], bb[1]), slice(bb[2], bb[3]), slice(bb[4], bb[5]))
        resized = resize(x[crop], target, order=1, preserve_range=True)
        if nearest:
            lab_f = resize(y[crop], target, order=0, preserve_range=True, anti_aliasing=False)
        else:
            lab_f = resize(y[crop], target, order=1, preserve_range=True)
        pipelines.append({
            "name": name,
            "off_by_one": not fix_end,
            "clip": list(clip) if clip else None,
            "label_interp": "nearest" if nearest else "linear",
            "bbox": bb,
            "resized": save(f"{name}_resized.nii.gz", resized),
            "image": save(f"{name}_image.nii.gz", norm(resized)),
            "label_float": save(f"{name}_label_float.nii.gz", lab_f),
            "label": save(f"{name}_label.nii.gz", np.rint(lab_f), np.uint8),
        })

    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({
            "skimage": skimage.__version__,
            "nibabel": nib.__version__,
            "resize": cases,
            "pipeline": {
                "image": "ct.nii.gz",
                "label": "ct_label.nii.gz",
                "shape": list(target),
                "threshold": 0.05,
                "variants": pipelines,
            },
        }, f, indent=1)
    print(f"wrote {len(cases)} resize cases and {len(pipelines)} pipeline variants to {OUT}")
    fundus_fixtures()


def fundus_fixtures():
    """A 150x130 fundus-like RGB image (disc, vessels, dots) and PIL's resizes of it."""
    os.makedirs(FUNDUS, exist_ok=True)
    h, w = 130, 150
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = np.hypot(xx - w / 2, yy - h / 2)
    rgb = np.zeros((h, w, 3))
    inside = r < 60
    rgb[inside] = [190, 80, 40]
    rgb[np.hypot(xx - 100, yy - 60) < 10] = [250, 220, 150]
    for k in range(6):
        band = np.abs(np.sin(0.05 * xx + k) * 30 + 65 - yy + 5 * k) < 1.5
        rgb[band & inside] = [120, 20, 20]
    rng = np.random.default_rng(1)
    rgb += rng.normal(0, 6, rgb.shape) * inside[..., None]
    src = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    src.save(os.path.join(FUNDUS, "input.png"))
    cases = []
    for name, flt, size in [("lanczos", Image.LANCZOS, 37), ("lanczos", Image.LANCZOS, 64),
                            ("triangle", Image.BILINEAR, 37)]:
        out = f"{name}_{size}.png"
        src.resize((size, size), flt).save(os.path.join(FUNDUS, out))
        cases.append({"filter": name, "size": size, "output": out})
    import PIL
    with open(os.path.join(FUNDUS, "cases.json"), "w") as f:
        json.dump({"pillow": PIL.__version__, "input": "input.png", "cases": cases}, f, indent=1)
    print(f"wrote {len(cases)} fundus cases to {FUNDUS}")


if __name__ == "__main__":
    main()
