#!/usr/bin/env bash
# The GPU check, one command on the GPU machine (an H100/H200 with the PyTorch virtualenv), from
# the repository root, with only dist/pretext-cuda.tar.xz carried over from the build machine
# (scripts/build-cuda.sh makes it; the toolchain in dist/ stays behind):
#
#   scripts/gpu-check.sh                 # -> $OUT/summary.md and $OUT/gpu-check.tar.gz
#   DEVICE=cpu PRETEXT_CUDA=target/release/pretext scripts/gpu-check.sh   # rehearsal on a CPU
#
# Steps, cheapest and most telling first, each under its own timeout and all within BUDGET
# seconds (default 450, so that a rerun fits in a 15-minute lease):
#   1. environment: GPU, driver, the binary's shared libraries (a missing one shows here);
#   2. smoke: one 3D convolution forward, backward-data and backward-filter through cuDNN
#      (bench parity --filter "conv3d k3"): the cuDNN handle on candle's stream;
#   3. parity: every op and model on the GPU against the CPU kernels, one line per case as it
#      finishes (a hang loses nothing before it);
#   4. pretext timings: UNet3D training step at 64³ and 128³ (batch 2), FP32 and TF32, and
#      DenseNet-121 224² (batch 8), with the peak GPU memory sampled by nvidia-smi;
#   5. PyTorch on the same GPU in the same run: fp32, TF32, bf16;
#   6. one quick sweep cell end to end;
#   7. the side-by-side table.
# Only 8 files come back from the GPU machine: everything is packed into gpu-check.tar.gz
# beside summary.md (step, status, seconds; the table; the parity failures), also when a step
# fails or times out. Exit status 1 when any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
PY=${TORCH_PYTHON:-/opt/torch/.venv/bin/python}
OUT=${OUT:-gpu-check}
BUDGET=${BUDGET:-450}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
START=$SECONDS
status=0
SUMMARY="$WORK/summary.md"
printf '# GPU check %s (device %s)\n\n| step | status | seconds |\n|---|---|---:|\n' "$(date -u +%F)" "$DEVICE" > "$SUMMARY"

pack() {
  {
    echo
    [ -s "$WORK/gpu-table.md" ] && cat "$WORK/gpu-table.md"
    if [ -s "$WORK/parity.txt" ]; then
      echo; echo "Parity cases that failed:"; echo
      grep -E 'FAILED|error' "$WORK/parity.txt" | sed 's/^/    /' || echo "    none"
    fi
  } >> "$SUMMARY"
  cp "$SUMMARY" "$OUT/summary.md"
  tar -C "$WORK" -czf "$OUT/gpu-check.tar.gz" . 2>/dev/null
  rm -rf "$WORK"
  echo "packed: $OUT/summary.md, $OUT/gpu-check.tar.gz ($((SECONDS - START)) s)"
}
trap pack EXIT

# step NAME CAP CMD...: runs CMD under `timeout min(CAP, what is left of BUDGET)`, output to
# $WORK/NAME.log, one line of progress before and after.
step() {
  local name=$1 cap=$2; shift 2
  local left=$((BUDGET - (SECONDS - START)))
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -le 5 ]; then
    printf '| %s | skipped: budget spent | 0 |\n' "$name" >> "$SUMMARY"
    echo "[$((SECONDS - START)) s] $name: skipped (budget spent)"; status=1; return 1
  fi
  echo "[$((SECONDS - START)) s] $name (at most $limit s)"
  local t0=$SECONDS rc
  # Through bash, so that CMD may be one of this script's (exported) functions.
  timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  local verdict=ok
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && verdict="timed out after $limit s"
  [ "$rc" -ne 0 ] && [ "$verdict" = ok ] && verdict="failed (exit $rc)"
  [ "$rc" -ne 0 ] && status=1
  printf '| %s | %s | %d |\n' "$name" "$verdict" $((SECONDS - t0)) >> "$SUMMARY"
  echo "[$((SECONDS - START)) s] $name: $verdict"
  tail -3 "$WORK/$name.log" | sed 's/^/    /'
  return "$rc"
}

# The binary: PRETEXT_CUDA, else unpacked from the carried archive.
BIN=${PRETEXT_CUDA:-}
if [ -z "$BIN" ]; then
  [ -f dist/pretext-cuda.tar.xz ] || { echo "error: dist/pretext-cuda.tar.xz not found (scripts/build-cuda.sh makes it)" >&2; exit 2; }
  mkdir -p "$WORK/bin" && tar -C "$WORK/bin" -xJf dist/pretext-cuda.tar.xz
  BIN="$WORK/bin/pretext-cuda.sh"
fi
[ -x "$BIN" ] || { echo "error: $BIN is not executable" >&2; exit 2; }
REAL=$(dirname "$BIN")/pretext-cuda; [ -f "$REAL" ] || REAL=$BIN

