#!/usr/bin/env bash
# The engine on a GPU host, correct and fast: `bash benchmarks/gpu_check.sh [STAGE ...]` from the
# repository root, stages (default: all, in this order) machine, correctness, speed, compiled, bf16,
# traffic; the log goes to ${OUT:-.}/gpu_check.log. The host's own python3 and torch are used; the
# project's other dependencies come as Python 3.12 wheels in .whl/ where the host lacks them
# (docs/benchmarks.md says how that wheel set is made and checked). Each stage has its own time
# limit, cut to what is left before GPU_END (a Unix time) when that is set, and a failed stage
# does not stop the next: the log says what passed.
set -uo pipefail
OUT="${OUT:-.}"
PYTHON="${PYTHON:-python3}"
log="$OUT/gpu_check.log"
if [ -d .whl ] && ! "$PYTHON" -c "import fastapi, celery, sqlalchemy, pydantic_settings" 2>/dev/null; then
  [ -d /tmp/site ] || "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

stage() {  # stage NAME SECONDS COMMAND...: run it, timed, its output into the log
  local name="$1" seconds="$2"; shift 2
  if [ -n "${GPU_END:-}" ]; then
    local left=$((GPU_END - $(date +%s)))
    [ "$left" -lt 10 ] && { echo "=== $name: skipped, no time left" | tee -a "$log"; return; }
    [ "$left" -lt "$seconds" ] && seconds=$left
  fi
  echo "=== $name (limit ${seconds} s): $*" | tee -a "$log"
  local start=$SECONDS
  timeout "$seconds" "$@" 2>&1 | tee -a "$log"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$log"
}

machine() {
  stage machine 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    $PYTHON -c 'import torch; print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda, torch.cuda.get_device_name())'"
}

correctness() {  # the equivalence tests' CUDA cases and tests/engine/test_cuda.py; the suite's root
  # conftest starts database servers that the engine tests do not use: --noconftest.
  stage correctness 100 "$PYTHON" -m pytest -p no:cacheprovider --noconftest -q -s -m cuda -o addopts="" tests/engine
}

speed() {  # reference, single run, K = 1, 8, 64, 256 eager and as CUDA graphs, kernels, bytes,
  # host syncs per step and per evaluation, and the projection of the paper's Fig. 7
  stage speed 150 "$PYTHON" -m benchmarks.engine --device cuda
}

compiled() {  # the step compiled by TorchInductor (fused elementwise work) against the eager step
  stage compiled 100 "$PYTHON" -m benchmarks.step_traffic --k 64
}

bf16() {  # the same step in bf16-mixed precision (RunSpec.precision), eager and compiled
  stage bf16 100 "$PYTHON" -m benchmarks.step_traffic --k 64 --precision bf16-mixed
}

templates() {  # Inductor's byte count of the step with Triton GEMM templates and their fused
  # epilogues (max-autotune compiles: minutes; not among the default stages)
  stage templates 240 "$PYTHON" -m benchmarks.step_traffic --k 64 --count-bytes --device cuda --gemm-templates
}

traffic() {  # the DRAM bytes of one K=64 step, eager and compiled, read by Nsight Compute
  local ncu
  ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  [ -n "$ncu" ] || { echo "no ncu on this host: DRAM bytes not measured" | tee -a "$log"; return; }
  for variant in eager compiled; do
    stage "traffic-$variant" 75 "$ncu" --profile-from-start off --clock-control none --print-units base \
      --metrics dram__bytes_read.sum,dram__bytes_write.sum --csv --log-file "$OUT/ncu_$variant.csv" \
      "$PYTHON" -m benchmarks.step_traffic --k 64 --profile "$variant"
    "$PYTHON" -m benchmarks.step_traffic --k 64 --sum-ncu "$OUT/ncu_$variant.csv" 2>&1 | tee -a "$log"
  done
}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(machine correctness speed compiled bf16 traffic)
for name in "${stages[@]}"; do "$name"; done
