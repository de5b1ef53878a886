#!/usr/bin/env bash
# The side-by-side runs behind results/inversion/README.md: calib's inversion vs Sony MCT's data generation.
# Needs MCT's venv (scripts/mct-venv.sh), the official weights and the lossless CIFAR-10 copy. Run each part
# on an otherwise idle machine (speed is part of the result); a rerun skips rows already recorded.
#   table (default): results/inversion/table.jsonl and table.md, the committed side-by-side table
#   levers:          results/inversion/rows.jsonl, iteration counts and starts (measured on a busy machine)
set -euo pipefail
export CALIB_CIFAR10_DIR=${CALIB_CIFAR10_DIR:-../shared/data/cifar10-lossless}
export CALIB_WEIGHTS_DIR=${CALIB_WEIGHTS_DIR:-../shared/weights-official}
part=${1:-table}
table() {
  local rec=results/inversion/table.jsonl
  # both models, 3 seeds, 100 images per set: calib's defaults, MCT's defaults, MCT at calib's budget
  calib benchmark inversion --models resnet20,shufflenetv2_x0_5 --methods calib,mct,mct-matched \
    --images 100 --seeds 0,1,2 --record $rec
  # ResNet20 at the 300 images
  calib benchmark inversion --models resnet20 --methods calib --images 300 --seeds 0,1,2 --record $rec
  # the speed-up against the settings of the 1.01 s/image figure, in one run
  calib benchmark inversion-speed --model resnet20 --images 100 --record $rec
  calib benchmark inversion --models resnet20,shufflenetv2_x0_5 --methods calib,mct,mct-matched \
    --images 100 --seeds 0,1,2 --record $rec
  calib study blocks results/inversion/table.md results/inversion/README.md
}
levers() {
  local rec=results/inversion/rows.jsonl
  calib benchmark inversion --models resnet20,shufflenetv2_x0_5 \
    --methods calib,calib:init=fractal,calib:iterations=50,calib:iterations=50,init=fractal,calib:iterations=200 \
    --images 100 --seeds 0 --record $rec
}
case $part in
  table) table ;; levers) levers ;;
  *) echo "usage: $0 [table|levers]" >&2; exit 2 ;;
esac
