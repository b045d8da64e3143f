"""The paper's MLP: timm registration, timm-style API, slicing layers, restructure, checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeslice.errors import ModelError
from edgeslice.mlp import EdgesliceMLP
from edgeslice.models import ModelMeta, count_parameters, create_model, load_checkpoint, save_checkpoint
from edgeslice.restructure import restructure_
from edgeslice.slicing import find_layers
from edgeslice.slicing.observe import classifier_names

# 784*512+512 + 512*256+256 + 256*10+10
N_PARAMS_28 = 535_818


def _meta(size: int = 28) -> ModelMeta:
    return ModelMeta(
        timm_name="edgeslice_mlp",
        classes=[str(i) for i in range(10)],
        in_chans=1,
        input_size=size,
        mean=[0.5],
        std=[0.25],
    )


def test_registered_with_timm_and_aliased():
    import timm

    assert timm.is_model("edgeslice_mlp")
    model = create_model("mlp", num_classes=10, in_chans=1)
    assert isinstance(model, EdgesliceMLP)
    assert (model.fc1.in_features, model.fc1.out_features, model.fc2.out_features) == (784, 512, 256)
    assert count_parameters(model) == N_PARAMS_28
    wide = timm.create_model("edgeslice_mlp", num_classes=4, in_chans=3, img_size=32)
    assert wide.fc1.in_features == 3 * 32 * 32 and wide(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(ModelError, match="no pretrained weights"):
        create_model("mlp", num_classes=10, in_chans=1, pretrained=True)


def test_timm_style_api():
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=10, in_chans=1).eval()
    x = torch.randn(3, 1, 28, 28)
    features = model.forward_features(x)
    assert features.shape == (3, 256) and bool((features >= 0).all())  # after the ReLU
    assert torch.equal(model.forward_head(features), model(x))
    assert torch.equal(model.forward_head(features, pre_logits=True), features)
    assert model.get_classifier() is model.head
    model.reset_classifier(3)
    assert model.head.out_features == 3 and model(x).shape == (3, 3)
    model.reset_classifier(0)
    assert model(x).shape == (3, 256)


def test_wrong_input_size_is_a_clear_error():
    model = create_model("mlp", num_classes=10, in_chans=1)
    with pytest.raises(ValueError, match=r"takes 784 input values per sample, got \(1, 32, 32\)"):
        model(torch.zeros(1, 1, 32, 32))


def test_slicing_sees_hidden_layers_and_restructure_matches_masking(tmp_path):
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=10, in_chans=1).eval()
    x = torch.randn(5, 1, 28, 28)
    layers = find_layers(model, x[:1])
    assert [(la.name, la.observe, la.channels) for la in layers] == [("fc1", "act1", 512), ("fc2", "act2", 256)]
    assert classifier_names(model) == {"head"}
    keep = {"fc1": torch.arange(512) % 4 != 0, "fc2": torch.arange(256) % 2 == 0}
    original = copy.deepcopy(model)
    report = restructure_(model, layers, keep, x[:2])
    assert (model.fc1.out_features, model.fc2.in_features, model.fc2.out_features) == (384, 384, 128)
    assert report.params_after == 784 * 384 + 384 + 384 * 128 + 128 + 128 * 10 + 10
    with torch.no_grad(), report.masked(original, layers):
        expected = original(x)
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5)

    meta = save_checkpoint(model, _meta(), tmp_path / "model.safetensors")
    loaded, loaded_meta = load_checkpoint(tmp_path, expect_model="mlp")
    assert loaded_meta.fingerprint == meta.fingerprint
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_checkpoint_records_the_input_size(tmp_path):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("edgeslice_mlp", num_classes=10, in_chans=1, img_size=32).eval()
    save_checkpoint(model, _meta(32), tmp_path / "model.safetensors")
    loaded, meta = load_checkpoint(tmp_path)  # rebuilt at the default 28 px, then resized from model.json
    assert meta.input_size == 32 and loaded.fc1.in_features == 1024
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
