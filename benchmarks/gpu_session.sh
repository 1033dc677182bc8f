#!/usr/bin/env bash
# The GPU benchmarks as prepared runs for short device leases (15 minutes, 10 a command): two
# parts, each under 9 minutes, so one fits a lease with its start; sections in the order of
# what is still to be measured, each under a limit sized from the H200 run of 2026-12-04
# (docs/benchmarks.md). A section cut off keeps what it saved. Logs and results go to $OUT
# (default ./gpu-results); the exit status is the worst section's.
#
#   bash benchmarks/gpu_session.sh 1    # pair speedups (no HF rows), bundled exactness on 20 problems
#   bash benchmarks/gpu_session.sh 2    # batching at 1 and 16, the 1.5B/14B shapes
#   bash benchmarks/gpu_session.sh 1 --smoke    # the same commands on tiny CPU models (a test runs both parts)
#
# Where langchain-core is missing (a bare CUDA image), the wheels in .whl/ are installed first:
# .whl/ is ignored by git, so a remote run must carry it. The machine's own torch and
# transformers are used. $PYTHON: the interpreter (python3).
set -u
cd "$(dirname "$0")/.." || exit 1
python=${PYTHON:-python3}
part=${1:?part 1 or 2}
shift
extra=("$@")  # e.g. --smoke, passed to every benchmark
out=${OUT:-gpu-results}
mkdir -p "$out"
if ! "$python" -c "import langchain_core" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
log=$out/log$part.txt
started=$(date +%s)
worst=0
{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
  "$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } >>"$log" 2>&1

section() {  # section NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2 status
  shift 2
  echo "== $name (limit $limit s)" | tee -a "$log"
  timeout -k 5 "$limit" "$@" ${extra[@]+"${extra[@]}"} >>"$log" 2>&1
  status=$?
  echo "== $name exit $status at $(($(date +%s) - started)) s" | tee -a "$log"
  ((status > worst)) && worst=$status
}

case $part in
  1)
    section pair 240 "$python" benchmarks/gpu.py --sections warmup,decode,passes,pair --sizes 0.5B,7B --skip-hf --out "$out/pair"
    section bundled 250 "$python" benchmarks/gpu.py --sections bundled --problems 20 --out "$out/bundled"
    ;;
  2)
    section batching 320 "$python" benchmarks/batching.py --gpu --levels 1,16 --out "$out/batching"
    section shapes 180 "$python" benchmarks/gpu.py --sections warmup,decode,passes --sizes 1.5B,14B --skip-hf --out "$out/shapes"
    ;;
  *) echo "part 1 or 2" >&2; exit 2 ;;
esac
grep -vi "warn" "$log" | tail -c 8000
exit $worst
