# hpcxtal: `make test` sets up and runs the tests; `make campaign` sets up and runs a
# small real campaign on the embedded default (hpcxtal/site_configs/local.yaml).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CAMPAIGN ?= campaigns/demo
export HPCXTAL_SLURM_DIR ?= /tmp/hpcxtal-slurm
# Parsl starts its interchange and workers from PATH: put this environment first.
RUN := PATH=$(CURDIR)/$(BIN):$$PATH

.PHONY: setup slurm test campaign clean-campaign default-model mace-model

setup: $(VENV)/.installed

# torch is installed first and pinned here (setup.cfg only asks for a range, so a cluster
# keeps its own build): an unpinned torch pulls a multi-GB CUDA build. The mpich extra
# gives mpi4py an MPI for the local MPI tests; on a cluster use the site's (docs/CLUSTERS.md).
# The bench extra (optuna) is the perovskite benchmark's TPE baseline, which a test runs.
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,mpich,bench]'
	touch $@

# A real single-node SLURM on loopback for the scheduler tests (needs root; skipped,
# and those tests skip, where it cannot run).
slurm:
	@if [ "$$(id -u)" = 0 ]; then scripts/local_slurm.sh install && scripts/local_slurm.sh start; \
	else echo "not root: no local SLURM; SLURM tests will be skipped"; fi

test: setup slurm
	SLURM_CONF=$(HPCXTAL_SLURM_DIR)/slurm.conf $(RUN) $(BIN)/pytest -q

# sample -> shard -> refine -> rounds -> topology -> relax -> merge -> report, then the
# 10 lowest-energy unique structures as CIF files. Run again: finished stages are kept.
campaign: setup
	test -f $(CAMPAIGN)/campaign.yaml || $(BIN)/hpcxtal init $(CAMPAIGN) --config examples/demo_campaign.yaml
	$(RUN) $(BIN)/hpcxtal run $(CAMPAIGN)
	$(BIN)/hpcxtal db $(CAMPAIGN)/database.h5 --unique-only --top 10 -f cif -o $(CAMPAIGN)/top-cif

clean-campaign:
	rm -rf $(CAMPAIGN)

# Rebuild the generator shipped in hpcxtal/data/ (augmentation + CVAE + VAE baseline).
default-model: setup
	HPCXTAL=$(BIN)/hpcxtal scripts/train_default_model.sh

# Rebuild the carbon MACE model shipped in hpcxtal/data/ (CHGNet labels + mace training).
mace-model: setup
	$(BIN)/python scripts/train_mace_model.py --work build/mace-carbon
