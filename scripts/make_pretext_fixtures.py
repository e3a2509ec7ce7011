#!/usr/bin/env python3
"""Writes tests/fixtures/pretext/rotation.json: O's 10 3D rotation transforms
(sst/preprocessing/preprocess_rotation.py::rotate_batch_3d, as listed in method.md §3.1) and
np.rot90 on a channel-last image, applied by NumPy to small non-symmetric inputs.

    python scripts/make_pretext_fixtures.py      # needs numpy
"""
import json
import os

import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "pretext")

O_TRANSFORMS = [
    lambda v: v,
    lambda v: np.transpose(np.flip(v, 1), (1, 0, 2)),
    lambda v: np.flip(v, (0, 1)),
    lambda v: np.flip(np.transpose(v, (1, 0, 2)), 1),
    lambda v: np.transpose(np.flip(v, 1), (0, 2, 1)),
    lambda v: np.flip(v, (1, 2)),
    lambda v: np.flip(np.transpose(v, (0, 2, 1)), 1),
    lambda v: np.transpose(np.flip(v, 0), (2, 1, 0)),
    lambda v: np.flip(v, (0, 2)),
    lambda v: np.flip(np.transpose(v, (2, 1, 0)), 0),
]


def main():
    rng = np.random.default_rng(0)
    v = rng.permutation(4 * 4 * 4).reshape(4, 4, 4).astype(np.float32)
    img = rng.permutation(5 * 5 * 3).reshape(5, 5, 3).astype(np.float32)  # H, W, C as O
    out = {
        "volume": v.flatten().tolist(),
        "rotations_3d": [t(v).flatten().tolist() for t in O_TRANSFORMS],
        # Channel-first [C, H, W] for pretext's Grid.
        "image_chw": np.transpose(img, (2, 0, 1)).flatten().tolist(),
        "rotations_2d_chw": [np.transpose(np.rot90(img, k), (2, 0, 1)).flatten().tolist() for k in range(4)],
    }
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "rotation.json"), "w") as f:
        json.dump(out, f)
    print("wrote", os.path.join(OUT, "rotation.json"))


if __name__ == "__main__":
    main()
