#!/usr/bin/env bash
# The main job on the built-in synthetic shapes data: prepare the data, train
# xe -> scst -> gan, then evaluate the model at the end of each phase on the
# held-out test scenes (greedy decoding) with the features-swapped control, the gan
# discriminator's judgement and caption diversity. Usage: scripts/demo.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${1:-runs/demo}
PY=.venv/bin/python
start=$SECONDS
mkdir -p "$RUN_DIR"
echo "== 1/3 prepare the synthetic shapes data -> $RUN_DIR/data"
$PY -m tfcap.data.prepare --flagfile=configs/demo_data.flags --output_dir="$RUN_DIR/data" --overwrite
echo "== 2/3 train xe -> scst -> gan -> $RUN_DIR/model   (tensorboard --logdir=$RUN_DIR/model)"
$PY -m tfcap.train --flagfile=configs/demo.flags --data_dir="$RUN_DIR/data" --model_dir="$RUN_DIR/model"
echo "== 3/3 evaluate each phase's model on the test split (greedy)"
for phase in xe scst gan; do
  $PY -m tfcap.evaluate --model_dir="$RUN_DIR/model" --checkpoint=$phase --split=test \
    --beam_size=1 --swap_control --discriminator_dir="$RUN_DIR/model" \
    --examples=$([ $phase = gan ] && echo 6 || echo 0) \
    --results_json="$RUN_DIR/results_test_$phase.json" > "$RUN_DIR/scores_test_$phase.json"
done
PYTHONPATH=. $PY scripts/demo_table.py "$RUN_DIR"
echo "== demo finished in $((SECONDS - start))s"
