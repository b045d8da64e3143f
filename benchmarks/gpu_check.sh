#!/usr/bin/env bash
# One prepared device check (run through the device tool): CUDA tests, then the headline command on CUDA.
# Expects wheels for packages the GPU image lacks in .whl/ and Fashion-MNIST IDX files in .devdata/FashionMNIST/raw.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, timm, torch_pruning; print('torch', torch.__version__, 'timm', timm.__version__, 'tp', torch_pruning.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -5
mkdir -p "$OUT"
EDGESLICE_HOME=/tmp/esh EDGESLICE_DATA=$PWD/.devdata python3 -m edgeslice.cli compress mobilenetv3 --theta 0.95 \
  --device-type cuda --out /tmp/gpu-out --json > "$OUT/compress_cuda.json" 2> "$OUT/compress_cuda.err"
echo "compress rc=$?"
python3 - <<'PY'
import json, os
r = json.load(open(os.environ["OUT"] + "/compress_cuda.json"))
keys = ["device", "params_before", "params_after", "compression_rate", "accuracy_before", "accuracy_restructured",
        "accuracy_after", "onnx_parity_max_abs", "restructure_equivalence_max_abs", "timings_s"]
print({k: r[k] for k in keys})
PY
