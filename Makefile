# One-command set-up: every target creates the virtual environment it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo demo-single test lint format docs bench clean

install: $(STAMP)

# constraints.txt pins every package (torch's CUDA build runs on CPU-only machines too).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/nst render manifests/demo.yaml

demo-single: $(STAMP)
	$(BIN)/nst stylize nst_engine/samples/tubingen.jpg nst_engine/samples/starry_night.jpg \
		--output out/single/tubingen_starry_night.png --size 256 --iterations 300 \
		--stats-json out/single/tubingen_starry_night.json

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

# The documentation site (docs/, mkdocs.yml) into site/; any warning fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python benchmarks/engine_speed.py --sizes 256,512
	$(BIN)/python benchmarks/ray_overhead.py

clean:
	rm -rf $(VENV) out site .pytest_cache .ruff_cache
