#!/usr/bin/env bash
# The service on a GPU host: `groklab up` (embedded SQLite + filesystem broker, one worker on the
# GPU, packs of 64), the paper's Fig. 7 (examples/paper/ungrokking.json) submitted over HTTP and
# waited for, GPU utilisation sampled each second, the worker's packs and times from its log. Run
# from the repository root after benchmarks/gpu_check.sh (which installs the wheels); logs go to
# $OUT. SEEDS keeps the first N seeds of the experiment, DEADLINE bounds the wait.
set -uo pipefail
OUT="${OUT:-.}"
PYTHON="${PYTHON:-python3}"
[ -d /tmp/site ] && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export GROKLAB_DEVICE=cuda GROKLAB_ENSEMBLE_SIZE="${ENSEMBLE_SIZE:-64}" GROKLAB_AUTH=off
data=$(mktemp -d)
"$PYTHON" -m groklab.cli up --data-dir "$data" --port 8765 --workers 1 >"$OUT/service.log" 2>&1 &
service=$!
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 1 >"$OUT/gpu_utilisation.csv" 2>&1 &
sampler=$!
"$PYTHON" -m benchmarks.gpu_service_check "${SPEC:-examples/paper/ungrokking.json}" --url http://127.0.0.1:8765 \
  ${SEEDS:+--seeds "$SEEDS"} --deadline "${DEADLINE:-240}" 2>&1 | tee "$OUT/service_check.log"
kill $sampler 2>/dev/null
echo "GPU utilisation (nvidia-smi, 1 s samples while the experiment ran): mean $(awk -F', ' '{gsub(/ %/,"",$2); s+=$2; n++} END {if (n) printf "%.0f%% over %d samples", s/n, n}' "$OUT/gpu_utilisation.csv")" | tee -a "$OUT/service_check.log"
echo "the worker's packs (Celery's task lines):" | tee -a "$OUT/service_check.log"
grep -E "train_runs\[.*\] (received|succeeded|failed)|Traceback|Error" "$OUT/service.log" | head -40 | tee -a "$OUT/service_check.log"
kill -INT $service 2>/dev/null; sleep 3; kill $service 2>/dev/null
