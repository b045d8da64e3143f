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
# Slicing at scale (issue 17) on CUDA: one process, then two nccl ranks (calibration sharded by samples, the solve by
# classes, rows exchanged with isend/irecv); the two indexes must be byte-identical. With a single GPU both ranks share
# it: recent NCCL may refuse that ("Duplicate GPU"), which the output then shows.
mkdir -p /tmp/nccl-ck
EDGESLICE_HOME=/tmp/esh python3 - <<'PY'
import torch
from edgeslice.data import load_data
from edgeslice.models import create_model, save_checkpoint
from edgeslice.pipeline import meta_for
b = load_data("digits", seed=0)
torch.manual_seed(0)
m = create_model("mobilenetv3_small_100", num_classes=10, in_chans=1, input_size=b.image_size)
save_checkpoint(m.eval(), meta_for("mobilenetv3_small_100", b), "/tmp/nccl-ck/model.safetensors")
PY
SL="slice mobilenetv3 --checkpoint /tmp/nccl-ck/model.safetensors --data digits --device-type cuda --json"
EDGESLICE_HOME=/tmp/esh OMP_NUM_THREADS=1 python3 -m edgeslice.cli $SL --out /tmp/nccl-1 > "$OUT/slice_cuda_1.json"
echo "slice cuda 1 process rc=$?"
EDGESLICE_HOME=/tmp/esh timeout 300 python3 -m torch.distributed.run --nproc-per-node 2 -m edgeslice.cli $SL \
  --out /tmp/nccl-2 > "$OUT/slice_cuda_2.json" 2> "$OUT/slice_cuda_2.err"
echo "slice cuda 2 nccl ranks rc=$? (stderr tail:)"; tail -3 "$OUT/slice_cuda_2.err"
cmp -s /tmp/nccl-1/critical_index /tmp/nccl-2/critical_index && echo "nccl index IDENTICAL to 1 process" \
  || echo "nccl index DIFFERS or missing"
