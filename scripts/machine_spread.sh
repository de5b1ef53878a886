#!/usr/bin/env bash
# Repeat-to-repeat throughput spread of this machine, measured by OpenVINO's own benchmark_app (no calib code
# in the timed process): 5 runs of 1 s and 5 runs of 5 s of one INT8 IR, batch 32, throughput hint.
# Usage: scripts/machine_spread.sh MODEL.xml > results/benchmark/machine-spread.txt
set -euo pipefail
model=${1:?usage: machine_spread.sh MODEL.xml}
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(date -u +%FT%TZ)"
echo "# $(python -c 'from calib.core.hardware import hardware; h = hardware(); print("flags:", " ".join(h["cpu_flags"]) or "-", "| oneDNN ISA:", h["isa"])')"
echo "# benchmark_app -m $model -hint throughput -b 32 -t T, 5 runs per T; spread = (max - min) / median"
for t in 1 5; do
  fps=$(for _ in 1 2 3 4 5; do
    benchmark_app -m "$model" -t "$t" -hint throughput -b 32 2>&1 | sed -n 's/.*Throughput: *\([0-9.]*\) FPS/\1/p'
  done | xargs)
  python - "$t" $fps <<'PY'
import statistics, sys
t, v = sys.argv[1], [float(x) for x in sys.argv[2:]]
med = statistics.median(v)
print(f"t={t}s fps={v} median={med:.0f} spread={(max(v) - min(v)) / med:.1%}")
PY
done
