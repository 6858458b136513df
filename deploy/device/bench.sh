#!/usr/bin/env bash
# Issue 16's GPU figures in one run (docs/benchmarks.md, "On a GPU"): run from the repository
# root on a machine with a CUDA GPU and PyTorch, e.g. through the workplace's device tool:
#
#     deploy/device/wheels.sh                       # here, once: .whl/ (pydantic, webdataset, mlxtend)
#     run(command="deploy/device/bench.sh steps", carry=[".whl"], timeout_s=600)
#     run(command="deploy/device/bench.sh learn", carry=[".whl"], timeout_s=600)
#
# (each part fits one 10-minute call; no argument runs both).
# It installs the wheels of .whl/ (if any) into /tmp/site without touching the machine's own
# packages, then writes JSON lines (one object per configuration, as `mvae-dist bench` prints
# them) and a log to $OUT (default ./device-out):
#   step-compute.jsonl   MMVAE baseline and cI step, K = 30, N = 5, B = 128: fp32/bf16 x
#                        contiguous/channels_last (eager), then fp32/bf16 x eager/torch.compile
#   step-negatives.jsonl MVAE and JMVAE: fresh (exact), reuse, K' = 5 negatives
#   loader-w*.jsonl      pairs/s through the shard loader, 0 and 4 DataLoader workers
#   learn-*.jsonl        time to the demo's targets (bench learn --until-targets): cI-MMVAE and
#                        MMVAE in fp32, cI-MMVAE in bf16 + channels_last
# Nothing here needs MLflow or Ray. SMALL=1 DEVICE=cpu rehearses every command in minutes on a
# CPU machine (tiny sizes; the figures mean nothing).
set -uo pipefail
cd "$(dirname "$0")/../.."
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-$PWD/device-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed" | tee -a "$LOG"; exit 1; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
MVAE=("$PY" -c 'import sys; from mvae_dist.launch.cli import main; sys.exit(main(sys.argv[1:]))')
# one step of the script: its name, a time limit in seconds, the command; stdout to $OUT/name.jsonl
part() {
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "== $name: $*" >> "$LOG"
    timeout "$limit" "$@" > "$OUT/$name.jsonl" 2>> "$LOG"
    echo "== $name: rc $? in $((SECONDS - t0)) s" | tee -a "$LOG"
}

if [ "${SMALL:-0}" = 1 ]; then
    K=2; B=16; STEPS=2; WARM=1; DM=1; FRAC=0.5; LSTEPS=4; EVERY=2; NTEST=50; EPOCHS=--epochs=1
else
    K=30; B=128; STEPS=20; WARM=3; DM=5; FRAC=0.2; LSTEPS=3000; EVERY=100; NTEST=500; EPOCHS=
fi
{ date -u; nvidia-smi -L 2>/dev/null; $PY -c 'import torch, sys; print(sys.version.split()[0], torch.__version__,
  torch.cuda.get_device_name() if torch.cuda.is_available() else "no cuda")'; git log --oneline -1; } >> "$LOG" 2>&1

WHAT=${1:-all}
if [ "$WHAT" = steps ] || [ "$WHAT" = all ]; then
STEP=(bench step --device "$DEVICE" --model mmvae --objective baseline,contrastive --K $K --N 5
      --batch-size $B --steps $STEPS --warmup $WARM)
part step-compute 150 "${MVAE[@]}" "${STEP[@]}" --precision fp32,bf16 --memory-format contiguous,channels_last
part step-compile 240 "${MVAE[@]}" "${STEP[@]}" --precision fp32,bf16 --compile off,on
part step-negatives 90 "${MVAE[@]}" bench step --device "$DEVICE" --model mvae,jmvae --objective baseline,contrastive \
    --negatives fresh,reuse,K5 --K $K --N 5 --batch-size $B --steps $STEPS --warmup $WARM

fi
if [ "$WHAT" = learn ] || [ "$WHAT" = all ]; then
D=/tmp/mvae-device
part prepare 60 "${MVAE[@]}" data prepare --dataset embedded --out $D/embedded --dm $DM --quiet
part prepare-f 60 "${MVAE[@]}" data prepare --dataset embedded --out $D/f --dm $DM --fraction $FRAC --quiet
part classifiers 120 "${MVAE[@]}" classifiers train --data $D/embedded --no-mlflow $EPOCHS
part loader-w0 30 "${MVAE[@]}" bench loader --data $D/f --batches 50 --batch-size 128 --num-workers 0
part loader-w4 30 "${MVAE[@]}" bench loader --data $D/f --batches 50 --batch-size 128 --num-workers 4
LEARN=(bench learn --device "$DEVICE" --config configs/embedded/demo.yaml --steps $LSTEPS --eval-every $EVERY
       --n-test $NTEST --until-targets data.url=$D/f eval.classifiers=$D/embedded)
part learn-ci-fp32 90 "${MVAE[@]}" "${LEARN[@]}"
part learn-ci-bf16-cl 90 "${MVAE[@]}" "${LEARN[@]}" train.precision=bf16 train.channels_last=true
part learn-mmvae-fp32 90 "${MVAE[@]}" "${LEARN[@]}" objective.name=baseline
fi
echo "done: $OUT" | tee -a "$LOG"
