#!/usr/bin/env bash
# The GPU check, run in one go on the GPU machine (an H100/H200 with the PyTorch virtualenv),
# from the repository root, after scripts/build-cuda.sh made dist/ on a build machine:
#
#   scripts/gpu-check.sh            # results under $OUT (default: gpu-check/)
#
#   (a) every op and model on CUDA against the CPU kernels (pretext bench parity);
#   (b) UNet3D training steps at 64³ and 128³, batch 2 (pretext bench models --device cuda),
#       with the peak GPU memory sampled by nvidia-smi;
#   (c) the same model in PyTorch on the same GPU in the same run (fp32, TF32, bf16);
#   (d) one quick sweep cell end to end on the GPU.
# It ends with gpu-table.md (the side-by-side table for docs/performance.md) and exits 1 if a
# parity check or the sweep cell failed.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${PRETEXT_CUDA:-dist/pretext-cuda.sh}
PY=${TORCH_PYTHON:-/opt/torch/.venv/bin/python}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
status=0
step() { printf '\n== %s\n' "$*"; }

[ -x "$BIN" ] || { [ -f dist/pretext-cuda.tar.xz ] && tar -C dist -xJf dist/pretext-cuda.tar.xz; }
[ -x "$BIN" ] || { echo "error: $BIN not found (build it with scripts/build-cuda.sh)" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

step "(a) parity: CUDA against the CPU kernels"
"$BIN" bench parity --device cuda | tee "$OUT/parity.txt" || status=1

peak() {  # runs "$@" while sampling GPU memory; prints the peak in MiB to $OUT/$name.mem
  local name=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$OUT/$name.memlog" &
  local smi=$!
  "$@"
  local rc=$?
  kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
  sort -n "$OUT/$name.memlog" | tail -1 > "$OUT/$name.mem"
  return $rc
}

step "(b) pretext bench models --device cuda, 64³ and 128³, batch 2"
for s in 64 128; do
  peak "pretext-$s" "$BIN" bench models --device cuda --sizes "$s" --batch 2 --warmup 2 --reps 5 --json \
    > "$OUT/pretext-$s.jsonl" || status=1
  # cuDNN with TF32 tensor cores allowed (PyTorch's default for cuDNN convolutions).
  PRETEXT_TF32=1 "$BIN" bench models --device cuda --sizes "$s" --batch 2 --warmup 2 --reps 5 --json \
    > "$OUT/pretext-tf32-$s.jsonl" || status=1
done
cat "$OUT"/pretext-*.jsonl

step "(c) PyTorch on the same GPU (fp32, TF32, bf16)"
for mode in fp32 tf32 bf16; do
  flag=""; [ "$mode" = fp32 ] || flag="--$mode"
  for s in 64 128; do
    peak "torch-$mode-$s" "$PY" scripts/bench_torch.py --device cuda --sizes "$s" --warmup 2 --reps 5 $flag \
      > "$OUT/torch-$mode-$s.jsonl"
  done
done
cat "$OUT"/torch-*.jsonl

step "(d) one quick sweep cell on the GPU"
"$BIN" run examples/fig3_pancreas.rhai --device cuda --set profile=quick --set 'tasks=["rotation"]' \
  --set 'fractions=[1.0]' --set out="$OUT/sweep-cell" 2>&1 | tail -5 || status=1
[ -s "$OUT/sweep-cell/results.jsonl" ] || { echo "the sweep cell wrote no row"; status=1; }

step "table"
"$PY" - "$OUT" > "$OUT/gpu-table.md" <<'PY'
import json, sys, os, datetime
out = sys.argv[1]
gpu = open(os.path.join(out, "gpu.txt")).read().strip()
def row(path):
    with open(path) as f:
        return json.loads(f.readline())
def mem(name):
    p = os.path.join(out, name + ".mem")
    return float(open(p).read().strip() or "nan") if os.path.exists(p) else float("nan")
print(f"GPU check {datetime.date.today()} on {gpu}. UNet3D training step (forward, Dice, backward, Adam), batch 2, median of 5.")
print()
print("| volume | pretext fp32 ms | PyTorch fp32 ms | ratio | pretext TF32 ms | PyTorch TF32 ms | ratio | PyTorch bf16 ms | pretext peak GPU MiB | PyTorch fp32 peak MiB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for s in (64, 128):
    p = row(os.path.join(out, f"pretext-{s}.jsonl"))
    p32 = row(os.path.join(out, f"pretext-tf32-{s}.jsonl"))
    t = {m: row(os.path.join(out, f"torch-{m}-{s}.jsonl")) for m in ("fp32", "tf32", "bf16")}
    print(f"| {s}³ | {p['fwd_bwd_ms']:.1f} | {t['fp32']['fwd_bwd_ms']:.1f} | {p['fwd_bwd_ms'] / t['fp32']['fwd_bwd_ms']:.2f}x | "
          f"{p32['fwd_bwd_ms']:.1f} | {t['tf32']['fwd_bwd_ms']:.1f} | {p32['fwd_bwd_ms'] / t['tf32']['fwd_bwd_ms']:.2f}x | "
          f"{t['bf16']['fwd_bwd_ms']:.1f} | {mem(f'pretext-{s}'):.0f} | {mem(f'torch-fp32-{s}'):.0f} |")
PY
cat "$OUT/gpu-table.md"
exit $status
