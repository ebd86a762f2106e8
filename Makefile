# hpcxtal: `make test` sets up and runs the tests; `make campaign` sets up and runs a
# small real campaign on the embedded default (site_configs/local.yaml).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CAMPAIGN ?= campaigns/demo

.PHONY: setup test campaign clean-campaign

setup: $(VENV)/.installed

# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

test: setup
	$(BIN)/pytest -q

campaign: setup
	$(BIN)/hpcxtal init $(CAMPAIGN) --shards 2 || test -f $(CAMPAIGN)/campaign.yaml
	$(BIN)/hpcxtal import $(CAMPAIGN)
	$(BIN)/hpcxtal shard $(CAMPAIGN)
	$(BIN)/hpcxtal topology $(CAMPAIGN)
	$(BIN)/hpcxtal export $(CAMPAIGN)/pool.h5 -f cif -o $(CAMPAIGN)/export/cif
	$(BIN)/hpcxtal status $(CAMPAIGN)

clean-campaign:
	rm -rf $(CAMPAIGN)
