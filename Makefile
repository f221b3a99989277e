# clipkit: `make install` then `make test`. Everything below runs offline after install.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CLIPKIT := $(VENV)/bin/clipkit
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo serve mlflow-ui docker-build clean

install: $(STAMP)

# Re-runs only when pyproject.toml changes, so a second `make install` is instant.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip 2>/dev/null || $(PIP) install -q --upgrade pip
	@# Noise filtered, exit code kept: pip's notes about this machine's optional local package mirrors, and
	@# setuptools' generic warning about editable installs. The full log stays in .venv/pip.log.
	$(PIP) install -q --progress-bar off -e ".[dev]" 2>$(VENV)/pip.log; rc=$$?; \
	  sed -e '/is ignored: it is neither a file nor a directory/d' \
	      -e '/BuildBackendWarning: Editable installation/,/WheelFile(wheel_path/d' $(VENV)/pip.log >&2; exit $$rc
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "note: could not install Debian's chromium; browser tests will fail")
	touch $(STAMP)

# Two pytest workers (pytest-xdist), one test file each at a time: the suite waits on subprocesses, servers and
# the browser for much of its time, so two workers on two cores take ~8.5 min where one took ~11-12.
PYTEST_JOBS ?= 2
test: install
	$(PY) -m pytest -q -n $(PYTEST_JOBS) --dist loadfile

test-fast: install
	$(PY) -m pytest -q -n $(PYTEST_JOBS) --dist loadfile -m "not slow and not browser"

demo: install
	$(CLIPKIT) predict --config configs/demo.yaml data/samples

serve: install
	$(CLIPKIT) serve --config configs/demo.yaml

mlflow-ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --default-artifact-root ./mlartifacts --host 127.0.0.1 --port 5000

docker-build:
	docker build -t clipkit:cpu .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
