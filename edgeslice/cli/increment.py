"""``edgeslice increment``: learn new classes without forgetting, as the device would (paper §4.3, Eq. 8–9).

The learning itself is :func:`edgeslice.ondevice.learn_increment` (torch, timm, safetensors only); this host-side
command adds what a device cannot: the ONNX export with its onnxruntime parity check, and (when the new data also
holds old classes' test items) an evaluation of forgetting that the device itself never sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import (
    DeviceOpt,
    DeviceType,
    DownloadOpt,
    JsonOpt,
    OptimizerName,
    QuietOpt,
    SeedOpt,
    claim_out,
    console,
    emit_json,
    fmt_bytes,
    handle_errors,
    positive,
    setup,
    table,
    unit_interval,
)


def _pick_classes(spec: str | None, available: list[str], known: list[str]) -> list[int]:
    """Labels (in the new data) of the classes to learn: ``parse_classes``, or the classes the model lacks."""
    from edgeslice.classes import parse_classes
    from edgeslice.errors import EdgesliceError

    if spec is None:
        picked = [i for i, c in enumerate(available) if c not in known]
        if not picked:
            raise EdgesliceError("the new data has no class the model lacks (pass --classes)")
        return picked
    return parse_classes(spec, available)


@handle_errors
def increment_command(
    bundle_dir: Annotated[
        Path | None,
        typer.Argument(
            metavar="[BUNDLE]",
            help="The folder compress (or an earlier increment) wrote: its model.safetensors and critical_index.",
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", exists=True, help="The deployed model.safetensors (model.json beside it)."),
    ] = None,
    index: Annotated[
        Path | None,
        typer.Option("--index", exists=True, dir_okay=False, help="critical_index sliced from this checkpoint."),
    ] = None,
    new_data: Annotated[
        str,
        typer.Option(
            "--new-data",
            help="Data of the new classes: a data-set name or an ImageFolder directory (NEW/train/<class>/; one "
            "class folder of at least 5 images is enough).",
        ),
    ] = "",
    classes: Annotated[
        str | None,
        typer.Option(
            "--classes",
            help="New classes (names or labels of --new-data, comma-separated; default: the "
            "data's classes the model lacks).",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("edgeslice-out/increment"),
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Passes over the new data.")] = 3,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    lr: Annotated[float, typer.Option("--lr", callback=positive, help="Peak learning rate (cosine decay).")] = 3e-3,
    optimizer: Annotated[OptimizerName, typer.Option("--optimizer")] = OptimizerName.adamw,
    calib_per_class: Annotated[
        int, typer.Option("--calib-per-class", min=1, help="Images per new class for slicing the new classes.")
    ] = 50,
    replay: Annotated[
        str | None,
        typer.Option("--replay", help="Old-class data to replay (name or folder); its classes are matched by name."),
    ] = None,
    replay_fraction: Annotated[
        float, typer.Option("--replay-fraction", callback=unit_interval, help="Share of --replay kept per class.")
    ] = 0.1,
    isolate: Annotated[
        bool,
        typer.Option(
            "--isolate/--no-isolate",
            help="First cut the frozen channels and old class rows off the trainable ones (and freeze what they "
            "cannot do without), so old-class logits stay exactly the same; proven on a probe, else exit 1. "
            "Costs the critical channels their non-critical inputs once: use a high-θ index (0.99).",
        ),
    ] = False,
    head: Annotated[
        str,
        typer.Option(
            "--head",
            help="auto (default): routed when the index's class statistics are over isolated features, else lda "
            "(else trained when the index has no statistics, or with --replay/--isolate). "
            "routed: class-incremental, one argmax over all classes: train the new rows and "
            "non-critical channels isolated from the old ones, then a router from the index's class statistics "
            "picks the task and that task's rows pick the class. lda: nothing trains, the classifier becomes the "
            "linear discriminant of the class statistics. trained: isolated or plain training without the router "
            "(task-incremental).",
        ),
    ] = "auto",
    download: DownloadOpt = False,
    seed: SeedOpt = 0,
    device_type: DeviceOpt = DeviceType.auto,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Learn new classes: by default (--head auto: routed where the index allows) class-incremental, one argmax
    over old and new classes: grow the classifier, train only non-critical channels isolated from the critical ones
    (old-class logits stay exact), and route each input to a task with the index's class statistics; --head lda
    trains nothing, --head trained skips the router (task-incremental). Slice the new classes, and write
    OUT/model.safetensors + model.json, critical_index, model.onnx (parity-checked with onnxruntime), report.json
    and manifest.json; from a BUNDLE, a bundle again."""
    device = setup(json_out, device_type, seed, quiet)
    from edgeslice.deploy.bundle import bundle_inputs, check_new_class_sizes, read_bundle_stats
    from edgeslice.errors import EdgesliceError

    if not new_data:
        raise EdgesliceError("--new-data is required (a data-set name or an ImageFolder directory)")
    checkpoint, index = bundle_inputs(bundle_dir, checkpoint, index)
    old_stats = read_bundle_stats(checkpoint.parent)  # verifies a device bundle before any work
    claim_out(out)
    import torch

    from edgeslice.artifacts.files import atomic_write_json
    from edgeslice.artifacts.manifest import write_manifest
    from edgeslice.artifacts.staging import staging_dir
    from edgeslice.data import targets_of
    from edgeslice.deploy.export import check_parity, export_onnx
    from edgeslice.index import CriticalIndex
    from edgeslice.models import load_checkpoint, save_checkpoint
    from edgeslice.ondevice import IncrementConfig, learn_increment, relabel, sample_fraction, stored_bytes
    from edgeslice.pipeline import load_checkpoint_data, make_prepare
    from edgeslice.train import iterate_batches

    head = _head(head, isolate, replay)  # before any work
    net, meta = load_checkpoint(checkpoint)
    idx = CriticalIndex.load(index)
    if idx.class_stats is None and old_stats is not None and list(old_stats.classes) == list(meta.classes):
        # A bundle grown on a device: its index lost the host's statistics, the bundle's exact ones stand in.
        from edgeslice.deploy.bundle import index_stats_from_bundle, meta_feature_dim

        idx.class_stats = index_stats_from_bundle(old_stats, meta_feature_dim(net))
        idx.params["class_stats"] = "from the bundle's class_stats.safetensors (grown on a device)"
    cfg = IncrementConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer.value,
        calib_per_class=calib_per_class,
        isolate=isolate,
        seed=seed,
        head=head if head != "auto" else _auto_head(net, idx, isolate, replay),
    )
    bundle = load_checkpoint_data(meta, new_data, seed=seed, download=download, min_classes=1)
    if bundle.in_chans != meta.in_chans:
        raise EdgesliceError(f"the new data has {bundle.in_chans} channels, the model takes {meta.in_chans}")
    picked = _pick_classes(classes, list(bundle.classes), list(meta.classes))
    names = [bundle.classes[i] for i in picked]
    clash = sorted(set(names) & set(meta.classes))
    if clash:
        raise EdgesliceError(f"the model already has class(es) {', '.join(clash)}")
    all_labels = torch.cat([targets_of(bundle.train), targets_of(bundle.test)])
    counts = torch.bincount(all_labels, minlength=len(bundle.classes))
    check_new_class_sizes(names, [int(counts[i]) for i in picked])
    old = len(meta.classes)
    mapping = {src: old + j for j, src in enumerate(picked)}
    new_train, new_test = relabel(bundle.train, mapping), relabel(bundle.test, mapping)
    replay_set = None
    if replay is not None:
        rb = bundle
        if replay != new_data:
            rb = load_checkpoint_data(meta, replay, seed=seed)
        old_map = {i: meta.classes.index(c) for i, c in enumerate(rb.classes) if c in meta.classes}
        if not old_map:
            raise EdgesliceError(f"--replay {replay} holds none of the model's classes ({', '.join(meta.classes)})")
        replay_set = sample_fraction(relabel(rb.train, old_map), replay_fraction, seed)
    index_bytes = index.stat().st_size

    result = learn_increment(net, meta, idx, new_train, names, cfg, device=device, replay=replay_set)
    model = result.model
    prepare = make_prepare(meta)
    evaluation = _evaluate(model, meta, bundle, new_test, old, len(names), prepare, device)
    report: dict[str, Any] = {
        **result.report,
        "checkpoint": str(checkpoint),
        "index": str(index),
        "new_data": bundle.describe(),
        "evaluation": evaluation,
        "bytes_kept": {
            "index": index_bytes,
            "replay_buffer": 0 if replay_set is None else stored_bytes(replay_set),
            "replay_fraction": None if replay_set is None else replay_fraction,
        },
    }
    x_check = prepare(next(iterate_batches(new_test if len(new_test) else new_train, 64))[0])
    with staging_dir(out) as stage:
        model.cpu()
        saved = save_checkpoint(model, result.meta, stage / "model.safetensors")
        result.index.model_fingerprint = saved.fingerprint
        result.index.save(stage / "critical_index")
        export_onnx(model, x_check, stage / "model.onnx")
        _label_onnx(stage / "model.onnx", result.meta.classes, cfg.head, result.report.get("tasks"))
        # The routed head outputs log-probabilities: unlikely classes get large negative values, in which the
        # features' float32 rounding (onnxruntime folds BatchNorm) is amplified by the router; 1e-3 of the largest.
        atol = 1e-3 if cfg.head == "routed" else 1e-4
        report["onnx_parity_max_abs"] = check_parity(model, stage / "model.onnx", x_check, atol=atol)
        report["index_bytes_after"] = (stage / "critical_index").stat().st_size
        report["bundle"] = _write_bundle(stage, model, result, old_stats, new_train, names, old, seed, device)
        atomic_write_json(stage / "report.json", report)
        write_manifest(stage, cfg.to_dict(), seed)
    report["out"] = str(out)
    if json_out:
        emit_json(report)
        return
    rows = [[k, f"{v['class_il']:.2f}%", f"{v['task_il']:.2f}%"] for k, v in evaluation.items() if isinstance(v, dict)]
    console.print(table(f"{meta.timm_name} + {', '.join(names)}", ["test accuracy", "class-IL", "task-IL"], rows))
    tr = report["training"]
    stats = report.get("class_stats") or {}
    console.print(
        (
            f"class-incremental head from class statistics ({fmt_bytes(stats['bytes'])}, "
            f"rank {stats['rank']}, {stats['features']} frozen features)"
            if report.get("head") == "lda"
            else f"trained with {report['frozen_channels']}/{report['total_channels']} channels frozen"
            + (
                f", routed over tasks {report['tasks']} by class statistics ({fmt_bytes(stats['bytes'])})"
                if report.get("head") == "routed"
                else ""
            )
        )
        + (
            f" (isolated: {report['isolation']['cut_weights']} weights cut, "
            f"{report['isolation']['closure_added_channels']} channels added)"
            if report["isolation"]
            else ""
        )
        + "; "
        f"{tr['step_ms_median']:.1f} ms/step, peak RSS {fmt_bytes(tr['peak_rss_bytes'])}; device kept "
        f"index {fmt_bytes(index_bytes)}"
        + (f" + replay {fmt_bytes(report['bytes_kept']['replay_buffer'])}" if replay_set is not None else "")
        + f"; ONNX parity {report['onnx_parity_max_abs']:.2g} → {out}"
    )


