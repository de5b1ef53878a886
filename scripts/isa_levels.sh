#!/usr/bin/env bash
# The tests whose outcome rests on INT8 arithmetic (quantize, evaluate, accuracy-aware restoration), run once per
# instruction set this CPU offers, every library capped at that level in the test process's environment
# (calib.core.hardware.cap_env), and once natively. One line per level:
#   scripts/isa_levels.sh [pytest args...] > results/tests/isa-levels.txt
set -uo pipefail
cd "$(dirname "$0")/.."
# (tests that run a study cap through the grid's `isas` instead: a study refuses a capped environment, and
# tests/test_check.py runs and rechecks cells at native and avx2 in one run)
tests=(tests/test_validation.py tests/test_quantize.py tests/test_engines.py tests/test_engine_options.py
       tests/test_exporters.py tests/test_own_messages.py)
levels=$(python -c "from calib.core.hardware import supported_isas; print(' '.join(supported_isas()))")
native=$(python -c "from calib.core.hardware import native_isa, cpu_model; print(native_isa())")
echo "cpu: $(python -c 'from calib.core.hardware import cpu_model; print(cpu_model())'); native ISA: $native"
for level in $levels native; do
  if [ "$level" = native ]; then caps=""; else
    caps=$(python -c "from calib.core.hardware import cap_env; print(' '.join(f'{k}={v!r}' for k, v in cap_env('$level').items()))")
  fi
  start=$(date +%s)
  summary=$(eval env $caps python -m pytest "${tests[@]}" -q -p no:cacheprovider "$@" 2>&1 | tail -1)
  echo "$level ($(( $(date +%s) - start )) s): $summary"
done