environment() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no nvidia-smi"
  echo "--- ldd $REAL"; ldd "$REAL" || true
  if ldd "$REAL" 2>/dev/null | grep -q 'not found'; then echo "missing libraries"; return 1; fi
  "$BIN" --version
}
export WORK BIN REAL PY DEVICE
export -f environment
step environment 20 environment
cp "$WORK/environment.log" "$WORK/gpu.txt"

step smoke-cudnn 90 "$BIN" bench parity --device "$DEVICE" --filter "conv3d k3"
step parity 150 "$BIN" bench parity --device "$DEVICE"
cp "$WORK/parity.log" "$WORK/parity.txt" 2>/dev/null

# peak NAME CMD...: runs CMD while sampling GPU memory; the peak (MiB) goes to NAME.mem.
peak() {
  local name=$1; shift
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$WORK/$name.memlog" &
    local smi=$!
    "$@"; local rc=$?
    kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
    sort -n "$WORK/$name.memlog" | tail -1 > "$WORK/$name.mem"
    return $rc
  fi
  "$@"
}
export -f peak
for s in 64 128; do
  step "pretext-$s" 60 peak "pretext-$s" "$BIN" bench models --model unet --device "$DEVICE" --sizes "$s" --batch 2 --warmup 2 --reps 5 --json
  step "pretext-tf32-$s" 60 env PRETEXT_TF32=1 "$BIN" bench models --model unet --device "$DEVICE" --sizes "$s" --batch 2 --warmup 2 --reps 5 --json
done
# DenseNet-121 at 224² with the paper's GPU batch of 32 (issue 20).
step pretext-densenet121 60 peak pretext-densenet121 "$BIN" bench models --model densenet121 --dense-batch 32 --device "$DEVICE" --warmup 2 --reps 5 --json
for mode in fp32 tf32 bf16; do
  flag=""; [ "$mode" = fp32 ] || flag="--$mode"
  for s in 64 128; do
    step "torch-$mode-$s" 45 peak "torch-$mode-$s" "$PY" scripts/bench_torch.py --model unet --device "$DEVICE" --sizes "$s" --warmup 2 --reps 5 $flag
  done
done
step torch-fp32-densenet121 45 peak torch-fp32-densenet121 "$PY" scripts/bench_torch.py --model densenet121 --dense-batch 32 --device "$DEVICE" --warmup 2 --reps 5

step sweep-cell 90 "$BIN" run examples/fig3_pancreas.rhai --device "$DEVICE" --set profile=quick \
  --set 'tasks=["rotation"]' --set 'fractions=[1.0]' --set 'seeds=[0]' --set out="$WORK/sweep-cell"
[ -s "$WORK/sweep-cell/results.jsonl" ] || { echo "the sweep cell wrote no row"; status=1; }

table() {
  "$PY" - "$WORK" <<'PY'
import json, sys, os
work = sys.argv[1]
gpu = open(os.path.join(work, "gpu.txt")).readline().strip()
def row(name):
    p = os.path.join(work, name + ".log")
    for line in open(p) if os.path.exists(p) else []:
        if line.startswith("{"):
            return json.loads(line)
    return None
def ms(r):
    return f"{r['fwd_bwd_ms']:.1f}" if r else "—"
def ratio(a, b):
    return f"{a['fwd_bwd_ms'] / b['fwd_bwd_ms']:.2f}x" if a and b else "—"
def mem(name):
    p = os.path.join(work, name + ".mem")
    return open(p).read().strip() or "—" if os.path.exists(p) else "—"
print(f"Training step (forward, loss, backward, Adam), median of 5, on {gpu}.")
print()
print("| model | pretext FP32 ms | PyTorch fp32 ms | ratio | pretext TF32 ms | PyTorch TF32 ms | ratio | PyTorch bf16 ms | pretext peak MiB | PyTorch fp32 peak MiB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for s in (64, 128):
    p, p32 = row(f"pretext-{s}"), row(f"pretext-tf32-{s}")
    t = {m: row(f"torch-{m}-{s}") for m in ("fp32", "tf32", "bf16")}
    print(f"| UNet3D 2x1x{s}³ | {ms(p)} | {ms(t['fp32'])} | {ratio(p, t['fp32'])} | {ms(p32)} | {ms(t['tf32'])} | "
          f"{ratio(p32, t['tf32'])} | {ms(t['bf16'])} | {mem(f'pretext-{s}')} | {mem(f'torch-fp32-{s}')} |")
p, t = row("pretext-densenet121"), row("torch-fp32-densenet121")
print(f"| DenseNet-121 32x3x224² | {ms(p)} | {ms(t)} | {ratio(p, t)} | | | | | {mem('pretext-densenet121')} | {mem('torch-fp32-densenet121')} |")
PY
}
# The table is made whatever the budget left (it only reads the logs).
export -f table
timeout 20 bash -c table > "$WORK/gpu-table.md" 2> "$WORK/table.log" || status=1
exit $status
