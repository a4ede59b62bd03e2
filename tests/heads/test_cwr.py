"""CWR / CWR* consolidation of the output layer, checked against numbers worked out by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgecl.errors import UsageError
from edgecl.heads import ConsolidatedOutput, cwr_star_consolidate

# 3 classes, 2 weights each. Class 0 was consolidated before (4 samples); class 1 was too
# (3 samples) but is not in this batch; class 2 is new. The batch has 1 sample of class 0 and
# 2 of class 2.
CW = torch.tensor([[1.0, 2.0],
                   [3.0, 4.0],
                   [5.0, 6.0]])
PAST = torch.tensor([4.0, 3.0, 0.0], dtype=torch.float64)
TW = torch.tensor([[2.0, 0.0],
                   [10.0, 10.0],   # trained row of a class outside the batch: ignored
                   [4.0, 2.0]])
COUNTS = {0: 1, 2: 2}
# mean = one scalar over the trained rows of the batch's classes 0 and 2:
#        (2 + 0 + 4 + 2) / 4 = 2
# class 0: w_past = sqrt(4 / 1) = 2
#          cw = ([1, 2] * 2 + ([2, 0] - 2)) / (2 + 1) = ([2, 4] + [0, -2]) / 3 = [2/3, 2/3]
# class 1: not in the batch, unchanged: [3, 4]
# class 2: w_past = sqrt(0 / 2) = 0
#          cw = ([5, 6] * 0 + ([4, 2] - 2)) / (0 + 1) = [2, 0]
# past counts: [4 + 1, 3, 0 + 2] = [5, 3, 2]
EXPECTED_CW = torch.tensor([[2 / 3, 2 / 3],
                            [3.0, 4.0],
                            [2.0, 0.0]])
EXPECTED_PAST = torch.tensor([5.0, 3.0, 2.0], dtype=torch.float64)


def test_cwr_star_matches_the_hand_computation() -> None:
    new_cw, new_past = cwr_star_consolidate(CW, PAST, TW, COUNTS)
    assert torch.allclose(new_cw, EXPECTED_CW)
    assert torch.equal(new_past, EXPECTED_PAST)
    assert new_cw.dtype == CW.dtype and new_past.dtype == torch.float64


def test_cwr_star_leaves_its_inputs_untouched() -> None:
    cw, past, tw, counts = CW.clone(), PAST.clone(), TW.clone(), dict(COUNTS)
    cwr_star_consolidate(cw, past, tw, counts)
    assert torch.equal(cw, CW) and torch.equal(past, PAST) and torch.equal(tw, TW)
    assert counts == COUNTS


def test_a_class_seen_often_moves_less_than_a_new_one() -> None:
    cw = torch.zeros(2, 1)
    past = torch.tensor([99.0, 0.0], dtype=torch.float64)
    tw = torch.tensor([[2.0], [0.0]])
    new_cw, _ = cwr_star_consolidate(cw, past, tw, {0: 1, 1: 1})
    # mean = (2 + 0) / 2 = 1
    # class 0: w_past = sqrt(99): (0 * sqrt(99) + (2 - 1)) / (sqrt(99) + 1) ~ 0.091
    # class 1: w_past = 0:        (0 + (0 - 1)) / 1 = -1 (a new class takes tw - mean)
    assert new_cw[0, 0].item() == pytest.approx(1 / (99 ** 0.5 + 1))
    assert new_cw[1, 0].item() == pytest.approx(-1.0)


def layer(weight: torch.Tensor) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        out.weight.copy_(weight)
    return out


def consolidated_with(cw: torch.Tensor, past: torch.Tensor) -> ConsolidatedOutput:
    state = ConsolidatedOutput(layer(torch.zeros_like(cw)))
    state.weight, state.past = cw.clone(), past.clone()
    return state


def test_a_fresh_consolidated_output_is_zero() -> None:
    state = ConsolidatedOutput(layer(torch.randn(3, 2)))
    assert torch.equal(state.weight, torch.zeros(3, 2))
    assert torch.equal(state.past, torch.zeros(3, dtype=torch.float64))


def test_start_batch_for_cwr_zeroes_every_row() -> None:
    output = layer(torch.full((3, 2), 7.0))
    consolidated_with(CW, PAST).start_batch(output, [0, 2], from_consolidated=False)
    assert torch.equal(output.weight, torch.zeros(3, 2))


def test_start_batch_for_cwr_star_loads_the_batch_rows_and_zeroes_the_others() -> None:
    output = layer(torch.full((3, 2), 7.0))
    consolidated_with(CW, PAST).start_batch(output, [0, 2], from_consolidated=True)
    assert torch.equal(output.weight, torch.tensor([[1.0, 2.0], [0.0, 0.0], [5.0, 6.0]]))


def test_consolidate_star_updates_state_and_copies_cw_into_the_output_layer() -> None:
    state = consolidated_with(CW, PAST)
    output = layer(TW)
    state.consolidate_star(output, COUNTS)
    assert torch.allclose(state.weight, EXPECTED_CW)
    assert torch.equal(state.past, EXPECTED_PAST)
    assert torch.allclose(output.weight, EXPECTED_CW)  # inference now uses cw
    assert output.weight.data_ptr() != state.weight.data_ptr()  # a copy, not an alias


def test_consolidate_copy_takes_the_trained_rows_of_the_batch_classes() -> None:
    # CWR: cw[j] = tw[j] for the batch's classes; the rest keeps its consolidated value.
    state = consolidated_with(CW, PAST)
    output = layer(TW)
    state.consolidate_copy(output, COUNTS)
    expected = torch.tensor([[2.0, 0.0], [3.0, 4.0], [4.0, 2.0]])
    assert torch.equal(state.weight, expected)
    assert torch.equal(output.weight.detach(), expected)
    assert torch.equal(state.past, EXPECTED_PAST)


def test_state_dict_is_a_snapshot() -> None:
    state = consolidated_with(CW, PAST)
    snapshot = state.state_dict()
    state.consolidate_star(layer(TW), COUNTS)
    assert torch.equal(snapshot["weight"], CW) and torch.equal(snapshot["past"], PAST)


def test_biased_output_layer_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="bias"):
        ConsolidatedOutput(nn.Linear(2, 3, bias=True))
