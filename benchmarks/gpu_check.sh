#!/usr/bin/env bash
# One prepared device check (run through the device tool on a lent GPU machine, from the repo
# root). The GPU image has torch but not SimpleITK: fetch its wheel here first and carry it:
#   echo /.wheels/ >> .git/info/exclude
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .wheels SimpleITK
#   device run: carry [".wheels"], command "bash benchmarks/gpu_check.sh", timeout_s 420
# Writes the CUDA test log and the benchmark JSON to $OUT (or ./gpu-check).
set -uo pipefail
OUT="${OUT:-gpu-check}"
mkdir -p "$OUT"
python3 -m pip install --no-deps --no-index -q .wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" \
  | tee -a "$OUT/gpu.txt"
# every CUDA test (the CPU suite's CUDA branches), then the whole suite on the GPU image
python3 -m pytest -q -k cuda Testing/Python 2>&1 | tail -15 | tee "$OUT/cuda_tests.txt"
# augmentation throughput on the GPU, and the CPU figure on the same machine
python3 -m JCSAugmentLib bench augment --device cuda --repeats 20 --no-peers --json \
  > "$OUT/bench_augment_cuda.json"
python3 -m JCSAugmentLib bench augment --device cpu --repeats 10 --no-peers --json \
  > "$OUT/bench_augment_cpu.json"
python3 - "$OUT" <<'PY'
import json, sys
for name in ("cuda", "cpu"):
    r = json.load(open(f"{sys.argv[1]}/bench_augment_{name}.json"))["results"]["jcsaugment"]
    print(name, round(r["patches_per_s"], 1), "patches/s")
PY
