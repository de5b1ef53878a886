#!/usr/bin/env bash
# ResNet20 INT8 accuracy on three 300-image sets: NNCF presets (symmetric / asymmetric activations) x range
# estimators (NNCF's own / min-max) x overflow fix, against ONNX Runtime (min-max; asymmetric and symmetric
# activations; 8-bit or 7-bit weights). Needs CALIB_CIFAR10_DIR (the JPEG copy) and CALIB_WEIGHTS_DIR (the
# weights trained on it). A configuration whose folder holds quantize.json is not run again.
set -euo pipefail
OUT=${OUT:-runs/preset-vs-ort}
REC=${REC:-results/engines/preset-vs-ort.jsonl}
for seed in 0 1 2; do
  set_dir=$OUT/sets/cifar10-30pc-s$seed
  [ -d "$set_dir" ] || calib generate --source cifar10 --per-class 30 --seed $seed --out "$set_dir"
  q() {
    [ -f "$OUT/q/s$seed-$1/quantize.json" ] && return
    calib quantize --model resnet20 --calib "$set_dir" --evaluate --record "$REC" --out "$OUT/q/s$seed-$1" "${@:2}" > /dev/null
  }
  q nncf-performance-nncf   --engine openvino --preset performance --calibrate-method nncf
  q nncf-mixed-nncf         --engine openvino --preset mixed       --calibrate-method nncf
  q nncf-performance-minmax --engine openvino --preset performance --calibrate-method minmax
  q nncf-mixed-minmax       --engine openvino --preset mixed       --calibrate-method minmax
  q ort-mixed-minmax        --engine onnxruntime --preset mixed       --calibrate-method minmax
  q ort-performance-minmax  --engine onnxruntime --preset performance --calibrate-method minmax
  # weights on the full 8-bit range (NNCF) / on 7 bits (ONNX Runtime's reduce_range)
  q nncf-performance-nncf-ovf-disable --engine openvino --preset performance --calibrate-method nncf --overflow-fix disable
  q nncf-mixed-minmax-ovf-disable     --engine openvino --preset mixed --calibrate-method minmax --overflow-fix disable
  q ort-mixed-minmax-ovf-enable       --engine onnxruntime --preset mixed --calibrate-method minmax --overflow-fix enable
  q ort-performance-minmax-ovf-enable --engine onnxruntime --preset performance --calibrate-method minmax --overflow-fix enable
done
calib study blocks results/engines/preset-vs-ort.md   # its table, from results/engines/preset-vs-ort.jsonl
