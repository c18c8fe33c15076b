#!/usr/bin/env bash
# One GPU command (issues 16 and 26), under 8 minutes whatever the card does (a deadline cuts the later parts):
#   1. the bare training step of unet_ddpm_cifar10 at batch 128, bf16-mixed: eager, torch.compile default and
#      mode="reduce-overhead" (CUDA graphs); images/s, MFU, peak memory      -> bare_128.md/.json
#   2. a TRAIN_SECONDS (180 s) training run through Lightning (`python -m ddpm_lab.train experiment=ddpm_cifar10`,
#      bf16-mixed, compile, batch 128) on the CIFAR-10 folder, with its final sample grid -> train.log, samples_last.png
#   3. sampling its checkpoint, float32 vs bf16 under torch.inference_mode: images/s and the FID difference at
#      FID_N (1,000) samples                                                   -> sampling_fid.md/.json
#   4. the bare step at batch 512 (compile default and reduce-overhead)       -> bare_512.md/.json
#   5. a LIGHTNING_512_SECONDS (60 s) Lightning run at batch 512               -> train_512.log
#   then summary.md (Lightning vs bare at both batches) is printed.
#
#   scripts/gpu_check.sh [--cpu-smoke] CIFAR10_FOLDER OUT_FOLDER
#
# CIFAR10_FOLDER: an image folder with train/<class>/*.png (e.g. a copy of /work/shared/data/cifar10-subset); also
# $CIFAR10_DIR. OUT_FOLDER (also $OUT) gets the files named above plus a .log per part. A `.whl/` folder in the
# repository is installed first (pip --no-index --no-deps --target /tmp/site), for machines without hydra-core.
# DEADLINE_SECONDS (470): every part gets at most what is left (a part with under 30 s left is skipped, and says so).
# --cpu-smoke (or SMOKE=1): the same five parts on the CPU with a tiny U-Net, tiny sizes and no compilation (about
# 2 min on two idle cores; caps and deadline x SMOKE_SCALE=4): the check of the script itself
# (tests/cli/test_gpu_check_script.py runs it).
set -u -o pipefail
cd "$(dirname "$0")/.."
SMOKE=${SMOKE:-0}
if [ "${1:-}" = "--cpu-smoke" ]; then
    SMOKE=1
    shift
fi
DATA=${1:-${CIFAR10_DIR:-.gpu_data/cifar10-subset}}
OUT=${2:-${OUT:-gpu_check_out}}
PY=${PYTHON:-$(command -v python || command -v python3)}
TRAIN_SECONDS=${TRAIN_SECONDS:-180}
LIGHTNING_512_SECONDS=${LIGHTNING_512_SECONDS:-60}
FID_N=${FID_N:-1000}
DEADLINE_SECONDS=${DEADLINE_SECONDS:-470}
start=$(date +%s)

if [ ! -d "$DATA" ]; then
    echo "error: no image folder at '$DATA': pass it as the first argument (train/<class>/*.png)" >&2
    exit 2
fi
mkdir -p "$OUT" || exit 2
RUN=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_run.XXXXXX")
RUN512=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_run512.XXXXXX")
trap 'rm -rf "$RUN" "$RUN512"' EXIT
REAL=$DATA
[ -d "$DATA/train" ] && REAL=$DATA/train

if [ -d .whl ] && compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install --quiet --no-index --no-deps --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if [ "$SMOKE" = 1 ]; then
    BENCH=(--device cpu --model unet_tiny --image-size 16 --steps 2 --warmup 1 --gpu-dataset 64 --eager-only)
    TRAIN=(trainer=cpu model=unet_tiny dataset.image_size=16 compile=false trainer.precision=32-true
           schedule.timesteps=50 callbacks.sample_grid.n=4 callbacks.sample_grid.sampler.steps=5
           callbacks.diffusion_strips=null trainer.max_steps=4)
    BATCH=(4 8)
    FID=(--device cpu --n 8 --sample-batch 4 --fid-sampler dpm_solver)
    TRAIN_SECONDS=30 LIGHTNING_512_SECONDS=30
    SCALE=${SMOKE_SCALE:-4}  # a shared CPU is slow: every cap (and the deadline) times this
else
    BENCH=(--device cuda --model unet_ddpm_cifar10 --image-size 32 --steps 30 --warmup 10 --threads 8)
    TRAIN=(trainer=gpu trainer.precision=bf16-mixed compile=true dataset.on_device=true dataset.image_size=32)
    BATCH=(128 512)
    FID=(--device cuda --n "$FID_N" --sample-batch 500)
fi
SCALE=${SCALE:-1}
DEADLINE_SECONDS=$((DEADLINE_SECONDS * SCALE))
BENCH+=(--suite gpu --precisions bf16-mixed --compile-modes default,reduce-overhead --sample-batch 0)

left() { echo $((DEADLINE_SECONDS - ($(date +%s) - start))); }

