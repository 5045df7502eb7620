"""subset_items: the one rule the prompt datasets' ``subset`` methods follow."""

from dataclasses import dataclass, field

import pytest
import torch

from workbench.core.subsets import subset_items


@dataclass
class Batch:
    prompts: list
    tokens: torch.Tensor
    pos: dict
    kind: str
    width: torch.Tensor  # not per item: 2 entries for 3 items
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)


def batch() -> Batch:
    return Batch(["a", "b", "c"], torch.arange(6).reshape(3, 2), {"END": torch.tensor([1, 1, 0])},
                 "toy", torch.tensor([7, 8]), {"seed": 0})


def test_per_item_fields_are_indexed_and_the_rest_kept():
    b = batch()
    s = subset_items(b, torch.tensor([2, 0, 2]))
    assert isinstance(s, Batch) and len(s) == 3
    assert s.prompts == ["c", "a", "c"]
    assert torch.equal(s.tokens, b.tokens[[2, 0, 2]])
    assert torch.equal(s.pos["END"], torch.tensor([0, 1, 0]))
    assert s.kind == "toy" and s.width is b.width
    assert s.meta == {"seed": 0} and s.meta is not b.meta  # metadata: a shallow copy


def test_index_forms():
    b = batch()
    for index in ([1], (1,), range(1, 2), torch.tensor([1]), torch.tensor(1)):
        s = subset_items(b, index)
        assert s.prompts == ["b"] and s.tokens.shape == (1, 2)
    empty = subset_items(b, [])
    assert empty.prompts == [] and empty.tokens.shape == (0, 2) and empty.pos["END"].shape == (0,)


def test_needs_a_dataclass_instance():
    with pytest.raises(TypeError, match="dataclass instance"):
        subset_items([1, 2, 3], [0])
    with pytest.raises(TypeError, match="dataclass instance"):
        subset_items(Batch, [0])
