#!/usr/bin/env bash
# The side-by-side grid behind results/inversion/README.md: calib's inversion vs Sony MCT's data generation.
# Needs MCT's venv (scripts/mct-venv.sh), the official weights and the lossless CIFAR-10 copy; rows go to
# results/inversion/rows.jsonl (a rerun skips rows already there). One thread per process: on a shared
# 2-core machine that is faster than two, and each part below may run as its own process.
set -euo pipefail
export CALIB_CIFAR10_DIR=${CALIB_CIFAR10_DIR:-../shared/data/cifar10-lossless}
export CALIB_WEIGHTS_DIR=${CALIB_WEIGHTS_DIR:-../shared/weights-official}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
REC=results/inversion/rows.jsonl
part=${1:-all}
bound() {  # ResNet20, 300 images, seed 0: the accuracy bound
  calib benchmark inversion --models resnet20 --methods calib,calib-old,calib:init=fractal,mct,mct-matched \
    --images 300 --seeds 0 --record $REC --markdown results/inversion/resnet20-300.md
}
seeds() {  # both models, 3 seeds, 100 images per set
  calib benchmark inversion --models "${1:-resnet20,shufflenetv2_x0_5}" \
    --methods calib,calib:init=fractal,mct,mct-matched --images 100 --seeds 0,1,2 --record $REC
}
curve() {  # speed against accuracy: fewer and more iterations, noise or fractal start, seed 0
  calib benchmark inversion --models resnet20,shufflenetv2_x0_5 \
    --methods calib:iterations=50,calib:iterations=50,init=fractal,calib:iterations=200 \
    --images 100 --seeds 0 --record $REC
}
old() {  # today's inversion on ShuffleNetV2 at the 3-seed table's size, seed 0
  calib benchmark inversion --models shufflenetv2_x0_5 --methods calib-old --images 100 --seeds 0 --record $REC
}
case $part in
  bound) bound ;; seeds-resnet20) seeds resnet20 ;; seeds-shufflenet) seeds shufflenetv2_x0_5 ;; old) old ;;
  curve) curve ;;
  all) bound; seeds; old; curve
       calib benchmark inversion --models resnet20,shufflenetv2_x0_5 --methods calib,calib:init=fractal,mct,mct-matched \
         --images 100 --seeds 0,1,2 --record $REC --markdown results/inversion/seeds-100.md ;;
  *) echo "usage: $0 [bound|seeds-resnet20|seeds-shufflenet|old|curve|all]" >&2; exit 2 ;;
esac
