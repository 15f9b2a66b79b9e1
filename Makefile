# `make demo` and `make test` are the README's two set-up commands; both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo

.PHONY: install demo test lint bench-data clean

$(BIN)/pose-toss: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/pose-toss

demo: install
	$(BIN)/pose-toss make-synthetic --config configs/default.yaml --num 500 --seed 0 --out $(DEMO_OUT)/synthetic --overwrite
	@echo "open $(DEMO_OUT)/synthetic/contact_sheet.png to see the figures and their true label covariances"

lint: install
	$(BIN)/ruff check .

# pytest exits 5 when it collected no test: say so plainly and let its own summary line stand,
# rather than hiding it as a pass or reporting a failure that did not happen.
test: lint
	@$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5)"; exit 0; fi; exit $$rc

bench-data: install
	$(BIN)/python tools/bench_data.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache
