"""Output heads applied to few rows through a transposed copy of the weight give F.linear's logits."""
import torch
from torch import nn

from specdec.head import project, transposed_weight


def test_few_rows_match_linear_and_the_copy_follows_the_weight():
    head = nn.Linear(16, 40, bias=False).double()
    for rows in (1, 2, 3, 5):
        hidden = torch.randn(rows, 16, dtype=torch.float64)
        with torch.no_grad():
            assert torch.allclose(project(head, hidden), head(hidden), atol=1e-12)
    first = transposed_weight(head.weight)
    assert transposed_weight(head.weight) is first  # cached
    with torch.no_grad():
        head.weight.mul_(2)  # an in-place change refreshes the copy
        hidden = torch.randn(1, 16, dtype=torch.float64)
        assert torch.allclose(project(head, hidden), head(hidden), atol=1e-12)


def test_other_heads_and_gradients_take_the_module_itself():
    biased = nn.Linear(4, 6).double()
    hidden = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    out = project(biased, hidden)
    assert torch.equal(out, biased(hidden)) and out.requires_grad
