# Two entry points for a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,fast]'
	touch $@

.PHONY: install trackers demo test bench clean
install: $(VENV)/.installed

# The optional experiment trackers (--tracker mlflow|wandb|tensorboard): CI installs them so that their
# tests run against the real packages; without them those tests skip.
trackers: install
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,fast,mlflow,wandb,tensorboard]'

demo: install
	$(VENV)/bin/useg train --run-dir runs/demo --overwrite

# Two workers, a test file each at a time (module fixtures stay shared): the suite is mostly
# child processes waiting on one core each, so this halves CI's wall time on 2 cores.
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) runs
