#!/usr/bin/env bash
# Prepare .gpu_carry/ (git-ignored, ~10 MiB) for bench/gpu_campaign.py on a GPU machine that reaches no
# package registry: cp312 x86-64 wheels of what its image lacks (trimesh, connected-components-3d; it
# has numpy, numba, onnx, onnxruntime, pytest, scipy, ...), the SPPARKS volumes, and the commit. Then
# checks the limit the device tool sets: tracked files + untracked-not-ignored + .gpu_carry ≤ 64 MiB.
#
#   bash bench/gpu_carry.sh [SPPARKS_DIR]        # default ../shared/data/spparks
#
# Then, with the device tool (carry [".gpu_carry"]), one command:
#   bash bench/gpu_campaign.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data/spparks}"
rm -rf .gpu_carry.tmp && mkdir -p .gpu_carry.tmp/wheels .gpu_carry.tmp/data
pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_24_x86_64 --no-deps -d .gpu_carry.tmp/wheels trimesh connected-components-3d
cp "$DATA"/potts_iso_100_seed10*.npz .gpu_carry.tmp/data/
git rev-parse HEAD > .gpu_carry.tmp/COMMIT
rm -rf .gpu_carry && mv .gpu_carry.tmp .gpu_carry
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
carry=$(du -sb .gpu_carry | cut -f1)
total=$(( tree + carry ))
limit=$(( 64 * 1024 * 1024 ))
echo "travels: tree $(( tree / 1048576 )) MiB + .gpu_carry $(( carry / 1048576 )) MiB = $(( total / 1048576 )) MiB of 64 MiB"
if [ "$total" -gt "$limit" ]; then
  echo "gpu_carry: $(( total / 1048576 )) MiB would travel, over the device tool's 64 MiB: retire checkpoints to git history (docs/model.md) or carry less" >&2
  exit 1
fi
