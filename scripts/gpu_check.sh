#!/usr/bin/env bash
# One GPU command (issue 16): the GPU benchmark (training step of unet_ddpm_cifar10 at batch 128 in
# 32-true / bf16-mixed / 16-mixed x eager / torch.compile; images/s, MFU, peak memory; bf16 sampling), then a
# short bf16 + compile training run on real CIFAR-10 images through `python -m ddpm_lab.train`.
#
#   scripts/gpu_check.sh CIFAR10_FOLDER OUT_FOLDER
#
# CIFAR10_FOLDER: an image folder with train/<class>/*.png (e.g. a copy of /work/shared/data/cifar10-subset);
# also $CIFAR10_DIR. OUT_FOLDER (also $OUT): gets at most 7 files: gpu_benchmark.md/.json, benchmark.log,
# train.log, samples_last.png, summary.md. A `.whl/` folder in the repository is installed first
# (pip --no-index --no-deps --target /tmp/site), for machines without hydra-core/omegaconf.
# Time (default ~7 min, at most ~9.5 min by the timeouts): BENCH_BUDGET=90 s of benchmark rows (eager rows first;
# bf16 + compile always runs; the other compiled rows only within the budget; then sampling), TRAIN_SECONDS=180 s
# of training (Lightning's max_time, compilation included; + start-up, final sample grid).
# SMOKE=1: a tiny CPU run of the same steps (no compilation), to check the script itself in < 1 min.
set -u -o pipefail
cd "$(dirname "$0")/.."
DATA=${1:-${CIFAR10_DIR:-.gpu_data/cifar10-subset}}
OUT=${2:-${OUT:-gpu_check_out}}
PY=${PYTHON:-$(command -v python || command -v python3)}
BENCH_BUDGET=${BENCH_BUDGET:-90}
TRAIN_SECONDS=${TRAIN_SECONDS:-180}
SMOKE=${SMOKE:-0}
start=$(date +%s)
mkdir -p "$OUT"
RUN=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_run.XXXXXX")

if [ -d .whl ] && compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install --quiet --no-index --no-deps --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ ! -d "$DATA" ]; then
    echo "error: no image folder at '$DATA': pass it as the first argument (train/<class>/*.png)" >&2
    exit 2
fi

if [ "$SMOKE" = 1 ]; then
    BENCH=(--device cpu --model unet_tiny --image-size 16 --batch 4 --steps 2 --warmup 1 --gpu-dataset 64
           --sample-batch 2 --eager-only --budget 30)
    TRAIN=(trainer=cpu model=unet_tiny dataset.image_size=16 dataset.batch_size=8 compile=false
           trainer.precision=32-true schedule.timesteps=50 callbacks.sample_grid.n=4
           callbacks.sample_grid.sampler.steps=5 trainer.max_steps=6 callbacks.diffusion_strips=null)
    TRAIN_SECONDS=20
else
    BENCH=(--device cuda --model unet_ddpm_cifar10 --image-size 32 --batch 128 --steps 50 --warmup 15
           --threads 8 --sample-batch 256 --budget "$BENCH_BUDGET")
    TRAIN=(trainer=gpu trainer.precision=bf16-mixed compile=true dataset.on_device=true)
fi

echo "== 1/2 benchmark (budget ${BENCH_BUDGET}s)"
timeout --signal=TERM --kill-after=10 $((BENCH_BUDGET + 130)) \
    "$PY" scripts/benchmark.py --suite gpu "${BENCH[@]}" --output "$OUT" > /dev/null 2> "$OUT/benchmark.log"
echo "benchmark exit status $? after $(( $(date +%s) - start ))s"

echo "== 2/2 training run (${TRAIN_SECONDS}s of training)"
# The paper's CIFAR-10 recipe on the image folder; stopped by Lightning's max_time, which still runs
# the final sample grid and checkpoint. Validation and periodic grids stay at their (10k-step) intervals.
timeout --signal=TERM --kill-after=20 $((TRAIN_SECONDS + 150)) \
    "$PY" -m ddpm_lab.train experiment=ddpm_cifar10 dataset=image_folder "dataset.root=$(cd "$DATA" && pwd)" \
    dataset.image_size=32 dataset.flip=true dataset.cache_min_files=null "${TRAIN[@]}" \
    "+trainer.max_time='$(printf '00:%02d:%02d:%02d' $((TRAIN_SECONDS / 3600)) $((TRAIN_SECONDS % 3600 / 60)) $((TRAIN_SECONDS % 60)))'" callbacks.progress_bar.refresh_rate=200 \
    "hydra.run.dir=$RUN" > "$OUT/train.log" 2>&1
echo "training exit status $? after $(( $(date +%s) - start ))s"

grid=$(ls "$RUN"/samples/step_*.png 2> /dev/null | sort | tail -n 1)
[ -n "$grid" ] && cp "$grid" "$OUT/samples_last.png"

{
    echo "# GPU check ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(( $(date +%s) - start )) s)"
    echo
    cat "$OUT/gpu_benchmark.md" 2> /dev/null || echo "benchmark: no results (see benchmark.log)"
    echo
    echo "Training run (python -m ddpm_lab.train experiment=ddpm_cifar10 ${TRAIN[*]}, ${TRAIN_SECONDS}s):"
    echo
    grep -E "throughput:|finished at step|Error|error" "$OUT/train.log" | tail -n 5 | sed 's/^/    /'
    echo
    echo "Last sample grid: ${grid:-none} -> samples_last.png"
} > "$OUT/summary.md"
cat "$OUT/summary.md"
rm -rf "$RUN"
