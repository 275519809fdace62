#!/usr/bin/env bash
# The main job on the built-in synthetic shapes data: prepare, then (as they
# land) train, evaluate, export and caption. Usage: scripts/demo.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${1:-runs/demo}
PY=.venv/bin/python
mkdir -p "$RUN_DIR"
$PY -m tfcap.data.prepare --flagfile=configs/demo_data.flags --output_dir="$RUN_DIR/data" --overwrite
$PY -m tfcap.bench --only=input --data_dir="$RUN_DIR/data" --json_out="$RUN_DIR/bench_input.json"
