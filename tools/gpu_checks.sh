#!/bin/bash
# The GPU checks of BENCHMARKS.md ("On a GPU") in one go, most important first; fima and its
# dependencies must be importable (pip install -e .). Every log and JSON goes to $OUT.
#
#   OUT=output/gpu_checks bash tools/gpu_checks.sh
#
# 1. the speed table: FIMA and MoCo (I3D, 16x224x224, the recipe's 8 clips per GPU: batch 64 on 8
#    GPUs) in fp32 and in SOLVER.AMP's default (fp16 on a GPU), and FIMA under the reference
#    implementation's schedule, with MFU;
# 2. bf16 against fp16 (fp16 adds the gradient scaler), with a profile of where the time goes;
# 3. cuDNN autotuning (CUDNN_BENCHMARK) on against off;
# 4. the motion benchmark's FIMA arm in fp16 on the GPU with the real loader: 20 iterations, a
#    resume to 40, then its linear-probe and retrieval evaluation;
# 5. the encoder passes alone under layout, dtype and stem variants (tools/encoder_variants.py).
# CROP, BATCH, ITERS and WARMUP shrink it for a dry run on a CPU (step 2, and step 4 unless AMP is
# bfloat16, need a GPU).
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-output/gpu_checks}
mkdir -p "$OUT"
START=$SECONDS
CROP=${CROP:-224}; BATCH=${BATCH:-8}; ITERS=${ITERS:-10}; WARMUP=${WARMUP:-3}
FIMA=configs/FIMA/i3d_k400_pretrain.yaml; MOCO=configs/MoCo/i3d_k400_pretrain.yaml
SHAPE="SOLVER.IMS_PER_BATCH $BATCH INPUT.CROP_SIZE $CROP"
log() { echo "== $(( SECONDS - START ))s: $*"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit \
  --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version())
print(torch.cuda.is_available() and torch.cuda.get_device_name(0))" >> "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

log "1. speed: FIMA vs MoCo, fp32 and the AMP default, and the reference schedule"
timeout 300 python3 tools/benchmark.py --task train --config-file $FIMA --reference \
  --iters "$ITERS" --warmup "$WARMUP" --data-iters 0 --output-json "$OUT/speed.json" $SHAPE \
  --compare $MOCO $SHAPE > "$OUT/speed.txt" 2>&1
echo "rc=$?"; grep -A22 "^Peak matmul" "$OUT/speed.txt"

log "2. bf16 against fp16, profiled"
timeout 200 python3 tools/benchmark.py --task train --config-file $FIMA --dtype bf16 \
  --iters "$ITERS" --warmup "$WARMUP" --data-iters 0 --profile --output-json "$OUT/fp16.json" \
  $SHAPE --compare $FIMA $SHAPE SOLVER.AMP.DTYPE float16 > "$OUT/fp16.txt" 2>&1
echo "rc=$?"; grep -A7 "^Peak matmul" "$OUT/fp16.txt"

log "3. cuDNN autotuning on against off (bf16)"
timeout 200 python3 tools/benchmark.py --task train --config-file $FIMA --dtype bf16 \
  --iters "$ITERS" --warmup "$WARMUP" --data-iters 0 --output-json "$OUT/cudnn.json" $SHAPE \
  CUDNN_BENCHMARK True --compare $FIMA $SHAPE CUDNN_BENCHMARK False > "$OUT/cudnn.txt" 2>&1
echo "rc=$?"; grep -A7 "^Peak matmul" "$OUT/cudnn.txt"

log "4. the motion benchmark's FIMA arm in fp16: train, resume, evaluate"
RUN="$OUT/fima_motion"
ARM="--config-file configs/Benchmark/fima_motion.yaml SOLVER.CHECKPOINT_PERIOD 10 LOG_PERIOD 10"
if [ -e "$RUN" ]; then
  echo "$RUN exists: not overwritten; remove it to rerun step 4"
else
  (timeout 300 python3 tools/train_net.py $ARM OUTPUT_DIR "$RUN" SOLVER.MAX_ITER 20 \
     SOLVER.AMP.DTYPE "${AMP:-float16}" && \
   timeout 120 python3 tools/train_net.py --resume $ARM OUTPUT_DIR "$RUN" SOLVER.MAX_ITER 40 \
     SOLVER.AMP.DTYPE "${AMP:-float16}" && \
   timeout 120 python3 tools/train_net.py --eval-only \
     --config-file configs/Benchmark/eval_motion.yaml OUTPUT_DIR "$RUN/eval" \
     MODEL.WEIGHTS "$RUN/model_final.pth") > "$OUT/motion_arm.txt" 2>&1
  echo "rc=$?"; grep -E "iter: (19|39) |Resuming|Evaluation took" "$OUT/motion_arm.txt"
fi
log "5. encoder variants: layout, dtype, stem"
timeout 300 python3 tools/encoder_variants.py --crop "$CROP" --q $((2 * BATCH)) \
  --k $((6 * BATCH)) --iters "$ITERS" --warmup "$WARMUP" > "$OUT/encoder_variants.txt" 2>&1
echo "rc=$?"; grep -v '^{' "$OUT/encoder_variants.txt" | tail -22
log done
