#!/usr/bin/env bash
# One command on a bare GPU machine (no registry): install what .gpu_carry/ brought, build the project,
# run bench/gpu_campaign.py. Prepare .gpu_carry/ first with bench/gpu_carry.sh; results go to $OUT.
#   device tool: run(command="bash bench/gpu_campaign.sh", carry=[".gpu_carry", "checkpoints"], timeout_s=590)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu_campaign}"
mkdir -p "$OUT"
{
  echo "python: $(python3 --version 2>&1)"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
} | tee "$OUT/env.txt"
python3 -m pip install --quiet --no-index --find-links .gpu_carry/wheels \
  trimesh connected-components-3d onnx onnxscript pytest 2>&1 | tail -3
python3 -m pip install --quiet --no-build-isolation --no-deps -e . 2>&1 | tail -3
export GP_COMMIT="$(cat .gpu_carry/COMMIT 2>/dev/null || echo unknown)"
python3 bench/gpu_campaign.py --out "$OUT" --data .gpu_carry/data --compile "$@"
