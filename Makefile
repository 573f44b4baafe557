# The workshop's two commands: `make workshop` and `make test`. Both set up first; set-up is
# idempotent (stamp files), so a second run does nothing slow.
# pip installs with --no-compile: Python compiles the modules it imports on first use, and
# compiling every file of every package up front took half of each install here. It caches what
# it compiles in build/pycache, for every command make starts, even where the environment sets
# PYTHONDONTWRITEBYTECODE (this machine does): compiling TensorFlow at each import cost each
# training process several CPU-seconds more than loading the cache.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
KERNEL := cifar-workshop
# make test: pytest-xdist workers (tests/conftest.py says what runs beside what; 0: one process,
# in file order), and more pytest options, e.g. PYTEST_ARGS=--random-order-bucket=module.
TEST_WORKERS ?= 3
PYTEST_ARGS ?=
# make workshop: process mode on the real CIFAR-10 (or CIFAR10_URL/CIFAR10_MD5 from the environment).
WORKSHOP_EPOCHS ?= 3

unexport PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX := $(CURDIR)/build/pycache

HOROVOD_FLAGS := HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
                 HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1 MAKEFLAGS=-j2

.PHONY: setup workshop test lint bench clean local-images

setup: $(VENV)/.done .venv-keras3/.done .venv-toolkit/.done .venv-sdk3/.done

# Open MPI: mpirun launches the Horovod/SMDDP ranks in process mode, and Horovod builds against it.
.apt.done:
	@if dpkg -s libopenmpi-dev openmpi-bin >/dev/null 2>&1; then \
	  echo "apt: Open MPI present"; \
	else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenmpi-dev openmpi-bin; \
	fi
	@touch $@

$(VENV)/.done: .apt.done requirements.txt requirements-test.txt constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q --no-compile -r requirements.txt -r requirements-test.txt -c constraints.txt
	$(BIN)/python -c "import horovod.tensorflow" 2>/dev/null || \
	  $(HOROVOD_FLAGS) $(BIN)/pip install -q --no-build-isolation horovod==0.28.1
	$(BIN)/horovodrun --check-build | grep -q "\[X\] TensorFlow"
	# `import workshop` from any working directory (papermill, pytest)
	echo "$(CURDIR)/code/phase0" > $$($(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/cifar_workshop.pth
	# The kernel twice: in the venv, which this checkout's own runs find first (tests, make
	# workshop: another checkout cannot redirect them), and per user, for the Jupyter UI.
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python 3 (CIFAR-10 workshop, TF 2.15)" >/dev/null
	$(BIN)/python -m ipykernel install --user --name $(KERNEL) --display-name "Python 3 (CIFAR-10 workshop, TF 2.15)" >/dev/null
	touch $@

.venv-keras3/.done: requirements-keras3.txt
	test -x .venv-keras3/bin/python || $(PYTHON) -m venv .venv-keras3
	.venv-keras3/bin/pip install -q --no-compile -r requirements-keras3.txt
	touch $@

# SageMaker Python SDK v3 (notebook 6.0, tests_sdk3/): its own venv and kernel, since v2 and v3
# both install the import name `sagemaker` and v2 needs sagemaker-core<2.
KERNEL_SDK3 := cifar-workshop-sdk3
.venv-sdk3/.done: requirements-sdk3.txt constraints-sdk3.txt
	test -x .venv-sdk3/bin/python || $(PYTHON) -m venv .venv-sdk3
	.venv-sdk3/bin/pip install -q --upgrade pip setuptools wheel
	.venv-sdk3/bin/pip install -q --no-compile -r requirements-sdk3.txt -c constraints-sdk3.txt
	echo "$(CURDIR)/code/phase0" > $$(.venv-sdk3/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/cifar_workshop.pth
	.venv-sdk3/bin/python -m ipykernel install --sys-prefix --name $(KERNEL_SDK3) --display-name "Python 3 (CIFAR-10 workshop, SageMaker SDK v3)" >/dev/null
	.venv-sdk3/bin/python -m ipykernel install --user --name $(KERNEL_SDK3) --display-name "Python 3 (CIFAR-10 workshop, SageMaker SDK v3)" >/dev/null
	touch $@

.venv-toolkit/.done: requirements-toolkit.txt
	test -x .venv-toolkit/bin/python || $(PYTHON) -m venv .venv-toolkit
	.venv-toolkit/bin/pip install -q --no-compile -r requirements-toolkit.txt
	touch $@

# MODE="local": a Docker engine, docker-compose, and the stand-in SageMaker training images
# (containers/build_images.py; built once, a second run checks fingerprints in seconds).
LOCAL_MODE_APT := docker.io docker-compose debootstrap
local-images: $(VENV)/.done
	@if dpkg -s $(LOCAL_MODE_APT) >/dev/null 2>&1; then \
	  echo "apt: docker.io, docker-compose, debootstrap present"; \
	else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(LOCAL_MODE_APT); \
	fi
	containers/dockerd.sh start
	$(BIN)/python containers/build_images.py

workshop: setup
	$(BIN)/python -m workshop.run_notebooks --kernel $(KERNEL) --epochs $(WORKSHOP_EPOCHS)

lint: $(VENV)/.done
	$(BIN)/ruff check .

test: setup lint local-images
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=20 $(PYTEST_ARGS) tests

bench: setup
	$(BIN)/python benchmarks/input_pipeline.py
	$(BIN)/python benchmarks/entry_points.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/epoch_cost.py
	$(BIN)/python benchmarks/mpi_yield.py
	$(BIN)/python benchmarks/precision.py

clean:
	rm -rf code/phase0/runs
