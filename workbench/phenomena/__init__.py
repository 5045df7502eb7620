"""Phenomena: one folder per phenomenon (its prompts, its analysis), above the techniques.

=================  ==============================================================================
folder             what it holds
=================  ==============================================================================
``ioi``            IOI prompts (:func:`ioi_dataset`) and the head-level IOI circuit
``retrieval``      needle-in-a-haystack prompts (:func:`needle_haystacks`) and head masking
``temporal``       time-specific facts (:func:`temporal_facts`) and temporal heads
``arithmetic``     arithmetic problems (:func:`arithmetic_problems`) and arithmetic heads
``sae_features``   SAE features that fire at names, and their causal effect
``atlas``          every role's heads in one map
``induction``      induction heads on repeated random tokens
``circuit_discovery``  edge-level circuits (EAP, EAP-IG) and faithfulness curves
``answers``        what the text phenomena share: answer tokens, keeping what a model answers
``registry``       :class:`~workbench.phenomena.registry.Phenomenon`: each folder registers itself
=================  ==============================================================================

A new phenomenon is a folder that registers itself (see :mod:`workbench.phenomena.registry`) and
one import line below; the head atlas, ``workbench run`` and the scorecards pick it up.
"""

# Registration order is the order of the atlas's roles.
from workbench.phenomena import ioi, induction, retrieval, temporal, arithmetic  # noqa: I001
from workbench.phenomena import sae_features, circuit_discovery, atlas

from workbench.phenomena import registry
from workbench.phenomena.answers import NothingCorrect, answer_correct, keep_correct
from workbench.phenomena.arithmetic.dataset import ArithmeticProblems, arithmetic_problems
from workbench.phenomena.ioi.dataset import IOIDataset, ioi_dataset
from workbench.phenomena.retrieval.dataset import Haystack, Needle, needle_haystacks
from workbench.phenomena.temporal.dataset import TemporalFacts, temporal_facts

__all__ = [
    "registry",
    "ArithmeticProblems",
    "Haystack",
    "IOIDataset",
    "Needle",
    "NothingCorrect",
    "TemporalFacts",
    "answer_correct",
    "arithmetic_problems",
    "ioi_dataset",
    "keep_correct",
    "needle_haystacks",
    "temporal_facts",
]
