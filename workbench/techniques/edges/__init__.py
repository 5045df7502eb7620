"""Edge-level circuit discovery: the computation graph, EAP / EAP-IG scores, circuits, faithfulness.

- :mod:`.graph`: nodes and edges of a ``HookedTransformer`` (grouped-query and post-norm aware),
  :class:`Graph` (scores, circuits: top-n and greedy growth from the logits, head-level circuits).
- :mod:`.attribution`: :func:`attribute_edges` (``"eap"``, ``"eap-ig"``, ``"eap-ig-activations"``).
- :mod:`.evaluation`: edge patching of a circuit (:class:`EdgePatcher`), :func:`faithfulness_curve`
  with MIB's CPR and CMD, and random circuits of the same sizes.
"""

from workbench.techniques.edges.attribution import METHODS, attribute_edges
from workbench.techniques.edges.evaluation import (
    MIB_FRACTIONS,
    EdgePatcher,
    FaithfulnessCurve,
    areas,
    evaluate_circuit,
    faithfulness_curve,
)
from workbench.techniques.edges.graph import Graph, Layout

__all__ = [
    "METHODS",
    "MIB_FRACTIONS",
    "EdgePatcher",
    "FaithfulnessCurve",
    "Graph",
    "Layout",
    "areas",
    "attribute_edges",
    "evaluate_circuit",
    "faithfulness_curve",
]
