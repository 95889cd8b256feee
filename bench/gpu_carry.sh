#!/usr/bin/env bash
# Prepare .gpu_carry/ (git-ignored, ~20 MiB) for bench/gpu_campaign.py on a GPU machine that reaches no
# package registry: cp312 x86-64 wheels of what its Python lacks, the SPPARKS volumes, and the commit.
#
#   bash bench/gpu_carry.sh [SPPARKS_DIR]        # default ../shared/data/spparks
#
# Then, with the device tool (carry [".gpu_carry", "checkpoints"]), one command:
#   bash bench/gpu_campaign.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data/spparks}"
rm -rf .gpu_carry.tmp && mkdir -p .gpu_carry.tmp/wheels .gpu_carry.tmp/data
pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --no-deps -d .gpu_carry.tmp/wheels \
  trimesh connected-components-3d onnx onnxscript onnx_ir ml_dtypes pytest pluggy iniconfig packaging
cp "$DATA"/potts_iso_100_seed10*.npz .gpu_carry.tmp/data/
git rev-parse HEAD > .gpu_carry.tmp/COMMIT
rm -rf .gpu_carry && mv .gpu_carry.tmp .gpu_carry
du -sh .gpu_carry
