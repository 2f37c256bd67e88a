#!/usr/bin/env bash
# One short GPU check of the triton backend, for a CUDA machine with no network
# (an H100 with Python 3.12, jax 0.11, triton 3.6). The stage limits add up to
# under 10 minutes, so the whole check fits one device command.
#
# In: the repository as the working directory; optionally wheels in .whl/
# (jax-triton, scikit-build-core, pybind11, ...) installed with --no-index.
# Out: stage logs on stdout (and in $OUT/gpu_check.log when $OUT is set):
# the environment, the install and build, the triton-vs-reference parity lines,
# then the timing table last. Every stage has a hard timeout and a failed stage
# does not stop the next; the exit status counts the failed stages.
#
#   bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
LOG=${OUT:+$OUT/gpu_check.log}
failed=0

say() { echo "$*"; [ -n "$LOG" ] && echo "$*" >>"$LOG"; return 0; }

# stage NAME SECONDS COMMAND...: run under a hard timeout, log its output, count a failure.
stage() {
  local name=$1 limit=$2
  shift 2
  say ""
  say "=== $name (limit ${limit}s): $*"
  local start=$SECONDS rc
  if [ -n "$LOG" ]; then
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
  else
    timeout --kill-after=10 "$limit" "$@" 2>&1
    rc=$?
  fi
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    say "=== $name: TIMED OUT after ${limit}s"
  fi
  say "=== $name: rc=$rc in $((SECONDS - start))s"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
  return 0
}

install_wheels() {
  shopt -s nullglob
  local wheels=(.whl/*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "no .whl/ wheels carried; using what is installed"
    return 0
  fi
  "$PYTHON" -m pip install --no-index --find-links .whl "${wheels[@]}"
}

build_surge() {
  # The native module (surge._C) is not needed by the triton backend; if the build fails the
  # later stages still import surge from the source tree through PYTHONPATH.
  "$PYTHON" -m pip install --no-index --no-deps --no-build-isolation --find-links .whl -e .
}

environment() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PYTHON" --version
  "$PYTHON" -m pip list 2>/dev/null | grep -i -E "^(jax|jaxlib|jax-triton|jax-cuda|triton|numpy|torch) " || true
  "$PYTHON" -c "import jax; print('jax', jax.__version__, jax.default_backend(), jax.devices())"
  "$PYTHON" -c "import jax_triton, triton; print('jax_triton', jax_triton.__version__, 'triton', triton.__version__)"
}

# timeout runs programs, not shell functions: hand the functions to a child bash.
export -f install_wheels build_surge environment
export PYTHON
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
stage "install wheels" 60 bash -c install_wheels
stage "build surge" 120 bash -c build_surge
stage "environment" 30 bash -c environment
stage "triton parity" 150 "$PYTHON" benchmarks/gpu_check.py parity
stage "triton bench" 220 "$PYTHON" benchmarks/gpu_check.py bench
say ""
say "=== gpu_check done: $failed stage(s) failed"
exit "$failed"
