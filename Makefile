VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install install-test serve test lint browser clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e .
	# Diarization's voice encoder weights; the package's own dependencies (torch, librosa) are not needed.
	$(PIP) install --quiet --no-deps resemblyzer==0.1.4
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Debian's Chromium drives the browser tests (/docs); they are skipped where it is missing.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium unavailable: browser tests will be skipped"

serve: install
	$(VENV)/bin/whisper-endpoint serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

test: $(VENV)/.installed-test browser lint
	$(VENV)/bin/pytest -q --durations=15

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
