"""UniverSeg model: official parameter layout, shapes, split == concat cross conv (weight files: test_weights.py)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from useg.errors import ConfigError
from useg.model import CrossOp, build_from_config, build_universeg, model_config

OFFICIAL_TSV = Path(__file__).parents[2] / "shared/reference/universeg_v1_state_dict.tsv"
TINY = (8, 8, 8, 8)


def make_inputs(batch=2, support=3, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(batch, 1, size, size, generator=gen)
    images = torch.rand(batch, support, 1, size, size, generator=gen)
    labels = (torch.rand(batch, support, 1, size, size, generator=gen) > 0.5).float()
    return target, images, labels


def seeded_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_universeg(**kwargs)


def test_default_state_dict_matches_official_names_and_shapes():
    if not OFFICIAL_TSV.is_file():
        pytest.skip(f"official parameter list not found at {OFFICIAL_TSV}")
    rows = [line.split("\t") for line in OFFICIAL_TSV.read_text().splitlines() if line and not line.startswith("#")]
    official = [(name, shape) for name, shape, _dtype in rows]
    model = build_universeg()
    ours = [(name, "x".join(map(str, t.shape))) for name, t in model.state_dict().items()]
    assert ours == official
    assert sum(p.numel() for p in model.parameters()) == 1_182_785


@pytest.mark.parametrize(
    "widths, batch, support, size",
    [(TINY, 1, 1, 32), (TINY, 3, 5, 16), ((4, 6), 2, 2, 8), ((4, 8, 12, 16, 20), 2, 3, 32)],
)
def test_output_shape(widths, batch, support, size):
    model = build_universeg(widths)
    logits = model(*make_inputs(batch, support, size))
    assert logits.shape == (batch, 1, size, size)


def test_image_size_not_divisible_is_a_config_error():
    model = build_universeg(TINY)
    with pytest.raises(ConfigError, match="not divisible by 8"):
        model(*make_inputs(size=20))


@pytest.mark.parametrize("kwargs", [{"widths": (8,)}, {"widths": (8, 0)}, {"cross_impl": "fast"}])
def test_invalid_build_arguments_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        build_universeg(**kwargs)


def test_config_round_trip_rebuilds_same_architecture():
    model = build_universeg((4, 8, 8), cross_impl="concat")
    cfg = model_config(model)
    assert cfg == {"widths": [4, 8, 8], "cross_impl": "concat"}
    rebuilt = build_from_config(cfg)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def naive_cross_conv(cross: CrossOp, target, support):
    """Reference: one conv per (target, support element) pair over their channel concatenation."""
    weight, bias = cross.cross_conv.weight, cross.cross_conv.bias
    rows = []
    for b in range(support.shape[0]):
        pairs = [torch.cat([target[b, 0], support[b, s]])[None] for s in range(support.shape[1])]
        rows.append(torch.cat([F.conv2d(p, weight, bias, padding=1) for p in pairs]))
    return torch.stack(rows)  # B S C H W


@pytest.mark.parametrize("impl", ["split", "concat"])
def test_cross_op_matches_naive_per_pair_conv(impl):
    torch.manual_seed(0)
    cross = CrossOp((5, 7), 6, impl=impl)
    torch.nn.init.normal_(cross.cross_conv.bias)  # a zero bias would hide bias mistakes
    target, support = torch.randn(2, 1, 5, 8, 8), torch.randn(2, 4, 7, 8, 8)
    expected = naive_cross_conv(cross, target, support)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(cross(target, support), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("widths, support, size", [(TINY, 4, 32), ((16, 16, 16, 16), 8, 64)])
def test_split_equals_concat_outputs_and_gradients(widths, support, size):
    split = seeded_model(0, widths=widths, cross_impl="split")
    for name, p in split.named_parameters():  # non-zero biases, so every term of the split sum matters
        if name.endswith("bias"):
            torch.nn.init.normal_(p, std=0.1)
    concat = seeded_model(1, widths=widths, cross_impl="concat")
    concat.load_state_dict(split.state_dict())
    inputs = make_inputs(batch=2, support=support, size=size)
    out_split, out_concat = split(*inputs), concat(*inputs)
    torch.testing.assert_close(out_split, out_concat, atol=1e-4, rtol=1e-4)
    out_split.square().mean().backward()
    out_concat.square().mean().backward()
    for (name, p_split), p_concat in zip(split.named_parameters(), concat.parameters()):
        if p_split.grad is None:  # the last decoder block's unused support path
            assert p_concat.grad is None, name
            continue
        torch.testing.assert_close(p_split.grad, p_concat.grad, atol=1e-4, rtol=1e-4, msg=name)
    assert split.enc_blocks[0].cross.cross_conv.weight.grad.abs().max() > 0


@pytest.mark.parametrize("impl", ["split", "concat"])
def test_output_does_not_depend_on_the_inputs_memory_layout(impl):
    model = seeded_model(0, widths=TINY, cross_impl=impl)
    target, images, labels = make_inputs(batch=2, support=3)
    strided = (target.contiguous(memory_format=torch.channels_last), images.transpose(3, 4).contiguous().transpose(3, 4),
               labels[:, :, :, :, :].flip(1).flip(1))
    torch.testing.assert_close(model(*strided), model(target, images, labels), atol=1e-5, rtol=1e-5)


def test_output_is_invariant_to_support_order():
    model = seeded_model(0, widths=TINY)
    target, images, labels = make_inputs(batch=2, support=5)
    order = torch.tensor([3, 0, 4, 2, 1])
    permuted = model(target, images[:, order], labels[:, order])
    torch.testing.assert_close(permuted, model(target, images, labels), atol=1e-5, rtol=1e-5)
