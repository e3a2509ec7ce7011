#!/usr/bin/env bash
# Runs `pretext bench ops|models|pretext` and its reference (PyTorch; NumPy/SciPy for the
# pretext samplers) in the same run, on the same thread count, and prints the ratio per row
# (pretext time / reference time; lower is better).
#
#   scripts/bench-vs-torch.sh ops     [--sizes 32,64]
#   scripts/bench-vs-torch.sh models  [--sizes 32,64] [--model unet|densenet|all]
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
import json, sys, datetime, platform, os
ours = [json.loads(l) for l in open(sys.argv[1])]
ref = {(r["op"], r["shape"]): r for r in map(json.loads, open(sys.argv[2]))}
load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
print(f"# {datetime.date.today()} {platform.node()} {sys.argv[3]} threads, load average {load:.2f} at the end")
sampling = all(r.get("fwd_bwd_ms") is None for r in ours)
models = all(r["op"].endswith("_step") for r in ours)
def f(v, p=1):
    return "-" if v is None else f"{v:.{p}f}"
if sampling:
    print("| op | shape | pretext ms/batch | reference ms/batch | speed-up | copy of the batch ms | pretext / copy |")
    print("|---|---|---:|---:|---:|---:|---:|")
elif models:
    print("| model | shape | pretext step ms | torch step ms | ratio | pretext peak MiB | torch peak MiB | memory ratio | pretext first step ms | torch first step ms | pretext CPU ms/step | torch CPU ms/step |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
else:
    print("| op | shape | pretext fwd ms | torch fwd ms | pretext fwd+bwd ms | torch fwd+bwd ms | ratio fwd+bwd |")
    print("|---|---|---:|---:|---:|---:|---:|")
for r in ours:
    t = ref.get((r["op"], r["shape"]))
    if t is None:
        continue
    if sampling:
        copy = r.get("copy_ms")
        over = "-" if not copy else "%.1fx" % (r["fwd_ms"] / copy)
        print(f"| {r['op']} | {r['shape']} | {r['fwd_ms']:.1f} | {t['fwd_ms']:.1f} | {t['fwd_ms'] / r['fwd_ms']:.1f}x | "
              f"{f(copy, 2)} | {over} |")
    elif models:
        pm, tm = r.get("peak_rss_mib"), t.get("peak_rss_mib")
        mem = f"{pm / tm:.2f}x" if pm and tm else "-"
        print(f"| {r['op']} | {r['shape']} | {r['fwd_bwd_ms']:.1f} | {t['fwd_bwd_ms']:.1f} | "
              f"**{r['fwd_bwd_ms'] / t['fwd_bwd_ms']:.2f}x** | {f(pm, 0)} | {f(tm, 0)} | {mem} | "
              f"{f(r.get('first_ms'), 0)} | {f(t.get('first_ms'), 0)} | {f(r.get('cpu_ms'), 0)} | {f(t.get('cpu_ms'), 0)} |")
    else:
        print(f"| {r['op']} | {r['shape']} | {r['fwd_ms']:.2f} | {t['fwd_ms']:.2f} | {r['fwd_bwd_ms']:.2f} | "
              f"{t['fwd_bwd_ms']:.2f} | {r['fwd_bwd_ms'] / t['fwd_bwd_ms']:.2f}x |")
PY
