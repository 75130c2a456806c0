# Two commands do all the set-up on a fresh machine (Python 3.10+, Java 17):
#   make demo   # builds .venv, then runs the whole job locally on a tiny offline model
#   make test   # builds .venv, then runs the full test suite
# Shipping:
#   make dist   # the wheel, in dist/ (what the Databricks bundle and spark-submit install)
#   make pack   # dist/dear-rerank-env.tar.gz: a packed environment for spark-submit --archives
.PHONY: setup demo test bench dist pack clean

PY ?= .venv/bin/python
DIST ?= dist
# The environment `make pack` builds. venv-pack links Python, it does not copy it: executors
# need the same Python version, at PACK_PYTHON's prefix or at PACK_PYTHON_PREFIX (e.g. /usr).
# TORCH_INDEX picks a CUDA build of torch, e.g.
# TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128".
PACK_PYTHON ?= python3
PACK_PYTHON_PREFIX ?=
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PACK_ENV ?= build/pack-env

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/dear-rerank demo

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python bench/run.py --mode quick

# A stale build/lib could put deleted modules into the wheel: build from scratch.
dist: setup
	rm -rf build/lib build/bdist.* $(DIST)/dear_rerank-*.whl
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w $(DIST) .
	@ls $(DIST)/dear_rerank-*.whl

pack: dist
	rm -rf $(PACK_ENV) $(DIST)/dear-rerank-env.tar.gz
	$(PACK_PYTHON) -m venv $(PACK_ENV)
	$(PACK_ENV)/bin/python -m pip install -q --upgrade pip
	$(PACK_ENV)/bin/python -m pip install -q $(TORCH_INDEX) "$(TORCH)"
	$(PACK_ENV)/bin/python -m pip install -q -c constraints.txt "$$(ls $(DIST)/dear_rerank-*.whl)[spark,eval,mlflow]"
	$(PY) -m venv_pack -p $(PACK_ENV) -o $(DIST)/dear-rerank-env.tar.gz $(if $(PACK_PYTHON_PREFIX),--python-prefix $(PACK_PYTHON_PREFIX))
	@ls -l $(DIST)/dear-rerank-env.tar.gz

clean:
	rm -rf .venv build dist *.egg-info .pytest_cache
