#!/usr/bin/env bash
# Peak RSS of `slice` and `compress --train-epochs 0.1` on streamed RGB 224-px folders of 2,000 and 8,000 images.
# Usage: benchmarks/rss_streaming.sh [WORKDIR]   (writes benchmarks/results/byo/rss_streaming.txt)
set -euo pipefail
W=${1:-/tmp/edgeslice-rss}
OUT=benchmarks/results/byo/rss_streaming.txt
mkdir -p "$W"
python - "$W" <<'PY'
import sys, os
from pathlib import Path
import numpy as np
from PIL import Image
import torch, timm
w = Path(sys.argv[1])
big = w / "rgb8000" / "train"
if not (w / "rgb8000" / ".done").exists():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:320]
    for c in range(10):
        (big / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(800):
            f = 0.01 + 0.004 * c + 0.002 * rng.random()
            img = np.stack([np.sin(f * xx + i) , np.cos(f * yy + c), np.sin(f * (xx + yy))], -1)
            img = ((img + 1) * 127.5 + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(big / f"c{c}" / f"{i:04d}.jpg", quality=85)  # 320x256: resized to 224
    (w / "rgb8000" / ".done").touch()
    for c in range(10):
        d = w / "rgb2000" / "train" / f"c{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(200):
            os.link(big / f"c{c}" / f"{i:04d}.jpg", d / f"{i:04d}.jpg")
torch.manual_seed(0)
torch.save(timm.create_model("mobilenetv3_small_050", num_classes=10).state_dict(), w / "user.pth")
PY
: > "$OUT"
for n in 2000 8000; do
  for cmd in slice compress; do
    if [ $cmd = slice ]; then
      args=(slice mobilenetv3_small_050 --checkpoint "$W/user.pth" --data "$W/rgb$n" --calib-per-class 20 --out "$W/out-slice-$n")
    else
      args=(compress mobilenetv3_small_050 --data "$W/rgb$n" --train-epochs 0.1 --finetune-epochs 0.02 \
            --calib-per-class 20 --batch-size 64 --no-dense-control --out "$W/out-compress-$n")
    fi
    EDGESLICE_HOME="$W/home" /usr/bin/time -v python -m edgeslice "${args[@]}" --device-type cpu --json \
      > "$W/$cmd-$n.json" 2> "$W/$cmd-$n.time"
    rss=$(grep "Maximum resident" "$W/$cmd-$n.time" | awk '{print $NF}')
    wall=$(grep "Elapsed (wall" "$W/$cmd-$n.time" | awk '{print $NF}')
    echo "$cmd images=$n max_rss_kb=$rss wall=$wall" | tee -a "$OUT"
  done
done
