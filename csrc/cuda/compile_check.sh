#!/usr/bin/env bash
# CI: compile every csrc/cuda/*.cu with nvcc for sm_80 and sm_90, one file at a time (the CI machine
# has 2 cores), objects to a temporary directory. Exits non-zero if nvcc is missing or any file fails.
# Usage: csrc/cuda/compile_check.sh   (from anywhere; NVCC=/path/to/nvcc to pick a compiler)
set -u
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
nvcc="${NVCC:-nvcc}"
if ! command -v "$nvcc" >/dev/null 2>&1; then
  echo "compile_check: $nvcc not found" >&2
  exit 2
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
shopt -s nullglob
files=("$root"/csrc/cuda/*.cu)
if [ ${#files[@]} -eq 0 ]; then
  echo "compile_check: no .cu files under $root/csrc/cuda" >&2
  exit 2
fi
failed=0
for f in "${files[@]}"; do
  name="$(basename "$f" .cu)"
  start=$SECONDS
  if "$nvcc" -std=c++17 -O3 --use_fast_math -c "$f" -o "$out/$name.o" -I "$root/csrc/include" \
      -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 -Xptxas -warn-spills; then
    echo "ok   $name.cu ($((SECONDS - start)) s)"
  else
    echo "FAIL $name.cu" >&2
    failed=1
  fi
done
exit $failed
