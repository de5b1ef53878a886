set -x
python3 .devdata/unpack.py .devdata /tmp/c10
export CALIB_CIFAR10_DIR=/tmp/c10 CALIB_HOME=/tmp/ch PYTHONPATH=$PWD PYTHONUNBUFFERED=1
C="python3 -m calibration.cli"
timeout 130 $C zoo train shufflenetv2_x2_0 --epochs 4 --batch-size 256 --warmup-epochs 0.6 --device cuda --out /tmp/sh > $OUT/train.log 2>&1
cp /tmp/sh/*.json /tmp/sh/metrics.jsonl $OUT/
W=$(ls /tmp/sh/cifar10_shufflenetv2_x2_0-*.pt)
for s in cifar10 fractal distylegan noise; do
  $C generate --source $s --per-class 30 --seed 0 --out /tmp/sets/$s > /dev/null 2>&1
  $C quantize --model shufflenetv2_x2_0 --weights $W --calib /tmp/sets/$s --engine onnxruntime --evaluate --out /tmp/q/$s --record $OUT/records.jsonl > $OUT/q_$s.log 2>&1
  tail -c 400 $OUT/q_$s.log | grep -E "accuracy" 
done
