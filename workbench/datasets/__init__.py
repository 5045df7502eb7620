"""Prompt generators, one module per phenomenon. Generators import no technique module."""

from .arithmetic import ArithmeticProblems, arithmetic_problems
from .ioi import IOIDataset, ioi_dataset
from .needles import Haystack, Needle, needle_haystacks
from .temporal import TemporalFacts, answer_correct, keep_correct, temporal_facts
