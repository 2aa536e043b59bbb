#!/usr/bin/env bash
# One device call for a session that is lent an NVIDIA machine (see /work/.library/device/README.md):
#
#   run(command="bash scripts/gpu_session.sh", carry=[".whl", ".gl"], timeout_s=600)
#
# It installs what the machine lacks from the carried folders (.whl: wgpu, cffi, pycparser,
# rendercanvas wheels for Python 3.12; .gl: the Vulkan loader, libvulkan1), then runs, each
# step logged under $OUT and none stopping the next: the GPU tests (issue 7), the CUDA
# benchmark against PyTorch (issue 7) and the WebGPU benchmark on the NVIDIA Vulkan driver
# (issue 9). Fill the folders here first (both are in .git/info/exclude):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl wgpu==0.32.0 cffi pycparser rendercanvas
#   (cd .gl && apt-get download libvulkan1)
set -u
OUT=${OUT:-/tmp/kiln-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
} > "$OUT/setup.log" 2>&1
export PYTHONPATH=/tmp/site:$PWD
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export XDG_RUNTIME_DIR=/tmp

step() {  # name, timeout in seconds, command...
  local name=$1 limit=$2
  shift 2
  echo "== $name" | tee -a "$OUT/summary.log"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "   exit $?" | tee -a "$OUT/summary.log"
  tail -n 25 "$OUT/$name.log"
}

step gpu_tests 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/
step cuda_bench 200 python3 benchmarks/cuda_bench.py --json "$OUT/cuda_bench.json"
step webgpu_bench 200 python3 benchmarks/webgpu_bench.py --json "$OUT/webgpu_bench.json"
