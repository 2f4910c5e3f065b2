#!/usr/bin/env bash
# Every GPU figure in one short run, for a machine with one GPU and a CUDA build of torch (issue 18):
# installs what the package needs (from benchmarks/gpu-carry, made by benchmarks/gpu_carry.sh, where
# the machine has no network: into a folder on PYTHONPATH; else from the registry), runs the `gpu` tests, then each speed figure under a time
# cap, and writes every step's output, with the GPU's name, driver and torch versions, to
# OUT/gpu_check.json and OUT/gpu_check.md. Each step has a time cap (below).
#
#     bash benchmarks/gpu_check.sh OUT       # on the device tool: bash benchmarks/gpu_check.sh "$OUT"
#     GPU_CHECK_ONLY="gpu-tests" bash benchmarks/gpu_check.sh OUT    # only the steps named
#
# Without CUDA it stops at once, before installing or running anything, and says so (exit 2).
# GPU_CHECK_DRY=1 prints each step's command instead of running it, on any machine (the tests do).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
DRY="${GPU_CHECK_DRY:-0}"
if [ "$DRY" != 1 ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device visible to $PY's torch ($("$PY" -c 'import torch; print(torch.__version__)' \
        2>&1 | tail -1)): nothing installed or run" >&2
    exit 2
fi
START=$(date +%s)
# The carried packages go into a folder on PYTHONPATH, beside the image's own: its python3 is itself
# a virtual environment, and a venv made from a venv would not see that one's packages (torch)
DEPS="${GPU_DEPS:-/tmp/asd-gpu-deps}"
VPY="$PY"
if [ "$DRY" = 1 ]; then
    :
elif [ -d benchmarks/gpu-carry ]; then
    rm -rf "$DEPS" && mkdir -p "$DEPS"
    tar -C "$DEPS" -xJf benchmarks/gpu-carry/ray-2.60.0-cp312-trimmed.tar.xz
    "$PY" -m pip install --quiet --no-index --no-deps --target "$DEPS" benchmarks/gpu-carry/wheels/*.whl
else
    "$PY" -m pip install --quiet -e ".[test]"
fi > "$OUT/install.log" 2>&1 || { echo "gpu_check: install failed, see $OUT/install.log" >&2; tail -20 "$OUT/install.log"; exit 1; }
export PYTHONPATH="$DEPS:$PWD${PYTHONPATH:+:$PYTHONPATH}"  # Ray's workers inherit it
[ "$DRY" = 1 ] || "$VPY" -c "import ray, torch, asd_ray.train; print('gpu_check: ray', ray.__version__, 'torch', torch.__version__)" \
    >> "$OUT/install.log" 2>&1 || { echo "gpu_check: imports failed, see $OUT/install.log" >&2; tail -20 "$OUT/install.log"; exit 1; }

STEPS=()
step() {  # step NAME CAP_SECONDS COMMAND...: run it under a time cap, keep its output and status
    local name=$1 cap=$2; shift 2
    if [ -n "${GPU_CHECK_ONLY:-}" ] && [[ " $GPU_CHECK_ONLY " != *" $name "* ]]; then return; fi
    if [ "$DRY" = 1 ]; then echo "gpu_check: would run $name (cap $cap s): $*"; return; fi
    local t0=$(date +%s)
    timeout --kill-after=10 "$cap" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    STEPS+=("$name $rc $(( $(date +%s) - t0 )) $cap")
    echo "gpu_check: $name exit $rc in $(( $(date +%s) - t0 )) s (cap $cap s)"
}
export PYTHONUNBUFFERED=1  # a step killed at its cap keeps what it printed (pytest's -v lines as they pass)
# Caps from the runs on an H100 (fourteenth session) and an H200 (thirtieth): there the gpu tests'
# first three took most of 270 s and the sweep test did not finish; the model step printed its
# figures at 25 s and then ran into the cap; the compiled one was still compiling at 55 s. The caps
# add up to 660 s, more than one call of the device tool allows (600 s): give the gpu tests a call
# of their own (GPU_CHECK_ONLY="gpu-tests", then GPU_CHECK_ONLY="train model-bf16 model-bf16-compile
# score"). train-input (a CPU pipeline, measured then) and the short quality run are left out unless
# GPU_CHECK_ALL=1.
INSTAFAIL=""  # a failing test's traceback written when it fails, not at the end (lost if the cap kills pytest)
"$VPY" -c "import pytest_instafail" 2>/dev/null && INSTAFAIL="--instafail"  # carried by gpu_carry.sh
step gpu-tests 360 "$VPY" -m pytest tests/test_gpu.py tests/test_model.py -m gpu -v -rA --durations=0 $INSTAFAIL \
    -p no:cacheprovider --timeout 200 -o addopts=""  # the modules with gpu tests: the others import the S3 server and MLflow, not carried
step train 100 "$VPY" benchmarks/train_throughput.py --gpu --clips 192 --seconds 10 --workers 1 --epochs 2
step model-bf16 40 "$VPY" benchmarks/model_throughput.py --device cuda --bf16 --batch 64 --seconds 10
step model-bf16-compile 90 "$VPY" benchmarks/model_throughput.py --device cuda --bf16 --compile --batch 64 --seconds 10
step score 70 "$VPY" benchmarks/score_throughput.py --gpu --clips 960 --seconds 10 --scales 1
if [ "${GPU_CHECK_ALL:-0}" = 1 ] || [ -n "${GPU_CHECK_ONLY:-}" ]; then  # GPU_CHECK_ONLY names them
    step train-input 40 "$VPY" benchmarks/train_input.py --scales 1 --clips-per-machine 200 --skip-v1 --epochs 1
    step quality 100 "$VPY" benchmarks/quality.py --gpu --suite tune --out /tmp/asd-gpu-quality --clip-seconds 5 \
        --train-clips 64 --epochs 3 --ae-epochs 10 --batch-size 64
fi

[ "$DRY" = 1 ] && exit 0
"$VPY" - "$OUT" "$START" "${STEPS[@]}" <<'PYEOF'
import json, platform, subprocess, sys, time
import torch
out, start, steps = sys.argv[1], int(sys.argv[2]), [s.split() for s in sys.argv[3:]]
smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip()
report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "gpu": torch.cuda.get_device_name(0),
          "nvidia_smi": smi, "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
          "seconds": int(time.time()) - start, "steps": []}
for name, rc, seconds, cap in steps:
    lines = open(f"{out}/{name}.log", errors="replace").read().splitlines()
    report["steps"].append({"step": name, "exit": int(rc), "seconds": int(seconds), "cap": int(cap),
                            "timed_out": rc in ("124", "137"), "output_tail": lines[-25:]})
json.dump(report, open(f"{out}/gpu_check.json", "w"), indent=1)
md = [f"# GPU check {report['date']}: {report['gpu']} ({smi}), torch {report['torch']} (CUDA {report['cuda']}), "
      f"Python {report['python']}, {report['seconds']} s", ""]
for s in report["steps"]:
    md += [f"## {s['step']}: exit {s['exit']}{' (timed out)' if s['timed_out'] else ''}, {s['seconds']} s "
           f"(cap {s['cap']} s)", "", "```", *s["output_tail"], "```", ""]
open(f"{out}/gpu_check.md", "w").write("\n".join(md))
print("\n".join(md))
PYEOF
