"""Stage 1 model: outputs, and pretrained weights from a local file (hub downloads are unavailable)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from ct25d.models.stage1 import SliceClassifier


def test_forward_returns_logits_and_embedding() -> None:
    model = SliceClassifier("test_resnet", num_classes=6).eval()
    logits, embedding = model(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 6)
    assert embedding.shape == (2, model.num_features)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_weights_load_from_a_local_file(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    source = timm.create_model("test_resnet", pretrained=False)  # with timm's own classifier
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))  # unlike any fresh initialisation
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(source.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))

    torch.manual_seed(1)
    model = SliceClassifier("test_resnet", num_classes=6, pretrained=str(path))
    loaded, saved = model.encoder.state_dict(), source.state_dict()
    assert loaded.keys() <= saved.keys()
    for key, value in loaded.items():
        assert torch.equal(value, saved[key]), key
    fresh = SliceClassifier("test_resnet", num_classes=6, pretrained=False).encoder.state_dict()
    assert any(not torch.equal(fresh[k], loaded[k]) for k in loaded)


def test_missing_weights_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SliceClassifier("test_resnet", num_classes=6, pretrained=str(tmp_path / "nope.pth"))
