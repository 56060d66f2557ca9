# pynotes: `make test` and `make bench` set everything up on a fresh machine (a .venv with torch,
# the extension built in place) and do nothing again that is already done.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
export MAX_JOBS ?= $(JOBS)

EXT := $(shell ls pynotes/_C*.so 2>/dev/null)
SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh')

.PHONY: test bench build cpp sanitize test-cuda-emu gpu-check clean

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
	# Optional: pynotes.gbdt's scikit-learn, peers the tests compare against, and expecttest
	# (torch's own module tests import it); their tests skip when missing.
	for p in "scikit-learn>=1.6" torch-geometric xgboost hypothesis pandas expecttest; do \
	  $(PY) -m pip install -q "$$p" || echo "$$p not installed: its tests skip"; done
	touch $@

$(VENV)/.bench-deps: $(VENV)/.deps
	$(PY) -m pip install -q matplotlib "scikit-learn>=1.6" torch-geometric xgboost lightgbm pandas
	touch $@

# The same csrc/ as a C++ library against libtorch (CMakeLists.txt), and the example program
# that calls an op through it.
cpp: $(VENV)/.deps
	eval cmake -S . -B build-cmake -DCMAKE_BUILD_TYPE=Release \
	  $$($(PY) tools/cuda_toolkit.py --cmake-args)
	cmake --build build-cmake -j $(JOBS)
	./build-cmake/group_norm_example

# Sanitized builds load in an uninstrumented Python with the sanitizer runtimes preloaded
# (leak checking off: the interpreter keeps memory on purpose); the first error stops the run.
SANITIZER_ENV = LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
  ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=0 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# The CPU extension once more with AddressSanitizer and UndefinedBehaviorSanitizer, as a copy
# of the package in build-sanitize/lib, and a test subset under it: every op family forward and
# backward, odd and zero sizes, and the property tests. Python itself is not instrumented:
# libasan is preloaded and leak checking is off (the interpreter keeps memory on purpose). The
# subset runs three times: with the portable (DEFAULT) kernels, whose loads and stores ASan
# sees (it does not see inside AVX2/AVX-512 masked loads and gathers: an overrun there goes
# unreported), with the AVX2 ones (a CPU without AVX-512) and with this CPU's kernels.
SANITIZE_TESTS := tests/test_properties.py tests/test_bad_input.py \
  "tests/test_group_norm.py::test_forward_matches_torch" \
  "tests/test_group_norm.py::test_backward_matches_torch" tests/test_group_norm.py::test_zero_size \
  tests/test_lstm.py::test_lstm_small_and_odd_sizes tests/test_lstm.py::test_layer_op_zero_size \
  tests/test_lstm.py::test_lstm_packed_unsorted_lengths tests/test_lstm.py::test_cell_and_layer_half \
  tests/test_gcn.py::test_propagate_degenerate_graphs tests/test_gcn.py::test_gradients_match_dense_autograd \
  tests/test_iwae.py tests/test_gbdt.py::test_histogram_matches_numpy_add_at \
  tests/test_gbdt.py::test_best_splits_match_brute_force tests/test_gbdt.py::test_empty_inputs \
  tests/test_gbdt.py::test_advance_and_predict_match_a_python_walk \
  tests/test_gbdt.py::test_few_rows_walk_equals_blocks \
  tests/test_gbdt.py::test_block_walk_matches_the_reference \
  tests/test_gbdt_categorical.py::test_predict_matches_the_reference_walk \
  tests/test_gbdt.py::test_predict_checks_an_ensemble_changed_after_its_check \
  tests/test_gbdt.py::test_grow_tree_row_wise_equals_col_wise tests/test_memory.py
sanitize: $(VENV)/.deps
	rm -rf build-sanitize/lib/pynotes
	FORCE_CPU=1 PYNOTES_SANITIZE=1 $(PY) setup.py build_ext --build-lib build-sanitize/lib \
	  --build-temp build-sanitize/temp
	cp -r pynotes/*.py $$(dirname pynotes/*/__init__.py) build-sanitize/lib/pynotes/
	cd build-sanitize && export PYTHONPATH=lib $(SANITIZER_ENV) && \
	  $(abspath $(PY)) -P -c "import pynotes; assert 'build-sanitize' in pynotes.__file__" && \
	  for isa in "ATEN_CPU_CAPABILITY=default" "ATEN_CPU_CAPABILITY=avx2" \
	      "-u ATEN_CPU_CAPABILITY"; do \
	    env $$isa $(abspath $(PY)) -P -m pytest -q -p no:cacheprovider --rootdir .. \
	      -k "not cuda" $(addprefix ../,$(SANITIZE_TESTS)) || exit 1; \
	  done

# The CUDA kernels, as written, run on the CPU (tools/cuda_emu): csrc's CUDA files rewritten
# into host C++ on a CUDA emulator (fibers for threads, counted barriers, mask- and
# width-checked shuffles, poisoned shared memory, launch limits), built with ASan and UBSan
# into build-cuda-emu/, then tests/test_cuda_emu.py against the CPU kernels and the
# references. Ends with "cuda-emu: E/T __global__ kernels executed; P passed, F failed".
test-cuda-emu: build
	$(PY) tools/cuda_emu/build.py build-cuda-emu
	$(SANITIZER_ENV) PYNOTES_CUDA_EMU=$(abspath build-cuda-emu/lib) $(PY) tools/cuda_emu/run_tests.py

# On a machine with a GPU and its own torch, in under 9 minutes: build in place for that GPU,
# CUDA tests, compute-sanitizer, quick GPU benchmarks; at most 5 files go to OUT
# (benchmarks/gpu_check.sh says which).
gpu-check:
	bash benchmarks/gpu_check.sh $(or $(OUT),gpu-check-results)

clean:
	rm -rf build build-cmake build-sanitize build-cuda-emu pynotes/_C*.so pynotes/.built .build-flavour
	find . -name __pycache__ -prune -exec rm -rf {} +

FORCE:
