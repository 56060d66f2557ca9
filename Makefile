# pynotes: `make test` and `make bench` set everything up on a fresh machine (a .venv with torch,
# the extension built in place) and do nothing again that is already done.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
export MAX_JOBS ?= $(JOBS)

EXT := $(shell ls pynotes/_C*.so 2>/dev/null)
SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh')

.PHONY: test bench build cpp gpu-check clean

test: build
	$(PY) -m pytest -q tests

bench: build $(VENV)/.bench-deps
	$(PY) -m benchmarks --quick

build: $(VENV)/.deps pynotes/.built

# The extension, rebuilt when a source, setup.py or the build flavour (FORCE_CUDA, FORCE_CPU,
# TORCH_CUDA_ARCH_LIST) changes; ninja recompiles only what changed.
pynotes/.built: $(VENV)/.deps setup.py $(SOURCES) .build-flavour
	$(PY) setup.py build_ext --inplace --force  # ninja still skips up-to-date objects
	touch $@

.build-flavour: FORCE
	@echo "FORCE_CUDA=$(FORCE_CUDA) FORCE_CPU=$(FORCE_CPU) TORCH_CUDA_ARCH_LIST=$(TORCH_CUDA_ARCH_LIST)" > $@.new
	@cmp -s $@.new $@ && rm $@.new || mv $@.new $@

$(VENV)/.deps: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch numpy pytest ninja pybind11 setuptools wheel
	# Optional: pynotes.gbdt's scikit-learn, and peers the tests compare against (skipped when
	# missing).
	for p in "scikit-learn>=1.6" torch-geometric xgboost; do \
	  $(PY) -m pip install -q "$$p" || echo "$$p not installed: its tests skip"; done
	touch $@

$(VENV)/.bench-deps: $(VENV)/.deps
	$(PY) -m pip install -q matplotlib "scikit-learn>=1.6" torch-geometric xgboost lightgbm
	touch $@

# The same csrc/ as a C++ library against libtorch (CMakeLists.txt), and the example program
# that calls an op through it.
cpp: $(VENV)/.deps
	eval cmake -S . -B build-cmake -DCMAKE_BUILD_TYPE=Release \
	  $$($(PY) tools/cuda_toolkit.py --cmake-args)
	cmake --build build-cmake -j $(JOBS)
	./build-cmake/group_norm_example

# On a machine with a GPU and its own torch, in under 9 minutes: build in place for that GPU,
# CUDA tests, compute-sanitizer, quick GPU benchmarks; at most 5 files go to OUT
# (benchmarks/gpu_check.sh says which).
gpu-check:
	bash benchmarks/gpu_check.sh $(or $(OUT),gpu-check-results)

clean:
	rm -rf build build-cmake pynotes/_C*.so pynotes/.built .build-flavour
	find . -name __pycache__ -prune -exec rm -rf {} +

FORCE:
