#!/usr/bin/env bash
# tfcap against the PyTorch Up-Down reference in one run on this machine:
#   1. the reference's benchmark (../shared/reference/bench_updown_torch.py: updown sizes,
#      10 images x 5 captions, 2 threads) -> OUT/reference.json
#   2. python -m tfcap.bench --preset=updown --batch_size=10 --reference_json=OUT/reference.json
#      -> OUT/bench_updown.json and the tables with the reference beside tfcap, ratios
#   3. (optional, PHASE=1) the whole demo XE phase -> OUT/bench_phase.json
# Usage: scripts/bench_vs_reference.sh [OUT_DIR]   (REFERENCE_DIR, REF_VENV to override)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/bench}
REFERENCE_DIR=${REFERENCE_DIR:-../shared/reference}
REF_VENV=${REF_VENV:-/tmp/ref-venv}
PY=.venv/bin/python
mkdir -p "$OUT"
if [ ! -d "$REFERENCE_DIR/self-critical.pytorch" ]; then
  echo "no reference at $REFERENCE_DIR (set REFERENCE_DIR)" >&2; exit 1
fi
test -x "$REF_VENV/bin/python" || bash "$REFERENCE_DIR/setup.sh" "$REF_VENV"
echo "== 1/2 reference -> $OUT/reference.json"
PEER_SCT="$REFERENCE_DIR/self-critical.pytorch" \
  "$REF_VENV/bin/python" "$REFERENCE_DIR/bench_updown_torch.py" > "$OUT/reference.json"
echo "== 2/2 tfcap.bench (updown, batch 10) -> $OUT/bench_updown.json"
$PY -m tfcap.bench --preset=updown --batch_size=10 --reference_json="$OUT/reference.json" \
  --json_out="$OUT/bench_updown.json" ${BENCH_FLAGS:-}
if [ "${PHASE:-0}" = 1 ]; then
  $PY -m tfcap.bench --preset=demo --only=phase --json_out="$OUT/bench_phase.json"
fi
