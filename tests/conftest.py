"""Shared pytest set-up: toolchain checks, GPU skipping and an isolated compile cache.

Nothing here is autouse except the collection hook that skips ``@pytest.mark.gpu`` tests on
machines without an NVIDIA GPU.

Toolchains: a test that needs an external tool calls ``require_toolchain("qemu-aarch64")``
(the plain function, importable as ``from tests.conftest import require_toolchain``, or the
fixture of the same name). A missing tool skips the test, naming the Debian package that
provides it, except when ``KILN_REQUIRE_TOOLCHAINS=1`` (as in CI and ``make test``), where a
missing tool fails the test: CI must never pass by skipping a target.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess

import pytest

# command -> Debian package that provides it (keep in step with TOOLCHAINS in the Makefile)
TOOLCHAIN_PACKAGES = {
    "gcc": "gcc",
    "cc": "gcc",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    "qemu-aarch64": "qemu-user",
    "aarch64-linux-gnu-objdump": "binutils-aarch64-linux-gnu",
    "aarch64-linux-gnu-nm": "binutils-aarch64-linux-gnu",
    "cmake": "cmake",
    "arm-none-eabi-gcc": "gcc-arm-none-eabi",
    "qemu-system-arm": "qemu-system-arm",
    "nvcc": "nvidia-cuda-toolkit",  # here NVIDIA's own toolkit (/usr/local/cuda): Makefile VENDOR_TOOLCHAINS
    "chromium": "chromium",
}


def toolchains_required() -> bool:
    return os.environ.get("KILN_REQUIRE_TOOLCHAINS", "") == "1"


def require_toolchain(name: str, package: str | None = None) -> str:
    """The full path of the command ``name``; skips (or fails in CI) when it is missing."""
    path = shutil.which(name)
    if path:
        return path
    package = package or TOOLCHAIN_PACKAGES.get(name, name)
    message = (f"toolchain {name!r} is not installed (Debian package {package!r}: "
               f"apt-get install -y {package}, or run `make toolchains`)")
    if toolchains_required():
        pytest.fail(message + "; KILN_REQUIRE_TOOLCHAINS=1 makes a missing toolchain an error",
                    pytrace=False)
    pytest.skip(message)


def require_module(name: str, extra: str = "test"):
    """``importlib.import_module(name)``; skips when it is missing, and fails in CI
    (KILN_REQUIRE_TOOLCHAINS=1), whose ``extra`` installs it. Usable at module level."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        message = f"Python module {name!r} is not installed ({e}; pip install -e '.[{extra}]')"
        if toolchains_required():
            pytest.fail(message + "; KILN_REQUIRE_TOOLCHAINS=1 makes it an error", pytrace=False)
        pytest.skip(message, allow_module_level=True)


@pytest.fixture(name="require_toolchain")
def require_toolchain_fixture():
    """The ``require_toolchain`` function, for tests that prefer a fixture to an import."""
    return require_toolchain


@functools.lru_cache(maxsize=1)
def has_nvidia_gpu() -> bool:
    """True when ``nvidia-smi -L`` runs and lists at least one GPU."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and "GPU" in r.stdout


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and not has_nvidia_gpu():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU (nvidia-smi found none)")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """Point Kiln's compile cache (KILN_CACHE_DIR) at a fresh directory for one test."""
    cache = tmp_path / "kiln-cache"
    cache.mkdir()
    monkeypatch.setenv("KILN_CACHE_DIR", str(cache))
    return cache


def require_webgpu():
    """The wgpu device (lavapipe on a machine without a GPU); skips (fails in CI) without one."""
    message = None
    try:
        from kiln.targets.webgpu import device

        return device()
    except Exception as e:  # noqa: BLE001  (no package, no Vulkan loader, no driver)
        message = (f"no WebGPU device through wgpu ({e}); install the 'wgpu' package and the Debian "
                   "packages 'mesa-vulkan-drivers' and 'libvulkan1'")
    if toolchains_required():
        pytest.fail(message + "; KILN_REQUIRE_TOOLCHAINS=1 makes a missing toolchain an error", pytrace=False)
    pytest.skip(message)
