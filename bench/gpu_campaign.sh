#!/usr/bin/env bash
# One command on a bare GPU machine (no registry): install what .gpu_carry/ brought, build the project,
# run bench/gpu_campaign.py, and leave in $OUT what the device tool brings back (at most 8 files of
# 16 MiB): the lineages' trainer checkpoints, campaign.json/.md, campaign.log and results.tgz (everything
# else small: models' manifests, loss curves, slice pictures, test log). Prepare .gpu_carry/ first with
# bench/gpu_carry.sh.
#   device tool: run(command="bash bench/gpu_campaign.sh", carry=[".gpu_carry"], timeout_s=600)
# The whole command ends within BUDGET_S seconds (default 585) of its start.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu_campaign}"
WORK="${WORK:-/tmp/gpu_campaign}"
BUDGET_S="${BUDGET_S:-585}"
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
{
  echo "python: $(python3 --version 2>&1)"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
  nproc
} 2>&1 | tee "$WORK/env.txt"
# only what the image lacks (its onnx, onnxscript, pytest stay as they are)
missing=$(python3 - <<'PY'
import importlib
need = {"trimesh": "trimesh", "cc3d": "connected-components-3d"}
print(" ".join(dist for mod, dist in need.items() if importlib.util.find_spec(mod) is None))
PY
)
[ -n "$missing" ] && python3 -m pip install --quiet --no-index --no-deps --find-links .gpu_carry/wheels $missing 2>&1 | tail -3
python3 -m pip install --quiet --no-build-isolation --no-deps -e . 2>&1 | tail -3
echo "set-up done after ${SECONDS} s" | tee -a "$WORK/env.txt"
export GP_COMMIT="$(cat .gpu_carry/COMMIT 2>/dev/null || echo unknown)"
deadline=$(( BUDGET_S - 25 - SECONDS ))
timeout -s TERM $(( deadline + 15 )) python3 bench/gpu_campaign.py --out "$WORK" --data .gpu_carry/data \
  --deadline "$deadline" "$@" 2>&1 | tee "$WORK/campaign.log"
rc=${PIPESTATUS[0]}
# what comes back: checkpoints (split where over 16 MiB), campaign.json, the log, one archive of the rest
for f in "$WORK"/*.pt; do
  [ -f "$f" ] || continue
  if [ "$(stat -c %s "$f")" -gt 16000000 ]; then split -b 15000000 -d "$f" "$OUT/$(basename "$f").part"; else cp "$f" "$OUT/"; fi
done
cp "$WORK/campaign.json" "$WORK/campaign.md" "$WORK/campaign.log" "$OUT/" 2>/dev/null
tar czf "$OUT/results.tgz" -C "$WORK" --exclude='*.pt' --exclude='*.onnx' --exclude='*.npy' --exclude='*.npz' \
  --exclude='*.vti' --exclude='*.h5' --exclude='campaign.log' .
ls -la "$OUT"
echo "campaign exit $rc after ${SECONDS} s"
exit "$rc"
