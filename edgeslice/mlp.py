"""The paper's MLP (two hidden layers of 512 and 256 ReLU neurons, §5.1), registered with timm as ``edgeslice_mlp``.

The first layer sees the flattened image, so the model needs the input size when it is built: ``img_size``
(default 28, Fashion-MNIST/MNIST). Checkpoints need nothing extra: ``model.json`` records every Linear layer's
``in_features`` (and the input size), so :func:`edgeslice.models.load_checkpoint` resizes ``fc1`` to whatever input
the checkpoint was trained on. A batch of another size is refused with a one-line error, never silently resized.

Example:
    >>> import timm, torch
    >>> import edgeslice.mlp  # registers the model
    >>> model = timm.create_model("edgeslice_mlp", num_classes=10, in_chans=1, img_size=28)
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["EdgesliceMLP"]  # register_model appends the entrypoint names


class EdgesliceMLP(nn.Module):
    """Flatten → ``fc1`` (512) → ReLU → ``fc2`` (256) → ReLU → ``head`` (classes).

    Layer names follow timm: ``forward_features`` returns the last hidden layer's activations (``num_features``
    wide), ``head`` is the classifier (``get_classifier``/``reset_classifier``). The ReLUs are separate modules and not
    in place, so :func:`edgeslice.slicing.find_layers` observes each hidden layer after its activation.

    Args:
        num_classes: Classifier outputs; 0 leaves the head out (``forward`` returns the features).
        in_chans: Image channels.
        img_size: Image side, or (height, width).
        hidden: Widths of the hidden layers (the paper's are 512 and 256).
        drop_rate: Dropout before the classifier.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int | Sequence[int] = 28,
        hidden: Sequence[int] = (512, 256),
        drop_rate: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        kwargs.pop("global_pool", None)  # timm passes it to every model; an MLP has nothing to pool
        if kwargs:
            raise TypeError(f"EdgesliceMLP got unexpected arguments: {', '.join(sorted(kwargs))}")
        if len(hidden) != 2:
            raise ValueError(f"EdgesliceMLP has two hidden layers, got widths {tuple(hidden)}")
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(in_chans * height * width, hidden[0])
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.act2 = nn.ReLU()
        self.num_features = self.head_hidden_size = hidden[1]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(hidden[1], num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replaces the classifier with a freshly initialised one for ``num_classes`` outputs (0: none)."""
        self.num_classes = num_classes
        # num_features follows fc2, which channel pruning may have narrowed.
        self.num_features = self.head_hidden_size = self.fc2.out_features
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images → (B, num_features) activations of the last hidden layer."""
        if not torch.jit.is_tracing() and x[0].numel() != self.fc1.in_features:
            raise ValueError(
                f"edgeslice_mlp takes {self.fc1.in_features} input values per sample, got {tuple(x.shape[1:])}: "
                "build it with the data's img_size and in_chans"
            )
        x = self.act1(self.fc1(self.flatten(x)))
        return self.act2(self.fc2(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs(
    {
        "edgeslice_mlp": {
            "num_classes": 10,
            "input_size": (1, 28, 28),
            "fixed_input_size": True,
            "mean": (0.5,),
            "std": (0.5,),
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "classifier": "head",
            "first_conv": "fc1",
        }
    }
)


@register_model
def edgeslice_mlp(pretrained: bool = False, **kwargs: Any) -> EdgesliceMLP:
    """The paper's MLP: hidden layers of 512 and 256 ReLU neurons (no pretrained weights)."""
    if pretrained:
        raise ValueError("edgeslice_mlp has no pretrained weights")
    return build_model_with_cfg(EdgesliceMLP, "edgeslice_mlp", pretrained=False, **kwargs)
