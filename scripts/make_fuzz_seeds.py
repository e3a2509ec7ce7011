#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets (fuzz/seeds/<target>/), small valid files made
with independent tools: NIfTI-1 with nibabel, PNG/JPEG with Pillow, safetensors with the
safetensors package. Run from the repository root:

    python scripts/make_fuzz_seeds.py      # needs numpy, nibabel, Pillow, safetensors
"""
import gzip
import io
import json
import os

import nibabel as nib
import numpy as np
from PIL import Image
from safetensors.numpy import save as st_save

OUT = os.path.join("fuzz", "seeds")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def nifti_bytes(img):
    bio = io.BytesIO()
    fm = img.make_file_map({"image": bio, "header": bio})
    img.to_file_map(fm)
    return bio.getvalue()


def niftis():
    rng = np.random.default_rng(0)
    out = {}
    a = rng.integers(0, 255, size=(3, 4, 2)).astype(np.uint8)
    out["u8.nii"] = nifti_bytes(nib.Nifti1Image(a, np.diag([1.5, 1.5, 3.0, 1.0])))
    b = rng.integers(-1000, 2000, size=(2, 3, 2)).astype(np.int16)
    img = nib.Nifti1Image(b, np.eye(4))
    img.header.set_slope_inter(0.5, -10.0)
    out["i16_scaled.nii"] = nifti_bytes(img)
    c = rng.normal(size=(2, 2, 2, 2)).astype(">f4")
    img = nib.Nifti1Image(c, None)
    img.set_qform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
    img.set_sform(None, code=0)
    out["f32_be_4d_qform.nii"] = nifti_bytes(img)
    d = rng.normal(size=(3, 2, 2)).astype(np.float64)
    img = nib.Nifti1Image(d, np.eye(4))
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"pretext fuzz seed"))
    out["f64_extension.nii"] = nifti_bytes(img)
    e = np.arange(6, dtype=np.uint16).reshape(6)
    out["u16_1d.nii"] = nifti_bytes(nib.Nifti1Image(e, np.eye(4)))
    return out


def images():
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 255, size=(8, 10, 3)).astype(np.uint8), "RGB")
    grey = rgb.convert("L")
    out = {}

    def save(img, fmt, **kw):
        bio = io.BytesIO()
        img.save(bio, fmt, **kw)
        return bio.getvalue()

    out["rgb.png"] = save(rgb, "PNG")
    out["grey.png"] = save(grey, "PNG")
    out["palette.png"] = save(rgb.convert("P"), "PNG")
    out["rgba_interlaced.png"] = save(rgb.convert("RGBA"), "PNG", interlace=1)
    out["grey16.png"] = save(Image.fromarray((np.arange(48).reshape(6, 8) * 1000).astype(np.uint16)), "PNG")
    out["rgb.jpg"] = save(rgb, "JPEG", quality=90)
    out["grey.jpg"] = save(grey, "JPEG", quality=75)
    out["progressive.jpg"] = save(rgb, "JPEG", progressive=True, subsampling=2)
    return out


def datasets():
    full = {
        "name": "Pancreas",
        "labels": {"0": "background", "1": "pancreas", "2": "cancer"},
        "modality": {"0": "CT"},
        "numTraining": 2,
        "numTest": 1,
        "training": [
            {"image": "./imagesTr/pancreas_001.nii.gz", "label": "./labelsTr/pancreas_001.nii.gz"},
            {"image": "./imagesTr/pancreas_004.nii.gz", "label": "./labelsTr/pancreas_004.nii.gz"},
        ],
        "test": ["./imagesTs/pancreas_002.nii.gz"],
    }
    small = {"training": [{"image": "imagesTr/a.nii", "label": "labelsTr/a.nii"}],
             "test": [{"image": "imagesTs/b.nii"}]}
    return {"msd.json": json.dumps(full, indent=1).encode(), "small.json": json.dumps(small).encode()}


def csvs():
    return {
        "train.csv": b"id_code,diagnosis\n000c1434d8d7,2\n001639a390f0,4\n0024cdab0c1e,1\n",
        "reordered.csv": b"diagnosis,extra,id_code\n0,x,abc\n3,\"y,z\",def\n",
    }


def checkpoints():
    rng = np.random.default_rng(2)
    manifest = json.dumps({"arch": "unet3d", "task": "rotation", "seed": 0})
    full = {
        "encoder.conv.weight": rng.normal(size=(2, 1, 3, 3)).astype(np.float32),
        "encoder.conv.bias": np.zeros(2, np.float32),
        "encoder.bn.running_mean": np.ones(2, np.float64),
        "head.weight": rng.normal(size=(3, 4)).astype(np.float16),
        "extra.steps": np.array([7], np.int64),
    }
    ddp = {"module." + k: v for k, v in full.items() if k.startswith("encoder.")}
    return {
        "store.safetensors": st_save(full, metadata={"pretext": manifest}),
        "ddp.safetensors": st_save(ddp, metadata={"pretext": manifest}),
        "bare.safetensors": st_save({"x": np.zeros((1,), np.uint8)}),
    }


def main():
    nii = niftis()
    for name, b in nii.items():
        put("nifti", name, b)
        put("nifti", name + ".gz", gzip.compress(b, mtime=0))
        put("nifti_gz", name, b)
    for name, b in images().items():
        put("image", name, b)
    for name, b in datasets().items():
        put("dataset_json", name, b)
    for name, b in csvs().items():
        put("aptos_csv", name, b)
    for name, b in checkpoints().items():
        put("checkpoint", name, b)


if __name__ == "__main__":
    main()
