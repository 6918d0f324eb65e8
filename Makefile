# The README names these targets; each is a thin wrapper over scripts/.
.PHONY: help setup serve test check bench validate soak

help:
	@echo "make serve     set up and start tei-serve on the embedded default model (port 8080)"
	@echo "make test      set up and run lint, types, layering and the test suite (what CI runs)"
	@echo "make check     lint, format check, mypy, import layering (after setup)"
	@echo "make validate  export and validate the offline models, print the fidelity table"
	@echo "make bench     run the benchmark (see README)"
	@echo "make soak      10 minutes at saturation, resident memory sampled (see README)"

setup:
	scripts/setup

serve:
	scripts/serve

test:
	scripts/test

check:
	.venv/bin/ruff check tei_ort tests scripts
	.venv/bin/ruff format --check tei_ort tests
	.venv/bin/mypy
	.venv/bin/lint-imports

validate:
	.venv/bin/tei-export validate --models offline

bench:
	.venv/bin/python -m tei_ort.bench

soak:
	scripts/soak
