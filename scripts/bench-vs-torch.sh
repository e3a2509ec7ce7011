#!/usr/bin/env bash
# Runs `pretext bench ops|models|pretext` and its reference (PyTorch; NumPy/SciPy for the
# pretext samplers) in the same run, on the same thread count, and prints the ratio per row
# (pretext time / reference time; lower is better).
#
#   scripts/bench-vs-torch.sh ops     [--sizes 32,64]
#   scripts/bench-vs-torch.sh models  [--sizes 32,64]
#   scripts/bench-vs-torch.sh pretext [--sizes 128]
# Environment: PYTHON (a Python with torch, default python3), PRETEXT (the binary,
# default target/release/pretext), THREADS (default: all cores).
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:?usage: bench-vs-torch.sh ops|models [--sizes 32,64]}
shift
PY=${PYTHON:-python3}
BIN=${PRETEXT:-target/release/pretext}
THREADS=${THREADS:-$(nproc)}
[ -x "$BIN" ] || cargo build --release --bin pretext
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
RAYON_NUM_THREADS=$THREADS "$BIN" bench "$kind" --json "$@" > "$tmp/pretext.jsonl"
case $kind in
  ops) script=scripts/bench_torch_ops.py ;;
  models) script=scripts/bench_torch.py ;;
  pretext) script=scripts/bench_pretext_ref.py ;;
  *) echo "unknown kind $kind" >&2; exit 2 ;;
esac
"$PY" "$script" --threads "$THREADS" "$@" > "$tmp/torch.jsonl"
"$PY" - "$tmp/pretext.jsonl" "$tmp/torch.jsonl" "$THREADS" <<'PY'
import json, sys, datetime, platform
ours = [json.loads(l) for l in open(sys.argv[1])]
ref = {(r["op"], r["shape"]): r for r in map(json.loads, open(sys.argv[2]))}
print(f"# {datetime.date.today()} {platform.node()} {sys.argv[3]} threads")
sampling = all(r.get("fwd_bwd_ms") is None for r in ours)
if sampling:
    print("| op | shape | pretext ms/batch | reference ms/batch | speed-up |")
    print("|---|---|---:|---:|---:|")
else:
    print("| op | shape | pretext fwd ms | torch fwd ms | pretext fwd+bwd ms | torch fwd+bwd ms | ratio fwd+bwd |")
    print("|---|---|---:|---:|---:|---:|---:|")
for r in ours:
    t = ref.get((r["op"], r["shape"]))
    if t is None:
        continue
    if sampling:
        print(f"| {r['op']} | {r['shape']} | {r['fwd_ms']:.1f} | {t['fwd_ms']:.1f} | {t['fwd_ms'] / r['fwd_ms']:.1f}x |")
    else:
        print(f"| {r['op']} | {r['shape']} | {r['fwd_ms']:.2f} | {t['fwd_ms']:.2f} | {r['fwd_bwd_ms']:.2f} | "
              f"{t['fwd_bwd_ms']:.2f} | {r['fwd_bwd_ms'] / t['fwd_bwd_ms']:.2f}x |")
PY
