# Two commands do all the set-up on a fresh machine (see README):
#   make demo    install (uv, pinned by uv.lock) and run the whole workflow on the built-in demo
#   make test    install and run the tests
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
CORES ?= 2

.PHONY: install demo test lint clean-demo

$(UV):
	python3 -m pip install --user --quiet "uv==$(UV_VERSION)"

# uv reads no pip config: torch/torchvision come from the package registry as pinned in uv.lock.
# Bytecode is compiled at install: jobs import torch and Lightning many times over.
install: $(UV)
	$(UV) sync --frozen --compile-bytecode

demo: install
	.venv/bin/snakemake --cores $(CORES) --configfile config/demo.yaml

test: install
	.venv/bin/python -m pytest

lint: install
	.venv/bin/snakemake --lint

clean-demo:
	rm -rf results/demo logs/demo
