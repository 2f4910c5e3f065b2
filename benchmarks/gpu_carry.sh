#!/usr/bin/env bash
# Prepare, on a machine with network, what benchmarks/gpu_check.sh installs on a GPU machine that has
# none (Python 3.12, torch with CUDA and common packages, no Ray): every package the project and its
# tests need that the GPU machine's image lacks, as cp312 wheels, and Ray 2.60 unpacked without the
# parts the project does not use (jars, rllib, serve, llm), packed as tar.xz. The device tool carries
# at most 64 MiB in all, so this prints the total and fails above the budget.
#
#     bash benchmarks/gpu_carry.sh [OUT]      # OUT: benchmarks/gpu-carry (git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/gpu-carry}"
PY="${PYTHON:-.venv/bin/python}"
BUDGET_MB="${CARRY_BUDGET_MB:-56}"  # of the 64 MiB a call carries; the project's own files need the rest
PLATFORM=(--python-version 3.12 --implementation cp --only-binary=:all:
          --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
# what the GPU machines' image holds (/work/.library/device/KINDS.md, read 2026-11-17): not carried
IMAGE="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cycler cython filelock
fonttools frozenlist fsspec grpcio h11 h5py hypothesis idna imageio iniconfig jinja2 joblib kiwisolver markupsafe
matplotlib mpmath msgpack multidict networkx numpy packaging pandas pillow pip pluggy prometheus-client propcache
protobuf psutil pyarrow pygments pyparsing pytest pytest-timeout python-dateutil pyyaml regex requests rich
scikit-learn scipy setuptools six sympy threadpoolctl torch tqdm triton typing-extensions urllib3 werkzeug wheel
wrapt yarl tensorboard"
# not needed there (16 + 8.5 MB): S3 (the gpu tests use local folders), Ray's runtime-env virtualenvs
# and its profiler
SKIP="s3fs aiobotocore botocore aioitertools jmespath s3transfer virtualenv distlib python-discovery platformdirs
py-spy"

rm -rf "$OUT" && mkdir -p "$OUT/wheels"
work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT
# the package's own dependencies (the package itself is installed from the working tree, without
# them) and what the gpu tests use; not the S3 server of the other tests (moto, boto3: 25 MB)
# MLflow (and its server's deps, ~60 MB) is left out: it is imported only where a CLI job logs, and
# the GPU check runs library functions
deps=$("$PY" -c 'import tomllib; print("\n".join(d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]
                                                 ["dependencies"] if not d.startswith("mlflow")))')
"$PY" -m pip install --quiet --dry-run --ignore-installed "${PLATFORM[@]}" --target "$work/t" \
    --report "$work/report.json" $deps pytest-timeout pytest-instafail psutil
"$PY" - "$work/report.json" "$IMAGE $SKIP" > "$work/needed.txt" <<'PYEOF'
import json, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
image = {norm(n) for n in sys.argv[2].split()}
for item in json.load(open(sys.argv[1]))["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    if norm(name) in image or norm(name).startswith("nvidia-") or norm(name) in ("asd-ray", "ray"):
        continue
    print(f"{name}=={version}")
PYEOF
"$PY" -m pip download --quiet --no-deps "${PLATFORM[@]}" -d "$OUT/wheels" -r "$work/needed.txt"
"$PY" -m pip download --quiet --no-deps "${PLATFORM[@]}" -d "$work" "ray==2.60.0"
mkdir -p "$work/ray" && "$PY" - "$work"/ray-2.60.0-*.whl "$work/ray" <<'PYEOF'
import os, sys, zipfile
# with each file's mode: Ray's gcs_server and raylet must stay executable (zipfile -e drops the modes)
with zipfile.ZipFile(sys.argv[1]) as wheel:
    for info in wheel.infolist():
        path = wheel.extract(info, sys.argv[2])
        mode = info.external_attr >> 16
        if mode and not info.is_dir():
            os.chmod(path, mode & 0o777)
PYEOF
rm -rf "$work/ray/ray/jars" "$work/ray/ray/rllib" "$work/ray/ray/serve" "$work/ray/ray/llm"
tar -C "$work/ray" -cJf "$OUT/ray-2.60.0-cp312-trimmed.tar.xz" .
total=$(du -sm "$OUT" | cut -f1)
echo "gpu carry: $(ls "$OUT/wheels" | wc -l) wheels + trimmed Ray in $OUT: ${total} MiB (budget ${BUDGET_MB} MiB)"
if [ "$total" -gt "$BUDGET_MB" ]; then
    echo "gpu carry: over budget; the largest:" && du -sk "$OUT"/wheels/* "$OUT"/*.xz | sort -n | tail -8
    exit 1
fi
