"""Prompt generators, one module per phenomenon. Generators import no technique module."""

from .ioi import IOIDataset, ioi_dataset
from .needles import Haystack, Needle, needle_haystacks
