# fedcrime: one-command set-up, build, test and demo.
#
#   make demo    bootstrap libtorch, build, run the main job on synthetic data
#   make test    bootstrap libtorch, build, fmt --check, clippy -D warnings, all tests
#   make build   release binaries into target/release
#   make chaos   the chaos suite: faults injected into real server and station
#                processes (.ci/chaos/chaos.py; ~15 min, not part of make test)
#
# libtorch comes from PyPI's torch==2.13.0 in a cached virtualenv
# (FEDCRIME_TORCH_VENV, default ~/.cache/fedcrime/torch-2.13.0), installed once.

SHELL := /bin/bash
FEDCRIME_TORCH_VENV ?= $(HOME)/.cache/fedcrime/torch-2.13.0
export FEDCRIME_TORCH_VENV
export LIBTORCH_USE_PYTORCH := 1
export VIRTUAL_ENV := $(FEDCRIME_TORCH_VENV)
export PATH := $(FEDCRIME_TORCH_VENV)/bin:$(HOME)/.cargo/bin:$(PATH)

CARGO ?= cargo
STAMP := $(FEDCRIME_TORCH_VENV)/.fedcrime-ok
DEMO_OUT ?= runs/demo

.PHONY: all bootstrap build demo test fmt clippy layering docs check clean env chaos chaos-smoke

all: build

$(STAMP):
	@.ci/bootstrap-libtorch >/dev/null
	@touch $(STAMP)

bootstrap: $(STAMP)

build: bootstrap
	$(CARGO) build --release --workspace --bins

demo: build
	@mkdir -p $(DEMO_OUT)
	target/release/fedcrime-sim synth --rows 200000 --seed 7 --out $(DEMO_OUT)/synthetic.csv.gz
	target/release/fedcrime-sim inspect --data $(DEMO_OUT)/synthetic.csv.gz
	target/release/fedcrime-sim simulate --out $(DEMO_OUT)

fmt:
	$(CARGO) fmt --all -- --check

clippy: bootstrap
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# The crate graph's promises (README, Design): the data pipeline, parameters,
# wire codec and round engine link no libtorch; the wire codec and the round
# engine no async runtime or sockets.
layering:
	@for c in fedcrime-data fedcrime-params fedcrime-wire fedcrime-fl fedcrime-files fedcrime-identity fedcrime-privacy fedcrime-audit fedcrime-secagg; do \
	  if $(CARGO) tree -p $$c -e normal --prefix none | grep -qE '^(tch|torch-sys) '; then \
	    echo "layering: $$c links libtorch"; exit 1; fi; done
	@for c in fedcrime-wire fedcrime-fl fedcrime-privacy fedcrime-audit; do \
	  if $(CARGO) tree -p $$c -e normal --prefix none | grep -qE '^(tokio|quinn|rustls) '; then \
	    echo "layering: $$c links an async runtime or the transport"; exit 1; fi; done
	@echo "layering: ok"

# The API docs build without a broken or private link.
docs: bootstrap
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --locked

# One libtorch (OpenMP) thread per test: two tests spinning several OpenMP
# threads each on two cores run ~100x slower.
test: export OMP_NUM_THREADS = 1
test: bootstrap fmt layering clippy docs
	@# Tests run one at a time: several check that two runs replay bit for
	@# bit, and libtorch has one process-wide generator (dropout) and one
	@# thread-count setting that concurrent tests would share.
	$(CARGO) test --workspace --locked -- --test-threads=1
	@$(MAKE) --no-print-directory chaos-smoke

# Bad certificates, two server kills with --resume, a duplicate identity,
# and a station's prediction service killed -9 five times while it ingests
# (every acknowledged incident must be there after each restart): real
# processes of the debug binaries the tests just built (~60 s).
chaos-smoke: export OMP_NUM_THREADS = 1
chaos-smoke: bootstrap
	$(CARGO) build --workspace --bins --locked
	python3 .ci/chaos/chaos.py --smoke --bin target/debug
	python3 .ci/chaos/serve_durability.py --strict --bin target/debug

# Every scenario, on release binaries; the results table goes to
# target/chaos.md (docs/reliability.md keeps the last one reviewed).
chaos: export OMP_NUM_THREADS = 1
chaos: build
	python3 .ci/chaos/chaos.py --bin target/release --table target/chaos.md

env:
	@echo "export LIBTORCH_USE_PYTORCH=1 VIRTUAL_ENV=$(FEDCRIME_TORCH_VENV) PATH=$(FEDCRIME_TORCH_VENV)/bin:\$$PATH"

clean:
	$(CARGO) clean
