"""Techniques: one module per technique, each on top of :mod:`workbench.core` and :mod:`workbench.models`.

=================  ==============================================================================
module             technique
=================  ==============================================================================
``patching``       exact activation patching (residual, attention, MLP, head outputs)
``attribution``    attribution patching (first-order estimate of patching)
``path_patching``  path patching: senders to receivers
``ablation``       zero / mean / resample ablation, circuit faithfulness, completeness, minimality
``lens``           the logit lens
``dla``            direct logit attribution
``attention``      attention patterns
``heads``          head scores (induction, previous-token, retrieval, ...)
``edges``          edge-level circuit discovery (EAP, EAP-IG, faithfulness curves)
``sae``            SAE features on SAELens
=================  ==============================================================================
"""
