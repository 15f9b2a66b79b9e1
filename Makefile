# `make demo` and `make test` are the README's two set-up commands; both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo

.PHONY: install demo test test-fast lint bench clean

$(BIN)/pose-toss: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/pose-toss

# The main job: two-stage training (W2 with pseudo-labels, then NLL-TIC) on the built-in synthetic
# data, then evaluation with every metric, a report and pictures of the predicted joint covariances.
demo: install
	$(BIN)/pose-toss train --config configs/demo.yaml --out $(DEMO_OUT)/run --overwrite
	$(BIN)/pose-toss eval --checkpoint $(DEMO_OUT)/run --data synthetic --out $(DEMO_OUT)/eval --overwrite --flip-test

lint: install
	$(BIN)/ruff check .

# pytest exits 5 when it collected no test: nothing was tested, which is neither a pass nor a failure.
# Say so plainly and keep pytest's own exit code (in .pytest-exit-code too, as make reports any failure as 2).
test: lint
	@$(BIN)/python -m pytest -q; rc=$$?; echo $$rc > .pytest-exit-code; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5): nothing was tested"; fi; exit $$rc

# Everything but the tests marked slow (training runs, two processes, ONNX, subprocesses, end to end): a
# minute or two while working; `make test` (what CI runs) runs them all.
test-fast: lint
	@$(BIN)/python -m pytest -q -m "not slow"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5): nothing was tested"; fi; exit $$rc

bench: install
	$(BIN)/pose-toss bench --out runs/bench --overwrite

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache
