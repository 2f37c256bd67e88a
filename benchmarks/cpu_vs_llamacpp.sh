#!/usr/bin/env bash
# surge vs llama.cpp on this CPU, the workload of benchmarks/cpu_vs_llamacpp.md.
#
# In: a Python with surge installed ($PYTHON), a C/C++ toolchain and cmake, network for one `pip download`.
# Out: under $RUN_DIR, one log per engine run (llama-batched-bench's JSONL, surge-bench's job folders),
#      cpu.txt (lscpu) and table.md (generated tok/s, weights x engine x round, with the CPU flags).
#
#   benchmarks/cpu_vs_llamacpp.sh [build|convert|bench|all]      (default: all)
#
# build:   llama.cpp from the source vendored in the llama-cpp-python sdist (llama.cpp is no dependency of
#          surge; nothing else in the repository builds it), into $LLAMACPP_DIR/build; skipped when the
#          binaries are there.
# convert: the embedded SmolLM2 Q4_1 GGUF (surge's cache; fetched if missing) to F32 / BF16 / Q8_0 with
#          llama-quantize; skipped per file when it exists.
# bench:   $ROUNDS rounds; each round runs llama-batched-bench then surge-bench for every weight format,
#          so the two engines take turns on the same machine in the same hour. Run it on an idle machine.
#
# Environment (defaults in brackets):
#   LLAMACPP_DIR   work folder: sdist, source, build/, converted GGUFs [~/.cache/surge/llamacpp]
#   LLAMACPP_PYTHON_VERSION   llama-cpp-python sdist whose vendored llama.cpp is built [0.3.16]
#   PYTHON         python that imports surge [python3]; surge-bench runs as `$PYTHON -m surge.cli.bench`
#   RUN_DIR        logs and table [$LLAMACPP_DIR/runs/<UTC date-time>]
#   THREADS        threads for both engines [2]      BUILD_JOBS   parallel compile jobs [2]
#   SEQS           concurrent sequences [1 8 32 64 128]; llama.cpp runs those up to its LLAMA_MAX_SEQ
#   WEIGHTS        formats [f32 bf16 q8_0 q4_1]: surge runs f32 as float32, bf16 as bfloat16,
#                  q8_0 / q4_1 as quantized, each on the same file llama.cpp runs
#   SURGE_ISAS     surge's backend.cpu_isa values, one row each [auto]; "auto avx2" adds rows forced to AVX2
#   ROUNDS         interleaved rounds [2]
set -euo pipefail

STEP="${1:-all}"
case "$STEP" in build|convert|bench|all) ;; *) echo "usage: $0 [build|convert|bench|all]" >&2; exit 2;; esac

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LLAMACPP_DIR="${LLAMACPP_DIR:-$HOME/.cache/surge/llamacpp}"
VERSION="${LLAMACPP_PYTHON_VERSION:-0.3.16}"
PYTHON="${PYTHON:-python3}"
THREADS="${THREADS:-2}"
BUILD_JOBS="${BUILD_JOBS:-2}"
SEQS="${SEQS:-1 8 32 64 128}"
WEIGHTS="${WEIGHTS:-f32 bf16 q8_0 q4_1}"
SURGE_ISAS="${SURGE_ISAS:-auto}"
ROUNDS="${ROUNDS:-2}"
PROMPT_LEN=32
GEN_LEN=128

SRC="$LLAMACPP_DIR/llama_cpp_python-$VERSION/vendor/llama.cpp"
BUILD="$LLAMACPP_DIR/build"
BIN="$BUILD/bin"
TARGETS=(llama-batched-bench llama-quantize llama-server)   # llama-server: benchmarks/llamacpp_greedy.py

build() {
    local missing=0 t
    for t in "${TARGETS[@]}"; do [[ -x "$BIN/$t" ]] || missing=1; done
    if [[ $missing == 0 ]]; then echo "build: $BIN has ${TARGETS[*]}, skipped"; return; fi
    mkdir -p "$LLAMACPP_DIR"
    local sdist="$LLAMACPP_DIR/llama_cpp_python-$VERSION.tar.gz"
    [[ -f "$sdist" ]] || "$PYTHON" -m pip download --no-deps --no-binary :all: \
        "llama-cpp-python==$VERSION" -d "$LLAMACPP_DIR"
    [[ -d "$SRC" ]] || tar xzf "$sdist" -C "$LLAMACPP_DIR"
    cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=ON > "$LLAMACPP_DIR/cmake-configure.log"
    cmake --build "$BUILD" -j"$BUILD_JOBS" --target "${TARGETS[@]}" > "$LLAMACPP_DIR/cmake-build.log"
    echo "build: ${TARGETS[*]} in $BIN"
}

