#!/usr/bin/env bash
# tfcap against the PyTorch Up-Down reference in one run on this machine:
#   1. the reference's benchmark (../shared/reference/bench_updown_torch.py: updown sizes,
#      10 images x 5 captions, 2 threads) -> OUT/reference.json
#   2. python -m tfcap.bench --preset=updown --batch_size=10 --reference_json=OUT/reference.json
#      -> OUT/bench_updown.json and the tables with the reference beside tfcap, ratios
#   3. (optional, PHASE=1) the whole demo XE phase, the reference's and tfcap's, on the same data:
#      the demo data (OUT/demo_data, prepared unless DEMO_DATA names it), converted to the
#      reference's format (scripts/reference_demo_data.py -> OUT/reference_demo_data), the
#      reference's phase (scripts/reference_demo_phase.py -> OUT/reference_demo.json), then
#      python -m tfcap.bench --preset=demo --only=phase --reference_json=OUT/reference_demo.json
#      -> OUT/bench_phase.json (tfcap images/s / reference images/s). PHASE_STEPS: default 1251.
#      PHASE=only runs step 3 alone.
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
if [ "${PHASE:-0}" != only ]; then
  echo "== 1/2 reference -> $OUT/reference.json"
  PEER_SCT="$REFERENCE_DIR/self-critical.pytorch" \
    "$REF_VENV/bin/python" "$REFERENCE_DIR/bench_updown_torch.py" > "$OUT/reference.json"
  echo "== 2/2 tfcap.bench (updown, batch 10) -> $OUT/bench_updown.json"
  $PY -m tfcap.bench --preset=updown --batch_size=10 --reference_json="$OUT/reference.json" \
    --json_out="$OUT/bench_updown.json" ${BENCH_FLAGS:-}
fi
if [ "${PHASE:-0}" = 1 ] || [ "${PHASE:-0}" = only ]; then
  DEMO_DATA=${DEMO_DATA:-$OUT/demo_data}
  STEPS=${PHASE_STEPS:-1251}
  if [ ! -f "$DEMO_DATA/dataset.json" ]; then
    echo "== phase: demo data -> $DEMO_DATA"
    $PY -m tfcap.data.prepare --flagfile=configs/demo_data.flags --output_dir="$DEMO_DATA"
  fi
  echo "== phase: the demo data in the reference's format -> $OUT/reference_demo_data"
  PYTHONPATH=. $PY scripts/reference_demo_data.py --data_dir="$DEMO_DATA" \
    --output_dir="$OUT/reference_demo_data"
  echo "== phase: the reference's demo XE phase ($STEPS steps) -> $OUT/reference_demo.json"
  PEER_SCT="$REFERENCE_DIR/self-critical.pytorch" "$REF_VENV/bin/python" \
    scripts/reference_demo_phase.py --data_dir="$OUT/reference_demo_data" --steps="$STEPS" \
    > "$OUT/reference_demo.json"
  echo "== phase: tfcap's demo XE phase ($STEPS steps) -> $OUT/bench_phase.json"
  $PY -m tfcap.bench --preset=demo --only=phase --data_dir="$DEMO_DATA" --phase_steps="$STEPS" \
    --reference_json="$OUT/reference_demo.json" --json_out="$OUT/bench_phase.json"
fi
