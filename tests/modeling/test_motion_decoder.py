"""MotionDecoder: shapes from the input, CLS and positional encoding, the self-attention switch."""

from __future__ import annotations

import torch

from fima.modeling import HEAD_REGISTRY, build_head
from fima.modeling.heads.motion_decoder import MotionDecoder, sine_position_encoding
from tests.conftest import tiny_cfg


def _decoder(**overrides) -> MotionDecoder:
    cfg = tiny_cfg(
        **{"MODEL.MOTION_DECODER.DIM": 16, "MODEL.MOTION_DECODER.FFN_DIM": 24, **overrides}
    )
    torch.manual_seed(0)
    return build_head("MotionDecoder", cfg, in_channels=12).eval()


def test_registered_and_sized_from_config() -> None:
    assert HEAD_REGISTRY.get("MotionDecoder") is MotionDecoder
    decoder = _decoder(**{"MODEL.MOTION_DECODER.NUM_LAYERS": 3})
    assert len(decoder.layers) == 3
    assert decoder.input_proj.in_features == 12 and decoder.output_proj.out_features == 12
    assert decoder.layers[0].ffn[0].out_features == 24
    assert torch.equal(decoder.cls_token, torch.zeros(16))


def test_output_shape_follows_the_feature_map() -> None:
    decoder = _decoder()
    for length, height, width in ((2, 7, 7), (4, 3, 5), (1, 1, 1)):
        feat = torch.randn(3, 12, length, height, width)
        out = decoder(feat, feat.roll(1, 0))
        assert out.shape == (3, length, 1 + height * width, 12)


def test_without_self_attention_each_token_is_decoded_alone() -> None:
    decoder = _decoder()
    target, memory = torch.randn(2, 12, 2, 3, 3), torch.randn(2, 12, 2, 3, 3)
    out = decoder(target, memory)
    changed = target.clone()
    changed[:, :, :, 0, 0] += 1.0  # only cell 0 of the target
    out_changed = decoder(changed, memory)
    # The CLS output and every other cell ignore the change; memory is the only context.
    torch.testing.assert_close(out_changed[:, :, 0], out[:, :, 0])
    torch.testing.assert_close(out_changed[:, :, 2:], out[:, :, 2:])
    assert not torch.allclose(out_changed[:, :, 1], out[:, :, 1])
    # Slices are decoded independently: changing slice 1 of the memory leaves slice 0 alone.
    memory2 = memory.clone()
    memory2[:, :, 1] += 1.0
    torch.testing.assert_close(decoder(target, memory2)[:, 0], out[:, 0])


def test_self_attention_switch_lets_tokens_see_each_other() -> None:
    decoder = _decoder(**{"MODEL.MOTION_DECODER.SELF_ATTENTION": True})
    assert decoder.layers[0].self_attn is not None
    target, memory = torch.randn(2, 12, 2, 3, 3), torch.randn(2, 12, 2, 3, 3)
    out = decoder(target, memory)
    changed = target.clone()
    changed[:, :, :, 0, 0] += 1.0
    assert not torch.allclose(decoder(changed, memory)[:, :, 0], out[:, :, 0])


def test_position_encoding_is_the_transformer_sine() -> None:
    encoding = sine_position_encoding(5, 8, torch.device("cpu"))
    for position in range(5):
        for i in range(4):
            angle = position / 10000 ** (2 * i / 8)
            assert abs(encoding[position, 2 * i].item() - torch.tensor(angle).sin().item()) < 1e-6
            assert (
                abs(encoding[position, 2 * i + 1].item() - torch.tensor(angle).cos().item()) < 1e-6
            )


def test_positions_matter_to_the_cells() -> None:
    decoder = _decoder()
    feat = torch.randn(1, 12, 1, 1, 1).expand(1, 12, 1, 2, 2).contiguous()  # equal tokens
    out = decoder(feat, feat)
    assert not torch.allclose(out[0, 0, 1], out[0, 0, 2])  # they differ only by position