embedded_gguf() {
    "$PYTHON" -c "from surge.models.catalogue import resolve_model; print(resolve_model('smollm2-135m-instruct'))"
}

# The GGUF each weight format runs from (both engines read the same file).
gguf_for() {
    case "$1" in
        q4_1) embedded_gguf ;;
        f32|bf16|q8_0) echo "$LLAMACPP_DIR/smollm2-135m-$1.gguf" ;;
        *) echo "WEIGHTS: unknown format '$1' (f32, bf16, q8_0, q4_1)" >&2; return 2 ;;
    esac
}

surge_dtype_for() {
    case "$1" in f32) echo float32 ;; bf16) echo bfloat16 ;; q8_0|q4_1) echo quantized ;; esac
}

convert() {
    local src w dst
    src="$(embedded_gguf)"
    for w in f32 bf16 q8_0; do
        dst="$(gguf_for "$w")"
        if [[ -f "$dst" ]]; then echo "convert: $dst exists, skipped"; continue; fi
        "$BIN/llama-quantize" --allow-requantize "$src" "$dst.part" "${w^^}" > "$dst.log" 2>&1
        mv "$dst.part" "$dst"
        echo "convert: $dst"
    done
}

llama_max_seq() {
    sed -n 's/^#define LLAMA_MAX_SEQ *\([0-9]*\).*/\1/p' "$SRC/src/llama-cparams.h"
}

bench() {
    RUN_DIR="${RUN_DIR:-$LLAMACPP_DIR/runs/$(date -u +%Y-%m-%dT%H-%M-%S)}"
    mkdir -p "$RUN_DIR"
    lscpu > "$RUN_DIR/cpu.txt"
    local max_seq npl="" n r w file isa ctx most=0
    max_seq="$(llama_max_seq)"
    for n in $SEQS; do
        if (( n <= max_seq )); then npl="${npl:+$npl,}$n"; (( n > most )) && most=$n; fi
    done
    ctx=$(( most * (PROMPT_LEN + GEN_LEN) ))
    echo "bench: logs in $RUN_DIR; llama.cpp at -npl $npl (LLAMA_MAX_SEQ $max_seq), surge at $SEQS"
    for r in $(seq 1 "$ROUNDS"); do
        for w in $WEIGHTS; do
            file="$(gguf_for "$w")"
            echo "round $r: llama.cpp $w"
            "$BIN/llama-batched-bench" -m "$file" -c "$ctx" -b 2048 -ub 512 -npp $PROMPT_LEN -ntg $GEN_LEN \
                -npl "$npl" -t "$THREADS" -tb "$THREADS" --output-format jsonl \
                > "$RUN_DIR/llama-$w-r$r.log" 2>&1
            for isa in $SURGE_ISAS; do
                for n in $SEQS; do
                    echo "round $r: surge $w isa=$isa seqs=$n"
                    "$PYTHON" -m surge.cli.bench bench=offline backend=cpu \
                        "backend.num_threads=$THREADS" "backend.cpu_isa=$isa" "model.path=$file" \
                        "model.dtype=$(surge_dtype_for "$w")" \
                        "engine.max_num_seqs=$n" "bench.input_len=$PROMPT_LEN" "bench.output_len=$GEN_LEN" \
                        "hydra.run.dir=$RUN_DIR/surge-$w-$isa-$n-r$r" > "$RUN_DIR/surge-$w-$isa-$n-r$r.log" 2>&1
                done
            done
        done
    done
    "$PYTHON" "$HERE/cpu_vs_llamacpp_table.py" "$RUN_DIR" > "$RUN_DIR/table.md"
    echo "bench: $RUN_DIR/table.md"
    cat "$RUN_DIR/table.md"
}

case "$STEP" in
    build) build ;;
    convert) convert ;;
    bench) bench ;;
    all) build; convert; bench ;;
esac
