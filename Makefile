# Kiln developer entry points.
#
#   make demo    create .venv, install kiln, compile a small CNN and compare it with ONNX Runtime
#   make test    create .venv, install kiln[test] and the toolchains, run the whole test suite
#   make bench   time the host model suite against ONNX Runtime (BENCH_ARGS="--quick" etc.)
#   make clean   remove the virtual environment and build outputs

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
BENCH_ARGS ?=

# External tools the test suite runs, as `command:debian-package` pairs. Issues that add a
# target append here (e.g. aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu qemu-aarch64:qemu-user).
TOOLCHAINS := gcc:gcc cmake:cmake arm-none-eabi-gcc:gcc-arm-none-eabi qemu-system-arm:qemu-system-arm
TOOLCHAINS += chromium:chromium
# arm64 target: cross compiler, binutils (objdump in the NEON test), user-mode qemu
TOOLCHAINS += aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu aarch64-linux-gnu-objdump:binutils-aarch64-linux-gnu qemu-aarch64:qemu-user
# Tools no Debian package provides here (nvcc: NVIDIA's CUDA toolkit under /usr/local/cuda, on
# every machine per DESIGN.md); `make toolchains` fails with a hint when one is missing.
VENDOR_TOOLCHAINS := nvcc
# Debian packages that provide no command of their own but are needed too (e.g. newlib).
TOOLCHAIN_EXTRA_PACKAGES := libnewlib-arm-none-eabi
# arm64: the C library's headers and static libraries for the cross compiler (only a
# recommendation of gcc-aarch64-linux-gnu, which apt-get --no-install-recommends leaves out)
TOOLCHAIN_EXTRA_PACKAGES += libc6-dev-arm64-cross
# webgpu: lavapipe (Vulkan on the CPU) for the wgpu package, and the Vulkan loader
TOOLCHAIN_EXTRA_PACKAGES += mesa-vulkan-drivers libvulkan1

.PHONY: demo test bench clean toolchains venv

venv: $(PY)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the package metadata changes; the install is editable, so source edits
# need no reinstall.
$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) install --disable-pip-version-check -q -e '.[test]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml | $(PY)
	$(PIP) install --disable-pip-version-check -q -e '.[test,bench]'
	touch $@

demo: $(VENV)/.installed-test
	$(PY) examples/demo.py

# Checks that every tool in TOOLCHAINS is on PATH. As root, installs what is missing with
# apt-get; otherwise prints the exact command to run and fails.
toolchains:
	@missing_pkgs=""; missing_tools=""; \
	for pair in $(TOOLCHAINS); do \
	  tool=$${pair%%:*}; pkg=$${pair#*:}; \
	  if ! command -v "$$tool" >/dev/null 2>&1; then \
	    missing_tools="$$missing_tools $$tool"; missing_pkgs="$$missing_pkgs $$pkg"; \
	  fi; \
	done; \
	for pkg in $(TOOLCHAIN_EXTRA_PACKAGES); do \
	  if ! dpkg -s "$$pkg" >/dev/null 2>&1; then missing_pkgs="$$missing_pkgs $$pkg"; fi; \
	done; \
	if [ -n "$$missing_pkgs" ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "toolchains: installing$$missing_pkgs"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing_pkgs || exit 1; \
	  else \
	    echo "toolchains: missing tools:$$missing_tools (Debian packages:$$missing_pkgs)" >&2; \
	    echo "toolchains: install them as root with: apt-get install -y$$missing_pkgs" >&2; \
	    exit 1; \
	  fi; \
	fi
	@for tool in $(VENDOR_TOOLCHAINS); do \
	  command -v "$$tool" >/dev/null 2>&1 || { echo "toolchains: $$tool is missing: install NVIDIA's CUDA toolkit (https://developer.nvidia.com/cuda-downloads) and put its bin/ on PATH" >&2; exit 1; }; \
	done
	@gcc --version | head -n 1

test: $(VENV)/.installed-test toolchains
	KILN_REQUIRE_TOOLCHAINS=1 $(PY) -m pytest -n auto -q

bench: $(VENV)/.installed-bench
	$(PY) benchmarks/host_models.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
