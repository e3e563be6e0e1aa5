# Two commands do all the set-up on a fresh machine (see README):
#   make demo    install (uv, pinned by uv.lock), run the whole workflow on the built-in demo, build its report and
#                print the answer and where the report is
#   make test    install and run the tests (first, as root with apt-get: a single-node SLURM and Chromium; it says
#                so before it starts, and `make test SLURM=no BROWSER=no` leaves the machine alone)
#   make report  the HTML report of CONFIG's results (the demo's by default) and the answer in the terminal
#   make plan    jobs per rule and the GPU/CPU-hours the SLURM profile would request for the full study
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
CORES ?= 2
# `make test SLURM=no` skips the SLURM set-up (the SLURM tests then skip unless a SLURM already answers);
# `BROWSER=no` skips installing Chromium (the report test then skips unless it is installed).
SLURM ?= auto
BROWSER ?= auto
# The config whose results `make report` reports (`make report CONFIG=config/config.yaml` for the study).
CONFIG ?= config/demo.yaml

.PHONY: install demo report test test-notice lint clean-demo slurm browser plan

# uv itself from PyPI with the standard library only: `pip install --user` is refused by an externally managed
# Python (Debian/Ubuntu, PEP 668) and some systems have no pip at all.
$(UV):
	python3 tools/get_uv.py $(UV_VERSION) $@

# uv reads no pip config: torch/torchvision come from the package registry as pinned in uv.lock.
# Bytecode is compiled at install: jobs import torch and Lightning many times over.
install: $(UV)
	$(UV) sync --frozen --compile-bytecode

demo: install
	.venv/bin/snakemake --cores $(CORES) --configfile config/demo.yaml
	@$(MAKE) --no-print-directory report CONFIG=config/demo.yaml

# One self-contained HTML file, <results>/report.html (Snakemake's report: the answer on its landing page, the
# table, curves, the listening gallery), then the answer, the runs and where the report is, printed.
report:
	.venv/bin/snakemake --report "$$(.venv/bin/python -m i2a.report.summary --configfile $(CONFIG) --report-path)" \
		--configfile $(CONFIG)
	@.venv/bin/python -m i2a.report.summary --configfile $(CONFIG)

# test-notice first: what the set-up will install and start as root, before anything runs.
test: test-notice install $(if $(filter no,$(SLURM)),,slurm) $(if $(filter no,$(BROWSER)),,browser)
	.venv/bin/python -m pytest

test-notice:
	@bash .ci/notice.sh $(SLURM) $(BROWSER)

# A single-node SLURM (munge, MariaDB, slurmdbd, slurmctld, slurmd; partitions cpu and gpu) for the SLURM tests.
# Only as root with apt-get; does nothing elsewhere. About a second when it is already up.
slurm:
	bash .ci/slurm/setup.sh

# Debian's Chromium + ChromeDriver for the report test. Only as root with apt-get; nothing when installed.
browser:
	bash .ci/browser/setup.sh

# What the full study would request on SLURM (profiles/slurm), without running anything; see README.
plan: install
	.venv/bin/i2a plan results/table.csv

lint: install
	.venv/bin/snakemake --lint

clean-demo:
	rm -rf results/demo logs/demo
