"""The shipped data: haystack filler, temporal facts, the SAE corpus and shipped SAEs, toy weights.

It lives in ``data/`` at the top of the repository and is installed as the package
``workbench.data`` (``[tool.setuptools.package-dir]`` in pyproject.toml maps one to the other,
for a wheel and an editable install alike). Read it through
:func:`workbench.core.resources.data_path`. Each folder has a README of its provenance.
"""