def _write_bundle(stage, model, result, old_stats, new_train, names, old, seed, device) -> dict[str, Any] | None:
    """Keep a device bundle a bundle: statistics restricted to the classifier inputs that stayed frozen, plus the
    new classes'; None (a plain output folder) when the input was no bundle or no input stayed frozen."""
    from edgeslice.deploy.bundle import grown_statistics, write_bundle
    from edgeslice.models import read_meta
    from edgeslice.pipeline import make_prepare

    stats_block = result.index.class_stats
    dims = None if stats_block is None else stats_block.dims
    meta = read_meta(stage / "model.json")
    stats = grown_statistics(old_stats, model, dims, new_train, names, make_prepare(meta), first_label=old, seed=seed,
                             device=device)  # fmt: skip
    model.cpu()
    if stats is None:
        return None
    head = result.report.get("head") or "trained"
    write_bundle(stage, model, meta, stats, history=[{"op": "increment", "path": "host", "classes": list(names)}],
                 head=head)  # fmt: skip
    return {"head": head, "stats_features": int(stats.means.shape[1]), "classes": len(meta.classes)}


def _label_onnx(path: Path, classes: list[str], head: str, tasks: list[list[int]] | None = None) -> None:
    """Write the class order into the ONNX metadata: output j is ``classes[j]`` (also in model.json and the index);
    for the routed head also the tasks (labels of each increment), whose outputs are log-probabilities."""
    import json

    import onnx

    proto = onnx.load(str(path))
    meta = [("edgeslice.classes", json.dumps(classes)), ("edgeslice.head", head)]
    if tasks is not None:
        meta.append(("edgeslice.tasks", json.dumps(tasks)))
    for key, value in meta:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def _auto_head(model, index, isolate: bool, replay: str | None) -> str:
    """The head ``--head auto`` picks: the routed head where the index supports it (or the model already has one),
    the discriminant where the statistics are not over isolated features, the trained head where there are none
    or where the network must train (--replay, --isolate)."""
    from edgeslice.routed import RoutedHead

    if isinstance(model.get_classifier(), RoutedHead):
        return "routed"
    if replay is not None or isolate:
        return "trained"
    stats = index.class_stats
    if stats is None:
        return "trained"
    return "routed" if stats.isolated else "lda"


