# Two entry points, both self-contained on a machine with nothing but Python:
#   make demo   -- create .venv, install, run the main job on the embedded default data
#   make test   -- create/update .venv with the test extras, run the suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The local environment pins the torch build that lies on this machine's disk; the package itself only asks for ranges.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-slow venv clean

$(VENV)/.base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e .
	touch $@

# The report page's browser test loads it in headless Chromium (Debian's package): installed here where apt-get
# may, else that one test skips with a note. Never a reason for the set-up to fail.
CHROMIUM_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install -q -e '.[test]'
	@command -v chromium >/dev/null || ($(CHROMIUM_INSTALL) || (apt-get update -q && $(CHROMIUM_INSTALL))) \
		>/dev/null 2>&1 || echo "note: could not install chromium (apt-get); the report page's browser test will skip"
	touch $@

venv: $(VENV)/.base

# The main job on the embedded default: digits (inside scikit-learn) on a CIFAR ResNet-20, ~2 min on 2 cores.
demo: $(VENV)/.base
	$(VENV)/bin/resnets train --output runs

# The suite runs in TEST_WORKERS pytest processes, a whole test file each at a time (a file's module fixtures,
# such as the 2-process DDP run, are built once), each with one torch thread: the tests' tensors are small and
# subprocess start-up is serial, so two one-thread workers beat one two-thread process on 2 cores
# (4 min 21 s against 6 min 15 s in one process, back to back). TEST_WORKERS=0 runs it in one process,
# with torch's own threads.
TEST_WORKERS ?= 2
PYTEST := $(if $(filter 0,$(TEST_WORKERS)),,OMP_NUM_THREADS=1) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: $(VENV)/.test
	$(PYTEST)

test-slow: $(VENV)/.test
	$(PYTEST) -m slow

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
