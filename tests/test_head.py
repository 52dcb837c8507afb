"""Output heads applied to few rows (as weight @ hidden.T) give F.linear's logits."""
import torch
from torch import nn

from specdec.drafters.vocab import SubsetHead
from specdec.target.head import FEW_ROWS, few_rows_product, project


def test_few_rows_match_linear_for_every_row_count_and_shape():
    head = nn.Linear(16, 40, bias=False).double()
    biased = nn.Linear(16, 40).double()
    for shape in [(1, 16), (2, 16), (3, 16), (1, 1, 16), (2, 3, 16), (FEW_ROWS, 16), (FEW_ROWS + 1, 16), (16,)]:
        hidden = torch.randn(*shape, dtype=torch.float64)
        with torch.no_grad():
            for module in (head, biased):
                out = project(module, hidden)
                assert out.shape == module(hidden).shape and out.is_contiguous()
                assert torch.allclose(out, module(hidden), atol=1e-12)
    with torch.no_grad():
        assert torch.allclose(few_rows_product(head.weight, torch.ones(1, 16, dtype=torch.float64)),
                              head.weight.sum(1)[None], atol=1e-12)
        for rows in range(1, 7):  # padded row counts (PADDED_ROWS) give back exactly their own rows
            hidden = torch.randn(rows, 16, dtype=torch.float64)
            out = few_rows_product(head.weight, hidden)
            assert out.shape == (rows, 40) and torch.allclose(out, hidden @ head.weight.T, atol=1e-12)


def test_subset_head_few_rows_match_its_full_product():
    weight = torch.randn(8, 16, dtype=torch.float64)
    head = SubsetHead(weight, torch.arange(0, 40, 5), 40)
    for rows in (1, 2, 7, 40):
        hidden = torch.randn(rows, 16, dtype=torch.float64)
        with torch.no_grad():
            assert torch.allclose(head.subset_logits(hidden), hidden @ weight.t(), atol=1e-12)


def test_other_heads_and_gradients_take_the_module_itself():
    biased = nn.Linear(4, 6).double()
    hidden = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    out = project(biased, hidden)
    assert torch.equal(out, biased(hidden)) and out.requires_grad
