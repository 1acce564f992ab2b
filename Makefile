# Every target installs what it needs first (see scripts/setup_runtime.py), so they all work
# on a fresh clone of a fresh machine with only Python 3.11, pip and the registries.
PYTHON ?= python3
VENV_PY := .venv/bin/python
PORT ?= 8188
TINY ?=
WORKFLOW ?=
SUBJECTS ?=
SIZE ?=
QUICK ?=
FAST ?=

.PHONY: setup browser lint test run demo bench

setup:
	@$(PYTHON) scripts/setup_runtime.py

# Debian's Chromium and its matching driver, for the browser end-to-end tests.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null)

lint: setup
	$(VENV_PY) -m ruff check .

# --rootdir=tests: the checkout itself is the pack's package (it has an __init__.py) and must not be
# collected as a test package, whatever the checkout folder is called.
# FAST=1: the unit subset (no real server, browser or child process)
test: setup browser lint
	$(VENV_PY) -m pytest --rootdir=tests $(if $(FAST),-m "not slow",)

run: setup
	$(VENV_PY) scripts/run_comfyui.py --port $(PORT)

# WORKFLOW=NAME: another example of example_workflows/ (e.g. ssr_two_subjects, fastcomposer_two_people, anystory_flux)
# SUBJECTS="dog=PATH cat=PATH": your reference photos (paths without spaces); SIZE=512 or SIZE="768 512": another size
demo: setup
	$(VENV_PY) -m scripts.demo $(if $(TINY),--tiny,) $(if $(WORKFLOW),--workflow $(WORKFLOW),) \
		$(foreach subject,$(SUBJECTS),--subject $(subject)) $(if $(SIZE),--size $(subst x, ,$(SIZE)),)

# QUICK=1: fewer rounds, cases and smaller sizes (under eight minutes on a GPU); on a CUDA GPU it runs there
bench: setup
	$(VENV_PY) -m bench.run_all $(if $(QUICK),--quick,)
