# make test        create .venv (tested torch pinned below), run the unit tests and validate the notebooks
# make reproduce   run the numbered notebooks with papermill; default PROFILE=quick: Fashion-MNIST,
#                  ~45 min on 2 cores (AMD EPYC; 50 min on the Intel machines).
#                  PROFILE=paper|medium|quick|smoke (and paper-|medium-|quick-authors), DATASET=cifar10|fashion-mnist (default: the profile's),
#                  SET="train.epochs=3 cmi.n_samples=64" for any other config field
# make smoke       the pipeline at the smoke profile (minutes on a CPU)
# make verify      a fresh clone of HEAD runs the notebooks of `make reproduce` (PROFILE, DATASET, SET) from an empty cache in
#                  VERIFY_DIR, then every table is compared with the committed one outside timing and hardware
#                  columns (cmi.compare): run it on the machine type that made the committed tables, or name the
#                  folder committed for this machine type, when the profile's own folder was made on another:
#                  VERIFY_AGAINST=figures/<folder>
# make controls    the controls study (both protocols, criteria at equal counts, sensitivity, saturation): PROFILE, DATASET, SET
# make loan-kit    what a lent GPU lacks, into .device/ (git-ignored): Torch-Pruning and pyclustering wheels for its
#                  Python 3.12, the Fashion-MNIST files; then run `python3 -m cmi.loan --kit .device ...` there (cmi/loan.py)
# make lab         JupyterLab on notebooks/
# make strip       strip committed notebooks of outputs (except NBVAL_CHECK_OUTPUT cells) and volatile metadata
# make env         only create the environment
# make readme      refresh the README and docs/ tables from the files in figures/ (<!-- include: ... --> blocks)
# make clean       remove build outputs and cached artifacts (keeps .venv and data/)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The tested releases; pyproject.toml declares a compatible range.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
PROFILE ?= quick
VERIFY_DIR ?= /tmp/cmi-verify
VERIFY_AGAINST ?=
DATASET ?=
SET ?=
OVERRIDES := $(if $(DATASET),dataset=$(DATASET)) $(SET)
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
BUILD := build/$(PROFILE)$(if $(DATASET),-$(DATASET))
# papermill with the notebooks' parameters and an encrypted kernel connection (cmi/notebook.py).
# Progress bars refresh every 30 s inside executed notebooks, which store every refresh.
PAPERMILL := TQDM_MININTERVAL=30 $(abspath $(PY)) -m cmi.notebook --profile $(PROFILE) \
	$(if $(DATASET),--dataset $(DATASET)) $(if $(SET),--set "$(SET)")

.PHONY: env test reproduce controls smoke verify loan-kit lab strip readme clean distclean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e ".[dev]" $(TORCH_PIN)
	touch $@

test: env
	CMI_PROFILE=smoke $(PY) -m pytest --nbval-lax tests notebooks

reproduce: env
	@$(PY) -m cmi estimate --check-data --profile $(PROFILE) $(OVERRIDES)
	@mkdir -p $(BUILD)
	@start=$$(date +%s); $(PAPERMILL) $(NOTEBOOKS) $(BUILD)/ && echo "make reproduce PROFILE=$(PROFILE)" \
		"$(DATASET): $$(( $$(date +%s) - start )) s; figures and tables in figures/"

controls: env
	$(PY) -m cmi controls --profile $(PROFILE) $(OVERRIDES)

smoke:
	$(MAKE) reproduce PROFILE=smoke

