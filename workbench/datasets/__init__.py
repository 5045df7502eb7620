"""Prompt generators, one module per phenomenon. Generators import no technique module."""

from .ioi import IOIDataset, ioi_dataset
