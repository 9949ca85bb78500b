# hdmoe-pipe: `make all` (set-up, build, run the demo) and `make test` are all a new user needs.
SHELL := /bin/bash
.DEFAULT_GOAL := all

DATASET ?= demo
# The Python environment whose PyPI torch supplies libtorch; created by `make setup`.
VENV ?= .venv
CARGO := scripts/cargo.sh $(VENV)
STAMP := $(VENV)/.hdmoe-setup-stamp
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
# `make all` runs the release build; tests and benchmarks share the dev build (see Cargo.toml).
RELEASE_BIN := $(TARGET_DIR)/release/hdmoe-pipe
BIN := $(TARGET_DIR)/debug/hdmoe-pipe

.PHONY: all setup build release test test-slurm chaos bench tcga-table bench-tcga bench-compare clean

# Idempotent: reruns only when the set-up script changes or the environment is gone.
setup: $(STAMP)
$(STAMP): scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

build: setup
	$(CARGO) build

release: setup
	$(CARGO) build --release --bin hdmoe-pipe

# Every stage pipelines/$(DATASET).yaml enables (tile, features, genomics, mri, fit), then the
# report; ends with the C-index table and the report's path. demo_lc first writes its MRI cases.
all: release
	@if [ "$(DATASET)" = demo_lc ]; then $(RELEASE_BIN) demo-mri --config pipelines/demo_lc.yaml; fi
	$(RELEASE_BIN) run --config pipelines/$(DATASET).yaml

test: setup
	$(CARGO) test
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# pipelines/slurm/ on a real single-node Slurm cluster started here (installs slurm-wlm and munge
# with apt when missing): the demo as job arrays of 3 shards must equal an unsharded run.
test-slurm: build
	bash scripts/test_slurm.sh $(BIN)

# kill -9 every stage (tile, features, genomics, demo-mri, mri, fit, report) at random moments,
# five times each, on the whole demo cohort, then rerun: outputs must equal an uninterrupted
# run's. `make test` runs the same test on 6 slides with two kills per stage.
chaos: setup
	HDMOE_CHAOS_FULL=1 $(CARGO) test --test it chaos:: -- --nocapture

# The large 40x slide of the tile benchmark (81920 x 61440, ~0.8 GB) is generated once from the
# real H&E tiles in ../shared/data/images; the Python packages that write it go into the venv.
SHARED_IMAGES ?= ../shared/data/images
LARGE_SLIDE := bench-out/large40x.svs
$(LARGE_SLIDE): fixtures/slides/make_slides.py | setup
	@if [ -d $(SHARED_IMAGES) ]; then \
	  $(VENV)/bin/pip install -q numpy pillow tifffile imagecodecs && mkdir -p bench-out && \
	  $(VENV)/bin/python fixtures/slides/make_slides.py $(SHARED_IMAGES) --large $@.partial && mv $@.partial $@; \
	else echo "no $(SHARED_IMAGES): the tile benchmark runs on the fixture slides only"; fi

# CLAM_DIR (a CLAM checkout) and CLAM_PYTHON (a Python with CLAM's requirements) add CLAM's own
# timings and patch counts to the tile table.
# HDMOE_OFFICIAL (a checkout of github.com/ZJUMAI/HDMoE) adds the official code's epoch beside
# fit's (benches/fit_epoch.rs; the Python packages scripts/bench_fit_official.py needs go into the venv).
HDMOE_OFFICIAL ?=
OFFICIAL_PACKAGES := 'pandas<3' scikit-learn scikit-survival tqdm tensorboard einops h5py
bench: setup $(LARGE_SLIDE)
	@if [ -n "$(HDMOE_OFFICIAL)" ]; then $(VENV)/bin/pip install -q $(OFFICIAL_PACKAGES); fi
	HDMOE_BENCH_OFFICIAL=$(HDMOE_OFFICIAL) HDMOE_BENCH_TORCH_PYTHON=$(VENV)/bin/python $(CARGO) bench --profile dev --bench survival --bench genomics --bench mri --bench fit --bench fit_epoch --bench tile --bench features
	@$(MAKE) --no-print-directory tcga-table

# The TCGA rows of runs `make bench-tcga` finished (training them takes hours, so `bench` only
# reports them).
tcga-table:
	@if [ -d ../shared/data/tcga ]; then \
	  echo "| study | model | epochs | last-epoch C-index | best-epoch C-index (optimistic) | paper | s/epoch |"; \
	  echo "|---|---|---:|---|---|---:|---:|"; \
	  for job in "blca snn" "brca snn" "blca hdmoe" "brca hdmoe"; do \
	    REPORT_ONLY=1 scripts/bench_tcga.sh $(BIN) ../shared/data/tcga $$job $(EPOCHS); done; \
	else echo "no ../shared/data/tcga: no TCGA table"; fi

# Genomics-only HDMoE and the SNN baseline on the real TCGA tables (needs ../shared/data/tcga;
# about 40 minutes for BLCA HDMoE, two hours for BRCA HDMoE on 2 CPU cores). EPOCHS=30 is the
# paper's schedule; JOBS folds train at once, each in its own process (see scripts/bench_tcga.sh).
EPOCHS ?= 30
JOBS ?= 2
# Table 2's genomics-only rows (SNN, SNNTrans, genomics-only HDMoE) on the real BLCA and BRCA
# tables, 30 epochs, by `hdmoe-pipe compare` (needs ../shared/data/tcga; resumable, hours).
bench-compare: release
	@if [ -d ../shared/data/tcga ]; then \
	  JOBS=$(JOBS) scripts/bench_compare.sh $(RELEASE_BIN) ../shared/data/tcga $(EPOCHS); \
	else echo "no ../shared/data/tcga: no comparison"; fi

bench-tcga: build
	@echo "| study | model | epochs | last-epoch C-index | best-epoch C-index (optimistic) | paper | s/epoch |"
	@echo "|---|---|---:|---|---|---:|---:|"
	@for job in "blca snn" "brca snn" "blca hdmoe" "brca hdmoe"; do \
	  JOBS=$(JOBS) scripts/bench_tcga.sh $(BIN) ../shared/data/tcga $$job $(EPOCHS); done

clean:
	rm -rf target runs cache data/demo_lc
