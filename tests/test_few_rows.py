"""Few-row linears: W @ x.T inside the block gives F.linear's outputs, and the model is restored after it."""
import pytest
import torch
from torch import nn

from conftest import tiny_llama
from specdec.target.few_rows import FewRowsLinear, few_row_linears


def test_linears_switch_inside_the_block_and_back_even_after_an_error():
    model = tiny_llama(64, seed=0)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    ids = torch.tensor([[3, 5, 7, 9]])
    with torch.no_grad():
        want = model(ids).logits
        with few_row_linears(model):
            assert all(type(m) is FewRowsLinear for m in linears)
            got = model(ids).logits
    assert torch.allclose(got, want, atol=1e-10) and not torch.equal(got, torch.zeros_like(got))
    assert all(type(m) is nn.Linear for m in linears)
    with pytest.raises(RuntimeError, match="inside"):
        with few_row_linears(model):
            raise RuntimeError("inside")
    assert all(type(m) is nn.Linear for m in linears)
    with few_row_linears(model, enabled=False):
        assert all(type(m) is nn.Linear for m in linears)


@pytest.mark.parametrize("rows", [1, 2, 5, 8, 9, 33])
def test_few_rows_linear_matches_linear_with_and_without_bias(rows):
    for bias in (False, True):
        layer = nn.Linear(12, 20, bias=bias).double()
        x = torch.randn(rows, 12, dtype=torch.float64)
        with torch.no_grad():
            want = layer(x)
            layer.__class__ = FewRowsLinear
            assert torch.allclose(layer(x), want, atol=1e-12)
        y = layer(x.requires_grad_())  # under autograd: F.linear, gradients flow
        assert y.requires_grad
