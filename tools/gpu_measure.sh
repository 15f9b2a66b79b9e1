#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md and docs/results.md, one phase at a time, each writing a few files into
# OUT (run from the repository root, with pose_toss importable):
#   tools/gpu_measure.sh OUT check   the CUDA tests and `pose-toss bench` at resnet50 256 px, batch 32, bf16
#   tools/gpu_measure.sh OUT sweep   the method sweep at the GPU budget (configs/sweep_gpu.yaml) into
#                                     runs/sweep_gpu; running it again resumes. Its cells' results (no model
#                                     files) are packed into OUT/sweep_gpu.tgz.
# Environment: METHODS (comma-separated; default nll_tic,w2_then_nll_tic,w2_eff16_then_nll_tic), LRS (default
# 1e-2,1e-3,1e-4), JOBS (cells at once, default 14), DEADLINE (epoch seconds by which the sweep must have stopped
# and been packed; default: 420 s from its start). The sweep stops its cells with `pkill -f multiprocessing.spawn`:
# a calling command line must not contain that text itself.
set -u
out=${1:?usage: tools/gpu_measure.sh OUT check|sweep}
phase=${2:?usage: tools/gpu_measure.sh OUT check|sweep}
mkdir -p "$out"
stamp() { echo "[$(date +%T)] $*"; }
case $phase in
check)
  stamp "gpu"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
  stamp "cuda tests"
  python3 -m pytest -q -m cuda -p no:cacheprovider tests 2>&1 | tail -25 > "$out/cuda_tests.txt"
  tail -3 "$out/cuda_tests.txt"
  stamp "bench resnet50"
  timeout 240 python3 -m pose_toss bench --out runs/bench-r50 --profile --no-onnx --set model.backbone=resnet50 \
      --set data.input_size=256 --set model.deconv_channels=256 > "$out/bench_r50.log" 2>&1
  stamp "bench rc $?"
  cp runs/bench-r50/bench.json "$out/bench_r50.json" 2>/dev/null
  ;;
sweep)
  methods=${METHODS:-nll_tic,w2_then_nll_tic,w2_eff16_then_nll_tic}
  deadline=${DEADLINE:-$(( $(date +%s) + 420 ))}
  seconds=$(( deadline - $(date +%s) - 25 ))  # time to stop the workers and pack
  stamp "sweep: $methods, ${JOBS:-14} at a time, $seconds s"
  timeout "$seconds" python3 -m pose_toss compare --config configs/sweep_gpu.yaml --out runs/sweep_gpu \
      --methods "$methods" --lrs "${LRS:-1e-2,1e-3,1e-4}" --seeds 3 --jobs "${JOBS:-14}" >> "$out/sweep.log" 2>&1
  stamp "sweep rc $?"
  pkill -f multiprocessing.spawn; sleep 2  # cells still training when the time ran out resume next time
  tar czf "$out/sweep_gpu.tgz" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.tmp' \
      --exclude='predictions.json' --exclude='eval/*.png' runs/sweep_gpu
  grep -c "px, NLL" "$out/sweep.log"; tail -2 "$out/sweep.log"
  ;;
*) echo "unknown phase $phase (check or sweep)"; exit 2 ;;
esac