def _head(head: str, isolate: bool, replay: str | None) -> str:
    from edgeslice.errors import EdgesliceError
    from edgeslice.ondevice.learner import HEADS

    if head == "auto":
        return head
    if head not in HEADS:
        raise EdgesliceError(f"--head must be one of {', '.join(HEADS)}, not {head!r}")
    if head == "lda" and (isolate or replay is not None):
        raise EdgesliceError("--isolate and --replay train the network: use them with --head trained")
    if head == "routed" and replay is not None:
        raise EdgesliceError(
            "the routed head learns from new data only (it is always isolated): --replay needs --head trained"
        )
    return head


def _evaluate(model, meta, bundle, new_test, old: int, n_new: int, prepare, device) -> dict[str, Any]:
    """New-class accuracy, and old-class accuracy when the new data's test split also has old classes."""
    from edgeslice.ondevice import relabel, task_accuracy

    seen = old + n_new
    out: dict[str, Any] = {}
    if len(new_test):
        out["new_classes"] = task_accuracy(model, new_test, range(old, seen), seen=seen, prepare=prepare, device=device)
    old_map = {i: meta.classes.index(c) for i, c in enumerate(bundle.classes) if c in meta.classes}
    if old_map:
        old_test = relabel(bundle.test, old_map)
        if len(old_test):
            out["old_classes"] = task_accuracy(model, old_test, range(old), seen=seen, prepare=prepare, device=device)
            out["note"] = "old-class accuracy is a host-side check: the device learns from new-class data only"
    return out
