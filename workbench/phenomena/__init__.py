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
``answers``        what the text phenomena share: answer tokens, keeping what a model answers
=================  ==============================================================================
"""

from workbench.phenomena.answers import NothingCorrect, answer_correct, keep_correct
from workbench.phenomena.arithmetic.dataset import ArithmeticProblems, arithmetic_problems
from workbench.phenomena.ioi.dataset import IOIDataset, ioi_dataset
from workbench.phenomena.retrieval.dataset import Haystack, Needle, needle_haystacks
from workbench.phenomena.temporal.dataset import TemporalFacts, temporal_facts

__all__ = [
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
