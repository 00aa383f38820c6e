# Two commands do everything on a fresh machine:
#   make demo   – create .venv, install pinned deps, start the Streamlit app
#   make test   – create .venv, install pinned deps, run lint + the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Benchmarks run in .venv-bench: the project's .venv (shared through a .pth file, so torch is
# not installed twice) plus the libraries we compare against, kept out of the project's env.
# (Defined before the rules that use them: make expands a rule's prerequisites when it reads it.)
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/streamlit run app.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) lint
	$(PY) -m pytest -q -n 2

bench: $(BENCH_STAMP)
	PYTHONPATH=. $(BENCH_VENV)/bin/python bench/cam_speed.py
	PYTHONPATH=. $(BENCH_VENV)/bin/python bench/eval_speed.py
	PYTHONPATH=. $(BENCH_VENV)/bin/python bench/recipes.py
	PYTHONPATH=. $(BENCH_VENV)/bin/python bench/box_resolution.py
	PYTHONPATH=. $(BENCH_VENV)/bin/python bench/precision.py
	PYTHONPATH=. $(BENCH_VENV)/bin/python bench/train_speed.py
	PYTHONPATH=. $(BENCH_VENV)/bin/python bench/synthetic_settings.py
	PYTHONPATH=. $(BENCH_VENV)/bin/python bench/max_dets.py
	PYTHONPATH=. $(BENCH_VENV)/bin/python bench/metrics_tail.py

$(BENCH_STAMP): $(STAMP) bench/requirements.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(VENV)/bin/python -c "import site; print(site.getsitepackages()[0])" > \
	  $$($(BENCH_VENV)/bin/python -c "import site; print(site.getsitepackages()[0])")/camloc_base.pth
	$(BENCH_VENV)/bin/python -m pip install --quiet -r bench/requirements.txt
	touch $(BENCH_STAMP)

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .ruff_cache
