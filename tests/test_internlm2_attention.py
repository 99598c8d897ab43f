"""The course's InternLM2 code: causal SDPA without a mask for right-padded batches gives the masked result."""
import pytest
import torch

from labsupport.model.remote_code.configuration_internlm2 import InternLM2Config
from labsupport.model.remote_code.modeling_internlm2 import InternLM2ForCausalLM, right_padded_only


def _model(attn: str) -> InternLM2ForCausalLM:
    torch.manual_seed(0)
    cfg = InternLM2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, attn_implementation=attn)
    return InternLM2ForCausalLM(cfg).eval()


def test_right_padded_only_tells_right_from_left_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    hole = torch.tensor([[1, 0, 1, 0]])
    assert right_padded_only(right, 0) and right_padded_only(None, 0)
    assert not right_padded_only(left, 0) and not right_padded_only(hole, 0)
    assert not right_padded_only(right, past_len=3)  # with a cache the mask must stay


@pytest.mark.parametrize("mask_rows", [[[1] * 7 + [0] * 3, [1] * 10], [[0] * 3 + [1] * 7, [1] * 10]])
def test_sdpa_matches_eager_on_real_tokens(mask_rows):
    ids = torch.randint(0, 64, (2, 10))
    mask = torch.tensor(mask_rows)
    sdpa, eager = _model("sdpa"), _model("eager")
    eager.load_state_dict(sdpa.state_dict())
    with torch.no_grad():
        a = sdpa(input_ids=ids, attention_mask=mask, use_cache=False).logits
        b = eager(input_ids=ids, attention_mask=mask, use_cache=False).logits
    real = mask.bool()
    assert torch.allclose(a[real], b[real], atol=1e-5), (a[real] - b[real]).abs().max()
    assert torch.isfinite(a).all()


def test_sdpa_without_a_mask_is_causal():
    """Changing a later token must not change the logits of earlier ones."""
    model = _model("sdpa")
    ids = torch.randint(0, 64, (1, 8))
    later = ids.clone()
    later[0, 6] = (later[0, 6] + 1) % 64
    with torch.no_grad():
        a = model(input_ids=ids, use_cache=False).logits
        b = model(input_ids=later, use_cache=False).logits
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6) and not torch.allclose(a[:, 6:], b[:, 6:])
