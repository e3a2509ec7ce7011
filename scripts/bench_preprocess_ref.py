#!/usr/bin/env python3
"""Times the original code's pancreas preprocessing of one CT with numpy/scipy/scikit-image.

The reference for `pretext bench preprocess`: the same steps on the same file, as the original
code (HealthML/self-supervised-3d-tasks) does them: get_fdata (float64), min-max, the bounding
box of voxels > 0.05 (loops over slices from both ends, end index used as an exclusive end),
crop, skimage resize to 128^3 (order 1, preserve_range, default anti-aliasing), min-max again.

    pretext data synth pancreas --out /tmp/ct --n 1 --shape 512,512,100
    python scripts/bench_preprocess_ref.py /tmp/ct/imagesTr/case_000.nii.gz --out /tmp/ref.nii.gz
    pretext bench preprocess /tmp/ct/imagesTr/case_000.nii.gz --reps 5 --reference /tmp/ref.nii.gz

Reading the file is timed separately; the preprocessing time is the minimum and median over
--repeat runs. numpy/scipy run single-threaded here (these steps do not use BLAS threads).
"""
import argparse
import os
import time

import nibabel as nib
import numpy as np
import scipy
import skimage
from skimage.transform import resize


def norm(x):
    return (x - np.min(x)) / (np.max(x) - np.min(x))


def read_scan_find_bbox(image, threshold=0.05):
    st_x = en_x = st_y = en_y = st_z = en_z = 0
    for x in range(image.shape[0]):
        if np.any(image[x, :, :] > threshold):
            st_x = x
            break
    for x in range(image.shape[0] - 1, -1, -1):
        if np.any(image[x, :, :] > threshold):
            en_x = x
            break
    for y in range(image.shape[1]):
        if np.any(image[:, y, :] > threshold):
            st_y = y
            break
    for y in range(image.shape[1] - 1, -1, -1):
        if np.any(image[:, y, :] > threshold):
            en_y = y
            break
    for z in range(image.shape[2]):
        if np.any(image[:, :, z] > threshold):
            st_z = z
            break
    for z in range(image.shape[2] - 1, -1, -1):
        if np.any(image[:, :, z] > threshold):
            en_z = z
            break
    return [st_x, en_x, st_y, en_y, st_z, en_z]


def preprocess(raw, shape):
    x = norm(raw)
    b = read_scan_find_bbox(x)
    x = x[b[0]:b[1], b[2]:b[3], b[4]:b[5]]
    x = resize(x, shape, order=1, preserve_range=True)
    return norm(x), b


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="a NIfTI CT file")
    ap.add_argument("--target", default="128,128,128")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", help="write the result as a float32 NIfTI file")
    a = ap.parse_args()
    shape = tuple(int(s) for s in a.target.split(","))
    t = time.perf_counter()
    raw = nib.load(a.input).get_fdata()
    print(f"input: {a.input}, {raw.shape}, read in {time.perf_counter() - t:.3f} s")
    times = []
    for _ in range(a.repeat):
        t = time.perf_counter()
        out, b = preprocess(raw, shape)
        times.append(time.perf_counter() - t)
    times.sort()
    print(f"preprocess to {list(shape)}: min {times[0]:.3f} s, median {times[len(times) // 2]:.3f} s "
          f"over {len(times)} runs (numpy {np.__version__}, scipy {scipy.__version__}, "
          f"scikit-image {skimage.__version__}, {os.cpu_count()} CPUs; bbox {b})")
    if a.out:
        nib.save(nib.Nifti1Image(out.astype(np.float32), np.eye(4)), a.out)
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
