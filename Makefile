# Two commands do all the set-up on a fresh machine (Python 3.10+, Java 17):
#   make demo   # builds .venv, then runs the whole job locally on a tiny offline model
#   make test   # builds .venv, then runs the full test suite
.PHONY: setup demo test bench clean

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/dear-rerank demo

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python bench/run.py --mode quick

clean:
	rm -rf .venv build *.egg-info .pytest_cache
