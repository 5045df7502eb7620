"""ioi_split: selection and evaluation prompts share no name, template, place or object."""

import pytest

from workbench.core.subsets import overlaps
from workbench.phenomena.ioi.dataset import FACTORS, TEMPLATES, ioi_dataset, ioi_split


@pytest.mark.slow
def test_ioi_split_is_disjoint_on_every_factor(smollm2):
    sel, ev = ioi_split(smollm2, 12, 16, seed=0)
    assert len(sel) == 12 and len(ev) == 16
    assert set(sel.factors) == set(FACTORS)
    assert all(not shared for shared in overlaps(sel.factors, ev.factors).values())
    assert all(sel.factors[k] and ev.factors[k] for k in FACTORS)
    assert sel.factors["templates"] <= set(TEMPLATES)
    # The restricted pools are what the prompts use.
    for row in sel.words:
        assert set(row["names"]) <= sel.factors["names"]


@pytest.mark.slow
def test_ioi_dataset_restricted_pools(smollm2):
    ds = ioi_dataset(smollm2, n=6, seed=1, templates=[0], names=["Mary", "John", "Tom"],
                     places=["store"], objects=["ring"])
    assert ds.factors["names"] == {"Mary", "John", "Tom"}
    assert ds.factors["places"] == {"store"} and ds.factors["objects"] == {"ring"}
    with pytest.raises(ValueError, match="Too few"):
        ioi_dataset(smollm2, n=2, names=["Mary", "John"])
    with pytest.raises(ValueError, match="at least 1"):
        ioi_split(smollm2, 0, 4)
