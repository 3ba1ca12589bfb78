# make test        create .venv (tested torch pinned below) and run the whole test suite
# make reproduce   run the full pipeline: PROFILE=paper|quick|smoke, DATASET=cifar10|fashion-mnist|...
# make smoke       the pipeline at the smoke profile (minutes on a CPU)
# make lab         JupyterLab on notebooks/
# make env         only create the environment
# make clean       remove build outputs and cached artifacts (keeps .venv and data/)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The tested releases; pyproject.toml declares a compatible range.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
PROFILE ?= paper
DATASET ?=
OVERRIDES := $(if $(DATASET),dataset=$(DATASET))

.PHONY: env test reproduce smoke lab clean distclean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e ".[dev]" $(TORCH_PIN)
	touch $@

test: env
	$(PY) -m pytest

reproduce: env
	$(PY) -m cmi train --profile $(PROFILE) $(OVERRIDES)

smoke:
	$(MAKE) reproduce PROFILE=smoke

lab: env
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf build artifacts .pytest_cache
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