# part NAME CAP LOG COMMAND...: run COMMAND under `timeout` for min(CAP, time left) seconds (stdout and stderr
# into OUT/LOG), or skip it when under 30 s are left.
part() {
    local name=$1 cap=$2 log=$3
    shift 3
    local budget
    budget=$(left)
    cap=$((cap * SCALE))
    [ "$cap" -lt "$budget" ] && budget=$cap
    if [ "$budget" -lt 30 ]; then
        echo "== $name: skipped ($(left) s left of DEADLINE_SECONDS=$DEADLINE_SECONDS)" | tee -a "$OUT/skipped.txt"
        return
    fi
    echo "== $name (at most ${budget}s)"
    timeout --signal=TERM --kill-after=10 "$budget" "$@" > "$OUT/$log" 2>&1
    echo "$name: exit status $? after $(($(date +%s) - start))s"
}

max_time() { printf "+trainer.max_time='00:%02d:%02d:%02d'" $(($1 / 3600)) $(($1 % 3600 / 60)) $(($1 % 60)); }

# The paper's recipe through Lightning on the folder, stopped by max_time (which still writes the final grid and
# last.ckpt): lightning BATCH SECONDS RUN_DIR [overrides].
lightning() {
    local batch=$1 seconds=$2 dir=$3
    shift 3
    LIGHTNING=("$PY" -m ddpm_lab.train experiment=ddpm_cifar10 dataset=image_folder
        "dataset.root=$(cd "$DATA" && pwd)" dataset.flip=true dataset.cache_min_files=null "${TRAIN[@]}"
        "dataset.batch_size=$batch" "$(max_time "$seconds")" callbacks.progress_bar.refresh_rate=200
        "hydra.run.dir=$dir" "$@")
}

# bare PART BATCH CAP: the bare step's rows at BATCH. A row other than bf16 + compile default starts only within
# CAP - 50 s (one more compilation must fit); results are saved after each row, so a timeout keeps what was measured.
bare() {
    part "$1 bare step, batch $2" "$3" "bare_$2.log" "$PY" scripts/benchmark.py "${BENCH[@]}" --batch "$2" \
        --budget $((($3 - 50) * SCALE)) --output "$RUN/bare_$2"
    cp "$RUN/bare_$2/gpu_benchmark.md" "$OUT/bare_$2.md" 2> /dev/null
    cp "$RUN/bare_$2/gpu_benchmark.json" "$OUT/bare_$2.json" 2> /dev/null
}

bare 1/5 "${BATCH[0]}" 150
lightning "${BATCH[0]}" "$TRAIN_SECONDS" "$RUN/train"
part "2/5 Lightning training run, batch ${BATCH[0]} (${TRAIN_SECONDS}s)" $((TRAIN_SECONDS + 60)) train.log \
    "${LIGHTNING[@]}"
grid=$(ls "$RUN"/train/samples/step_*.png 2> /dev/null | sort | tail -n 1)
[ -n "$grid" ] && cp "$grid" "$OUT/samples_last.png"
ckpt=$RUN/train/checkpoints/last.ckpt
if [ -f "$ckpt" ]; then
    part "3/5 sampling float32 vs bf16 + FID" 80 sampling_fid.log "$PY" scripts/benchmark.py --suite fid \
        "${FID[@]}" --ckpt "$ckpt" --real "$REAL" --output "$OUT"
else
    echo "== 3/5 sampling: skipped (the training run left no checkpoint)" | tee -a "$OUT/skipped.txt"
fi
bare 4/5 "${BATCH[1]}" 120
lightning "${BATCH[1]}" "$LIGHTNING_512_SECONDS" "$RUN512" callbacks.sample_grid=null \
    callbacks.diffusion_strips=null callbacks.model_checkpoint=null
part "5/5 Lightning run, batch ${BATCH[1]} (${LIGHTNING_512_SECONDS}s)" $((LIGHTNING_512_SECONDS + 40)) \
    train_512.log "${LIGHTNING[@]}"

{
    echo "# GPU check ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(($(date +%s) - start)) s)"
    for batch in "${BATCH[@]}"; do
        echo
        echo "## Batch $batch: the bare step"
        echo
        cat "$OUT/bare_$batch.md" 2> /dev/null || echo "no results (see bare_$batch.log)"
    done
    echo
    echo "## Lightning (python -m ddpm_lab.train experiment=ddpm_cifar10 ${TRAIN[*]})"
    echo
    for log in train.log train_512.log; do
        echo "$log:"
        grep -E "throughput:|finished at step|Error|error" "$OUT/$log" 2> /dev/null | tail -n 5 | sed 's/^/    /'
    done
    echo
    echo "Last sample grid: ${grid:-none} -> samples_last.png"
    echo
    cat "$OUT/sampling_fid.md" 2> /dev/null || echo "sampling: no results (see sampling_fid.log)"
    cat "$OUT/skipped.txt" 2> /dev/null
} > "$OUT/summary.md"
cat "$OUT/summary.md"
