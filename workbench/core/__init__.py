"""The bottom layer: it imports nothing else of the package.

=================  ==============================================================================
module             what it holds
=================  ==============================================================================
``checks``         the one validation module: tokens, positions, heads, layers, options
``results``        :class:`Result` (values with named dims) and the figure registry
``persist``        the result protocol: save / load of every result type to one safe file
``metrics``        logit difference and the normalised metric
``components``     head sets, circuits, top-k and layer-matched random head sets
``runtime``        residual -> logits (final norm, unembedding, soft cap), prefix caches
``resources``      the shipped data files
``subsets``        :func:`subset_items`: the items at an index of a dataclass of per-item fields
=================  ==============================================================================
"""
