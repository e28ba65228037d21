# Two entry points, both self-contained on a fresh machine:
#   make run   - set up .venv and forecast the shipped ETTh1 file (36 s on 2 idle cores once installed)
#   make test  - set up .venv and run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build is on local disk here; an unpinned torch is a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0 triton==3.7.1
	# the cluster engines of `rlts atari100k run --launcher slurm|ray` too, so that their tests run
	$(PY) -m pip install -q -e '.[dev,slurm,ray]'
	touch $(STAMP)

# The main job: forecast the shipped ETTh1 file (look-back 96, horizon 96; Aaren, DLinear,
# naive) with the default model, 36 s on 2 idle CPU cores; prints the results table. A rerun
# reuses runs/make-run (finished models are skipped; one made with other settings is refused):
# delete it to start over.
run: $(STAMP)
	$(PY) -m rlts.tasks.cli forecast --csv tasks/data/ETTh1.csv --config quick --out runs/make-run

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) scripts/bench_scan.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
