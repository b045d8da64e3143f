"""Checking a model before it is trained: :func:`check_restructurable` refuses, in one line, a model whose
restructured form would not equal its masked form, on a :func:`perturbed_copy`."""

from __future__ import annotations

import torch
from torch import nn

from ..torchutil import eval_mode
from .graph import bounded_traversal
from .plan import GroupPlan, norm_keep_masks, plan_restructure

__all__ = ["check_restructurable", "perturbed_copy"]


def perturbed_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy whose BatchNorm statistics, biases and scalar/per-channel parameters are random.

    Untrained defaults (zero biases, unit variances, identity affines) map zero to zero almost everywhere, which
    would hide an observation point placed before a norm or an affine; trained models do not.
    """
    import copy

    twin = copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in twin.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        for p in twin.parameters():
            if p.dim() <= 1:
                p.add_(torch.rand(p.shape, generator=g).to(p) * 0.2 - 0.1)
    return twin


def check_restructurable(model: nn.Module, example_inputs: torch.Tensor, *, seed: int = 0) -> None:
    """Refuse, in one line, a model whose restructured form would not equal its masked form.

    Slices a perturbed copy at random (half the channels critical), restructures it and compares it with the
    masked copy, as the pipeline's guard does after slicing; on a mismatch the groups are tried one at a time to
    name the first that breaks. Cheap (one trace and one prune of the untrained model), so run it before training.

    Raises:
        ModelError: naming the layer (root of the failing torch-pruning group) and the reason.
    """
    import copy

    from ..errors import ModelError
    from ..slicing.observe import channel_masks, find_layers

    x = example_inputs[:2]
    try:
        twin = perturbed_copy(model, seed)
        layers = find_layers(twin, x[:1])
        if not layers:
            raise ModelError(f"{type(model).__name__}: no Conv2d/Linear layer whose output channels can be observed")
        g = torch.Generator().manual_seed(seed)
        keep = {la.name: torch.rand(la.channels, generator=g) < 0.5 for la in layers}
        _, plans, effective = plan_restructure(twin, layers, keep, x)
    except ModelError:
        raise
    except Exception as e:  # torch-pruning's tracer on an unsupported operator
        raise ModelError(f"cannot trace {type(model).__name__} for restructuring: {type(e).__name__}: {e}") from None

    @bounded_traversal()
    def attempt(selected: list[GroupPlan]) -> float:
        pruned = copy.deepcopy(twin)
        members = {m for p in selected for m in p.members}
        masks = {k: (v if k in members else torch.ones_like(v)) for k, v in effective.items()}
        norms = norm_keep_masks(twin, selected)
        import torch_pruning as tp

        with eval_mode(pruned):
            dg = tp.DependencyGraph().build_dependency(pruned, example_inputs=x, verbose=False)
        mods = dict(pruned.named_modules())
        for p in selected:
            root = mods[p.root]
            dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, idxs=p.remove).prune()
        with torch.no_grad(), channel_masks(twin, layers, masks, extra=norms):
            a = twin(x)
        with torch.no_grad():
            b = pruned.eval()(x)
        return float((a - b).abs().max()) / max(1.0, float(a.abs().max()))

    todo = [p for p in plans if p.remove]
    try:
        if attempt(todo) <= 1e-4:
            return
    except Exception:
        pass
    for p in todo:
        try:
            d = attempt([p])
        except Exception as e:
            raise ModelError(f"cannot restructure {p.root}: torch-pruning fails ({type(e).__name__}: {e})") from None
        if d > 1e-4:
            raise ModelError(
                f"cannot restructure {p.root}: removing its channels differs from zeroing them (relative {d:.2g})"
            )
    raise ModelError(f"cannot restructure {type(model).__name__}: its groups are fine alone but not together")