# The clone runs the notebooks as `reproduce` does, on this checkout's environment and data, importing its own
# package (PYTHONPATH) and caching in its own artifacts/. The profile's folder is deleted in the clone first, so a
# table the run no longer writes shows up as missing; the comparison reads the clone's figures/ as committed
# (git archive) and as rewritten. Profiles whose figures are not committed (smoke) have nothing to compare.
VERIFY_ABS = $(abspath $(VERIFY_DIR))
verify: env
	rm -rf $(VERIFY_ABS) && git clone -q . $(VERIFY_ABS) && mkdir -p $(VERIFY_ABS)/$(BUILD) $(VERIFY_ABS)/build/committed
	git -C $(VERIFY_ABS) archive HEAD figures | tar -x -C $(VERIFY_ABS)/build/committed
	cd $(VERIFY_ABS) && unset CMI_FIGURES CMI_CONFIGS && export PYTHONPATH=$(VERIFY_ABS) \
		CMI_ARTIFACTS=$(VERIFY_ABS)/artifacts $(if $(wildcard data),CMI_DATA=$${CMI_DATA:-$(CURDIR)/data}) && \
		rm -rf "$$($(abspath $(PY)) -m cmi.compare --run-folder $(PROFILE) $(OVERRIDES))" && \
		$(abspath $(PY)) -m cmi estimate --check-data --profile $(PROFILE) $(OVERRIDES) && \
		$(PAPERMILL) $(NOTEBOOKS) $(BUILD)/
	cd $(VERIFY_ABS) && export PYTHONPATH=$(VERIFY_ABS) && $(abspath $(PY)) -m cmi.compare $(if $(VERIFY_AGAINST),\
		build/committed/$(VERIFY_AGAINST) "$$($(abspath $(PY)) -m cmi.compare --run-folder $(PROFILE) $(OVERRIDES))",\
		build/committed/figures figures)

# The device machine has no registry: wheels of the two packages its image lacks, at the versions tested here,
# for its Python 3.12 (both are pure Python; pyclustering ships only a source archive, so it is built here).
KIT := .device
FASHION_FILES := $(wildcard /usr/share/datasets/fashion-mnist/*-ubyte.gz data/FashionMNIST/raw/*-ubyte.gz)
loan-kit: env
	rm -rf $(KIT) && mkdir -p $(KIT)/whl $(KIT)/data/FashionMNIST/raw
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux2014_x86_64 -d $(KIT)/whl "torch-pruning==$$($(PY) -m pip show torch-pruning | sed -n 's/^Version: //p')"
	$(PY) -m pip wheel -q --no-deps -w $(KIT)/whl "pyclustering==$$($(PY) -m pip show pyclustering | sed -n 's/^Version: //p')"
	@test -n "$(FASHION_FILES)" || { echo "no Fashion-MNIST files here: apt-get install dataset-fashion-mnist"; exit 1; }
	cp $(sort $(FASHION_FILES)) $(KIT)/data/FashionMNIST/raw/
	@du -sh $(KIT)

lab: env
	$(VENV)/bin/jupyter lab notebooks/

# nbval needs an execution count on the cells whose output it compares: those get 1, all others none.
strip: env
	$(VENV)/bin/nbstripout --extra-keys "metadata.papermill cell.metadata.papermill cell.metadata.execution" \
		$(NOTEBOOKS)
	$(PY) -c 'import sys, nbformat as f; [f.write(nb, p) for p in sys.argv[1:] for nb in [f.read(p, 4)] \
		if [c.update(execution_count=1) for c in nb.cells if c.get("metadata", {}).get("keep_output")] or 1]' \
		$(NOTEBOOKS)

CLAIMS = quick=figures/quick-fashion-mnist medium=figures/medium-fashion-mnist \
	quick-authors=figures/quick-authors-fashion-mnist medium-authors=figures/medium-authors-fashion-mnist

readme: env
	$(PY) -m cmi.claim_tables figures/claims.md $(CLAIMS)
	$(PY) -c 'from pathlib import Path; from cmi.outputs import fill_includes; from cmi.store import atomic_write_text; \
		[atomic_write_text(p, fill_includes(p.read_text(), Path("."))) for p in [Path("README.md"), *sorted(Path("docs").glob("*.md"))]]'

clean:
	rm -rf build artifacts .pytest_cache
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
