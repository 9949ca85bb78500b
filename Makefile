# hdmoe-pipe: `make all` (set-up, build, run the demo) and `make test` are all a new user needs.
SHELL := /bin/bash
.DEFAULT_GOAL := all

DATASET ?= demo
# The Python environment whose PyPI torch supplies libtorch; created by `make setup`.
VENV ?= .venv
CARGO := scripts/cargo.sh $(VENV)
STAMP := $(VENV)/.hdmoe-setup-stamp
# The dev profile (see Cargo.toml) shares its build with `make test`; the heavy numeric work is
# inside libtorch, which runs at the same speed in every profile.
BIN := $(or $(CARGO_TARGET_DIR),target)/debug/hdmoe-pipe
RUN_DIR := runs/$(DATASET)

.PHONY: all setup build test bench clean

# Idempotent: reruns only when the set-up script changes or the environment is gone.
setup: $(STAMP)
$(STAMP): scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

build: setup
	$(CARGO) build

# Until the tile, features, mri and fit stages land, `all` runs the stages that exist: the
# resolved configuration, the cohort check (labels, time bins, splits), the genomic groups and,
# for the demo, the report stage on real predictions of a clinical score (README, "What works
# today").
DEMO_PREDICTIONS := fixtures/demo/gbsg2_pnodes_predictions.csv

all: build
	$(BIN) config --config pipelines/$(DATASET).yaml
	mkdir -p $(RUN_DIR)
	$(BIN) cohort --config pipelines/$(DATASET).yaml --labels-out $(RUN_DIR)/labels.csv
	$(BIN) genomics --config pipelines/$(DATASET).yaml
	$(if $(filter demo,$(DATASET)),$(BIN) report --config pipelines/$(DATASET).yaml \
	  --predictions $(DEMO_PREDICTIONS) --out $(RUN_DIR)/report)
	@echo "outputs: $(RUN_DIR)/"

test: setup
	$(CARGO) test
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

bench: setup
	$(CARGO) bench --profile dev --bench survival --bench genomics --bench mri

clean:
	rm -rf target runs cache
