"""Stage-2 sequence models: shapes, padding invariance, gradients, features, pooling, registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ct25d.models.registry import Registry
from ct25d.models.stage2 import STAGE2, masked_slice_loss, neighbour_deltas, volume_logits
from ct25d.models.stage2.mamba2 import reversal_index, ssd_chunked, ssd_sequential

IN_DIM, NUM_CLASSES = 8, 3
# Tiny settings per model; models not listed run with d_model=16 and their own defaults.
TINY: dict[str, dict] = {
    "bilstm": {"hidden": 8},
    "bigru_dilated": {"hidden": 8, "dilations": (1, 2, 4)},
    "transformer": {"n_heads": 2},
    "hierarchical_transformer": {"n_heads": 2, "group_size": 3},  # 7 and 23 are not multiples of 3
    "enhanced_transformer": {"n_local_heads": 2, "n_global_heads": 2, "window": 1, "max_len": 64},
    "mamba2": {"headdim": 8, "d_state": 4, "chunk_size": 4},  # several chunks, partial last chunk
}


def make(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = {"name": name, "d_model": 16, **TINY.get(name, {}), **kwargs}
    return STAGE2.from_config(cfg, in_dim=IN_DIM, num_classes=NUM_CLASSES)


def padded_batch(lengths: list[int], fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    L = max(lengths)
    x = torch.full((len(lengths), L, IN_DIM), fill)
    mask = torch.zeros(len(lengths), L, dtype=torch.bool)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randn(n, IN_DIM, generator=gen)
        mask[i, :n] = True
    return x, mask


@pytest.fixture(params=STAGE2.names())
def name(request) -> str:
    return request.param


def test_every_model_is_covered_and_has_tiny_settings():
    assert set(STAGE2.names()) == set(TINY)


def test_forward_shape_and_zero_logits_at_padding(name):
    model = make(name).eval()
    x, mask = padded_batch([7, 23, 1, 12])
    out = model(x, mask)
    assert out.shape == (4, 23, NUM_CLASSES)
    assert torch.isfinite(out).all()
    assert (out[~mask] == 0).all()


@pytest.mark.parametrize("use_deltas", [True, False])
@pytest.mark.parametrize("fill", [0.0, 1e6, float("nan")])
def test_padding_invariance(name, fill, use_deltas):
    model = make(name, use_deltas=use_deltas).eval()
    x, mask = padded_batch([7, 23], fill=fill)
    with torch.no_grad():
        alone = model(x[:1, :7], mask[:1, :7])
        batched = model(x, mask)
    assert torch.isfinite(batched[0, :7]).all()
    torch.testing.assert_close(batched[0, :7], alone[0], rtol=0, atol=1e-5)


def test_garbage_at_padding_changes_nothing(name):
    model = make(name).eval()
    x, mask = padded_batch([5, 9, 23])
    garbage = x.clone()
    garbage[~mask] = torch.randn(int((~mask).sum()), IN_DIM) * 1e6
    with torch.no_grad():
        torch.testing.assert_close(model(garbage, mask), model(x, mask), rtol=0, atol=1e-5)


def test_valid_positions_do_influence_each_other(name):
    """Guards against a model that 'passes' invariance by ignoring context altogether."""
    model = make(name).eval()
    x, mask = padded_batch([12])
    changed = x.clone()
    changed[0, 11] += 3.0
    with torch.no_grad():
        assert not torch.allclose(model(changed, mask)[0, 0], model(x, mask)[0, 0], atol=1e-6)


def test_gradients_reach_every_parameter(name):
    model = make(name).train()
    x, mask = padded_batch([7, 23, 4])
    targets = (torch.rand(3, 23, NUM_CLASSES) > 0.5).float()
    masked_slice_loss(model(x, mask), targets, mask).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_eval_is_deterministic(name):
    model = make(name).eval()
    x, mask = padded_batch([7, 23])
    with torch.no_grad():
        assert torch.equal(model(x, mask), model(x, mask))


def test_use_deltas_off_takes_raw_inputs(name):
    model = make(name, use_deltas=False).eval()
    assert model.input_proj[0].in_features == IN_DIM
    assert make(name).input_proj[0].in_features == 3 * IN_DIM
    x, mask = padded_batch([7, 23])
    assert model(x, mask).shape == (2, 23, NUM_CLASSES)


@pytest.mark.parametrize(
    "mask_rows, error",
    [([[True, False, True]], "prefix"), ([[True, True, True], [False, False, False]], "at least one")],
)
def test_bad_masks_are_rejected(mask_rows, error):
    mask = torch.tensor(mask_rows)
    with pytest.raises(ValueError, match=error):
        make("transformer")(torch.randn(*mask.shape, IN_DIM), mask)


def test_enhanced_transformer_max_len_error():
    model = make("enhanced_transformer", max_len=10)
    with pytest.raises(ValueError, match="max_len=10"):
        model(*padded_batch([11]))


# ---- features -------------------------------------------------------------------------------


def test_neighbour_deltas_ends_and_padding():
    nan = float("nan")
    x = torch.tensor([[1.0, 2.0, 4.0, nan], [3.0, 5.0, 6.0, 10.0]]).unsqueeze(-1)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    out = neighbour_deltas(x, mask)
    expected = torch.tensor(
        [
            [[1, 0, -1], [2, 1, -2], [4, 2, 0], [0, 0, 0]],
            [[3, 0, -2], [5, 2, -1], [6, 1, -4], [10, 4, 0]],
        ],
        dtype=torch.float32,
    )
    torch.testing.assert_close(out, expected)


def test_neighbour_deltas_gap_in_mask_and_layout():
    x = torch.tensor([[[1.0, 10.0], [7.0, 70.0], [2.0, 20.0], [5.0, 50.0]]])
    mask = torch.tensor([[True, False, True, True]])
    out = neighbour_deltas(x, mask)
    assert out.shape == (1, 4, 6)  # [x (D), x - prev (D), x - next (D)]
    torch.testing.assert_close(out[0, :, 2:4], torch.tensor([[0.0, 0.0], [0, 0], [0, 0], [3, 30]]))
    torch.testing.assert_close(out[0, :, 4:6], torch.tensor([[0.0, 0.0], [0, 0], [-3, -30], [0, 0]]))


# ---- pooling and loss -------------------------------------------------------------------------


def test_volume_logits_is_max_over_valid_slices():
    logits = torch.randn(3, 6, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6, [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    logits[~mask] = 1e9
    out = volume_logits(logits, mask)
    expected = torch.stack([logits[i, mask[i]].amax(0) for i in range(3)])
    torch.testing.assert_close(out, expected)


def test_multilabel_loss_ignores_padding():
    logits, targets = torch.randn(2, 5, 3), (torch.rand(2, 5, 3) > 0.5).float()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    reference = F.binary_cross_entropy_with_logits(logits[mask], targets[mask])
    logits[~mask], targets[~mask] = 1e6, 7.0
    torch.testing.assert_close(masked_slice_loss(logits, targets, mask), reference)

    weights = torch.tensor([1.0, 1.0, 2.0])
    per = F.binary_cross_entropy_with_logits(logits[mask], targets[mask], reduction="none")
    torch.testing.assert_close(
        masked_slice_loss(logits, targets, mask, class_weights=weights), ((per * weights).sum(1) / 4).mean()
    )
    pos_weight = torch.tensor([3.0, 1.0, 0.5])
    torch.testing.assert_close(
        masked_slice_loss(logits, targets, mask, pos_weight=pos_weight),
        F.binary_cross_entropy_with_logits(logits[mask], targets[mask], pos_weight=pos_weight),
    )


def test_multiclass_loss_ignores_padding():
    logits = torch.randn(2, 5, 4)
    targets = torch.randint(0, 4, (2, 5))
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    weights = torch.tensor([1.0, 2.0, 0.5, 1.0])
    reference = F.cross_entropy(logits[mask], targets[mask], weight=weights)
    logits[~mask], targets[~mask] = 1e6, -1  # an invalid class id must not even be looked at
    loss = masked_slice_loss(logits, targets, mask, task="multiclass", class_weights=weights)
    torch.testing.assert_close(loss, reference)
    with pytest.raises(ValueError, match="pos_weight"):
        masked_slice_loss(logits, targets, mask, pos_weight=torch.ones(4), task="multiclass")


# ---- mamba2 internals ---------------------------------------------------------------------------


def test_chunked_ssd_matches_sequential_scan():
    gen = torch.Generator().manual_seed(0)
    x, dt = torch.randn(2, 11, 3, 4, generator=gen), torch.rand(2, 11, 3, generator=gen)
    A = -torch.rand(3, generator=gen) * 8
    B, C = torch.randn(2, 11, 5, generator=gen), torch.randn(2, 11, 5, generator=gen)
    reference = ssd_sequential(x, dt, A, B, C)
    for chunk in (1, 4, 11, 64):
        torch.testing.assert_close(ssd_chunked(x, dt, A, B, C, chunk), reference, atol=1e-5, rtol=1e-5)


def test_reversal_index_reverses_valid_prefix_only():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert reversal_index(mask).tolist() == [[2, 1, 0, 3, 4], [4, 3, 2, 1, 0]]


# ---- registry ----------------------------------------------------------------------------------


def test_registry_unknown_name_lists_available():
    with pytest.raises(KeyError) as err:
        STAGE2.create("lstm_typo", in_dim=4, num_classes=2)
    for known in ("bilstm", "mamba2", "transformer"):
        assert known in str(err.value)


def test_registry_from_config_and_new_family():
    model = STAGE2.from_config({"name": "bilstm", "hidden": 4, "in_dim": 99}, in_dim=5, num_classes=2)
    assert model.lstms[0].hidden_size == 4 and model.in_dim == 5  # overrides win over the config
    with pytest.raises(KeyError, match="'name'"):
        STAGE2.from_config({"hidden": 4})

    volumetric = Registry("volumetric")

    @volumetric.register("tiny3d")
    class Tiny3D(torch.nn.Module):
        def __init__(self, channels: int = 2) -> None:
            super().__init__()
            self.channels = channels

    assert volumetric.names() == ["tiny3d"]
    assert volumetric.from_config({"name": "tiny3d", "channels": 3}).channels == 3
    with pytest.raises(ValueError, match="already registered"):
        volumetric.register("tiny3d")(Tiny3D)


# ---- learning sanity ---------------------------------------------------------------------------


def run_task(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slice label = it belongs to a run of >= 2 consecutive slices with feature[0] > 0: a label
    no single slice can decide on its own."""
    lengths = torch.randint(6, 17, (n,), generator=gen)
    L = int(lengths.max())
    x = torch.randn(n, L, 4, generator=gen)
    mask = torch.arange(L)[None] < lengths[:, None]
    pos = (x[..., 0] > 0) & mask
    left = F.pad(pos, (1, 0))[:, :-1]
    right = F.pad(pos, (0, 1))[:, 1:]
    return x, mask, (pos & (left | right)).float().unsqueeze(-1)


def test_bilstm_learns_a_run_detection_task():
    gen = torch.Generator().manual_seed(0)
    x, mask, y = run_task(128, gen)
    torch.manual_seed(0)
    model = STAGE2.create(
        "bilstm", in_dim=4, num_classes=1, hidden=16, d_model=16, dropout=0.0, use_deltas=False
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        masked_slice_loss(model(x, mask), y, mask).backward()
        opt.step()
    model.eval()
    xt, mt, yt = run_task(128, gen)
    with torch.no_grad():
        for xs, ms, ys in ((x, mask, y), (xt, mt, yt)):
            accuracy = ((model(xs, ms) > 0).float() == ys)[ms].float().mean()
            assert accuracy > 0.95
