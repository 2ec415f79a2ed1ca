# The README's two commands. Both bootstrap .venv on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# CPU build; an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
PLUGINS := $(wildcard plugins/*/pyproject.toml)
STAMP := $(VENV)/.installed
# llama-cpp-python (the llama-cpp backend) builds llama.cpp from source. GGML_NATIVE would compile for the build
# machine's CPU (AVX512/AMX where it has them) and die with an illegal instruction on an AVX2-only one; these
# flags give a portable AVX2 build. pip caches the built wheel (its cache key ignores CMAKE_ARGS: after building
# with other flags, `pip cache remove llama_cpp_python`).
LLAMACPP_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMACPP_STAMP := $(VENV)/.llamacpp

.PHONY: demo test lint bench llamacpp clean-venv

$(STAMP): pyproject.toml $(PLUGINS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet $(TORCH_PIN) -e '.[all]' $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $(STAMP)

# about 4 minutes on 2 cores (`make llamacpp`); make test tries it, and skips the llama.cpp tests where it cannot build
$(LLAMACPP_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" $(BIN)/pip install --quiet $(TORCH_PIN) -e '.[llamacpp]'
	touch $(LLAMACPP_STAMP)

llamacpp: $(LLAMACPP_STAMP)

LLAMACPP_TRY = $(MAKE) --no-print-directory $(LLAMACPP_STAMP) || echo "warning: llama-cpp-python did not build; \
	the llama-cpp backend's tests are skipped"

demo: $(STAMP)
	$(BIN)/supertiny demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint
	@$(LLAMACPP_TRY)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
