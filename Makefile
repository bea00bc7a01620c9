# One command sets up and runs each job on a fresh machine: `make demo`, `make test`.
VENV  ?= .venv
PY    := $(VENV)/bin/python
# Installed first and on its own, so that no dependency can make pip resolve a CUDA build of torch.
# On a machine without the local CPU wheel: make TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0

.PHONY: setup demo test benchmarks
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: setup
	$(VENV)/bin/modelzip demo

test: setup
	$(PY) -m pytest -q

benchmarks: setup
	$(PY) benchmarks/deep_compression.py
	$(PY) benchmarks/soft_weight_sharing.py
	$(PY) benchmarks/structured.py
	$(PY) benchmarks/quantization.py
