"""Where the parameters go: per-conv output widths of edgeslice's restructured model vs Torch-Pruning's, at equal size.

Loads the cached baseline of ``vs_torch_pruning.py`` (same model, data, epochs, lr, batch size, seed; trained and
cached first if it is missing, with a note), slices it at θ, restructures it (``round_to=8``), prunes the dense model
with one Torch-Pruning pruner at the same parameter count (ratio bisected to within 1%), and prints every Conv2d's
output channels and weight count in the dense, edgeslice and Torch-Pruning models. Writes the same as JSON.

Example (after ``vs_torch_pruning.py --models mobilenetv2_100 --baseline-epochs 3`` has cached the baseline):
    python benchmarks/layer_widths.py mobilenetv2_100 --theta 0.95 --baseline-epochs 3
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
from pathlib import Path

from torch import nn

from edgeslice.data import load_data
from edgeslice.errors import EdgesliceError
from edgeslice.models import count_parameters, data_config, resolve_device, resolve_model_name
from edgeslice.pipeline import SliceConfig, calibration_set, make_prepare, slice_model
from edgeslice.restructure import restructure_
from edgeslice.train import iterate_batches

_spec = importlib.util.spec_from_file_location("vs_torch_pruning", Path(__file__).with_name("vs_torch_pruning.py"))
vtp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vtp)


def widths(model: nn.Module) -> dict[str, list[int]]:
    """``{conv name: [out_channels, weight count]}`` for every Conv2d, in module order."""
    return {n: [m.out_channels, m.weight.numel()] for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--theta", type=float, default=0.95)
    ap.add_argument("--pruner", default="lamp", choices=vtp.PRUNERS)
    ap.add_argument("--baseline-epochs", type=float, default=15.0)
    ap.add_argument("--baseline-lr", type=float, default=2e-2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--calib-per-class", type=int, default=100)
    ap.add_argument("--device-type", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not 0 < args.theta <= 1:
        ap.error(f"--theta must be in (0, 1], got {args.theta:g}")
    try:
        run(args)
    except EdgesliceError as e:
        sys.exit(f"error: {e}")


def run(args: argparse.Namespace) -> None:
    name = resolve_model_name(args.model)
    out = args.out or Path(f"benchmarks/results/byo/layer_widths_{name}_theta{args.theta:g}.json")
    if out.is_dir():
        sys.exit(f"error: --out {out} is a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device_type)
    bundle = load_data(
        args.data, image_size=args.image_size, seed=args.seed, preprocess=data_config(name, image_size=args.image_size)
    )
    dense, meta, cached = vtp.baseline(name, bundle, args, device)
    if not cached:
        print("note: the baseline was not cached; it was trained now", file=sys.stderr)
    prepare = make_prepare(meta)
    calib = calibration_set(bundle, args.calib_per_class, args.seed)
    example = prepare(next(iterate_batches(bundle.test, 8))[0]).to(device)
    cfg = SliceConfig(theta=args.theta, calib_per_class=args.calib_per_class)
    slicer, _, _ = slice_model(dense, meta, bundle, cfg, seed=args.seed, device=device)
    result = slicer.slice(theta=args.theta, strategy="semantic")
    ours = copy.deepcopy(dense).to(device)
    restructure_(ours, slicer.layers, result.critical, example[:2], scores=result.scores, round_to=vtp.ROUND_TO)
    theirs, ratio = vtp.bisect_ratio(
        count_parameters(ours), lambda r: vtp.tp_prune(dense, args.pruner, r, example, calib, prepare, device)
    )
    d, e, t = widths(dense), widths(ours), widths(theirs)
    print(
        f"{name} θ {args.theta:g}: params dense {count_parameters(dense):,}, edgeslice {count_parameters(ours):,}, "
        f"tp-{args.pruner} {count_parameters(theirs):,} (ratio {ratio:.3f})"
    )
    print(f"{'conv':32s} {'dense':>6s} {'edges':>6s} {args.pruner:>6s}   weights: dense / edgeslice / {args.pruner}")
    for n, (ch, w) in d.items():
        ech, ew = e.get(n, [0, 0])
        tch, tw = t.get(n, [0, 0])
        print(f"{n:32s} {ch:6d} {ech:6d} {tch:6d}   {w:9,d} {ew:9,d} {tw:9,d}")
    payload = {"model": name, "theta": args.theta, "pruner": args.pruner, "ratio": ratio}
    payload.update(
        {"dense": d, "edgeslice": e, f"tp-{args.pruner}": t, "args": {k: str(v) for k, v in vars(args).items()}}
    )
    out.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
