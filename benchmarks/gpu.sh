#!/usr/bin/env bash
# GPU benchmark batch used for BENCHMARKS.md: one call of the device tool runs a whole phase.
#   bash benchmarks/gpu.sh eager|infer|compiled|rows|leads|data|data2|data2-compiled|tests OUTDIR
#   bash benchmarks/gpu.sh next-train|next-infer|next-data|next-loop OUTDIR   (not measured yet, one call each)
# One device call fits about 9 minutes: a compiled row costs 20-70 s of compilation on a cold cache, and a
# phase stops starting runs once PHASE_BUDGET seconds (default 540) are spent.
# Runs from source (PYTHONPATH=src) with the torch/timm/torchvision installed on the machine. The device image
# has no TorchCodec (--decode-on-device's decoder where installed): carry its wheel for Python 3.12 in .whl/
# (git-ignored; device call with carry [".whl"]), fetched here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl torchcodec==0.16.0
set -u
phase=${1:-eager}
out=${2:-${OUT:-/tmp/bench}}
runs=$(mktemp -d)  # each run's JSON report: collected into $out/bench.jsonl at the end (the device tool
                   # brings back at most 8 files from $OUT)
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
if ls .whl/torchcodec-*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --target /tmp/site .whl/torchcodec-*.whl; then
  export PYTHONPATH=src:/tmp/site
fi
python3 -c "from resnets.data.device_decode import jpeg_decoder; print('JPEG decoder:', jpeg_decoder())"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee "$out/gpu.txt"
start=$SECONDS
run() {  # name, then bench arguments; skipped once the phase's budget (PHASE_BUDGET s, default 540) is spent
  local name=$1; shift
  local left=$(( ${PHASE_BUDGET:-540} - (SECONDS - start) ))
  local limit=${RUN_TIMEOUT:-900}; [ $left -lt $limit ] && limit=$left
  if [ $limit -lt 30 ]; then echo "=== $name: skipped, the phase's time is spent"; return; fi
  echo "=== $name ($(( SECONDS - start )) s in): resnets bench $*"
  timeout $limit python3 -m resnets bench "$@" --json "$runs/$name.json" 2>&1 | grep -v "^W1\|UserWarning"
}
case $phase in
  eager)
    for m in resnet50 resnext50_32x4d res2net50_26w_4s resnet18; do
      refs=timm,torchvision; [ $m = res2net50_26w_4s ] && refs=timm
      run "$m-train-eager" --model $m --mode train --compare $refs
      run "$m-infer-eager" --model $m --mode infer --compare timm
    done ;;
  infer)
    for m in resnet50 resnext50_32x4d res2net50_26w_4s resnet18; do
      run "$m-infer-eager" --model $m --mode infer --compare timm
    done
    run "resnet50-infer-compiled" --model resnet50 --mode infer --compile default --compare timm --rounds 2
    ;;
  data)  # the input pipeline: 20,000 generated ~38 KB JPEGs, each stage and the step it feeds
    python3 benchmarks/make_jpegs.py /tmp/jpegs --classes 10 --per-class 2000
    run "resnet50-data" --model resnet50 --mode train --data /tmp/jpegs -j 16 --steps 40 --rounds 2
    ;;
  data2)  # the input pipeline with uint8 batches normalised on the GPU (eager; compiled: data2-compiled)
    [ -d /tmp/jpegs ] || python3 benchmarks/make_jpegs.py /tmp/jpegs --classes 10 --per-class 2000
    run "resnet50-data" --model resnet50 --mode train --data /tmp/jpegs -j 16 --steps 40 --rounds 2
    timeout 120 python3 benchmarks/probe_loader.py /tmp/jpegs 2>&1 | grep -v "Warn\|super()" | tee "$out/probe.txt"
    ;;
  data2-compiled)
    [ -d /tmp/jpegs ] || python3 benchmarks/make_jpegs.py /tmp/jpegs --classes 10 --per-class 2000
    run "resnet50-data-compiled" --model resnet50 --mode train --compile default --data /tmp/jpegs -j 16 --steps 40 --rounds 2
    ;;
  tests)  # the device-facing tests on the GPU machine: device "auto" is CUDA there, and the GPU-only tests run
    # 2 threads per xdist worker: 6 workers x torch's default 16 threads oversubscribed the 16 cores 6-fold
    OMP_NUM_THREADS=2 timeout ${TESTS_TIMEOUT:-400} python3 -m pytest -q -n 6 -rfE -p no:cacheprovider \
      tests/training/test_train.py tests/training/test_resume.py tests/data/test_in_memory.py \
      tests/data/test_device_decode.py tests/inference tests/bench tests/data/test_datasets.py 2>&1 | grep -v "Benchmark\|warner(" \
      | tee "$out/tests.log" | tail -30
    ;;
  rows)  # the rows the first H100 session left as —: compiled ResNeXt/Res2Net/ResNet-18, eager inference re-measures
    for m in resnext50_32x4d res2net50_26w_4s resnet18; do
      refs=timm; [ $m = resnet18 ] || refs=""  # timm compiled is in the issue's table except for resnet18
      run "$m-train-compiled" --model $m --mode train --compile default --rounds 2 ${refs:+--compare $refs}
      run "$m-infer-compiled" --model $m --mode infer --compile default --rounds 2 ${refs:+--compare $refs}
      run "$m-infer-eager" --model $m --mode infer --compare timm
    done ;;
  leads)  # not measured yet: CUDA graphs and larger inference batches for the unmet ResNet-50 targets
    run "resnet50-infer-cudagraphs" --model resnet50 --mode infer --compile reduce-overhead --rounds 2
    run "resnet50-infer-compiled-b512" --model resnet50 --mode infer --compile default -b 512 --rounds 2
    run "resnet50-train-cudagraphs" --model resnet50 --mode train --compile reduce-overhead --rounds 2
    ;;
  next-train)  # training leads, most likely first: cuDNN autotuning, CUDA graphs, 1x1 convs as matmuls, autotuned kernels
    run "resnet50-train-compiled-cudnn-bm" --model resnet50 --mode train --compile default --rounds 2
    run "resnet50-train-compiled-no-cudnn-bm" --model resnet50 --mode train --compile default --rounds 2 --no-cudnn-benchmark
    run "resnet50-train-cudagraphs" --model resnet50 --mode train --compile reduce-overhead --rounds 2
    run "resnet50-train-compiled-1x1mm" --model resnet50 --mode train --compile default --rounds 2 --inductor conv_1x1_as_mm=true
    for m in resnext50_32x4d res2net50_26w_4s resnet18; do  # cuDNN autotuning for grouped and 26-channel convs
      run "$m-train-compiled-cudnn-bm" --model $m --mode train --compile default --rounds 2
    done
    RUN_TIMEOUT=150 run "resnet50-train-autotune" --model resnet50 --mode train --compile max-autotune-no-cudagraphs --rounds 2
    ;;
  next-infer)  # inference leads: cuDNN autotuning, freezing, 1x1 convs as matmuls, CUDA graphs, batch 512
    run "resnet50-infer-compiled-cudnn-bm" --model resnet50 --mode infer --compile default --rounds 2
    run "resnet50-infer-compiled-no-cudnn-bm" --model resnet50 --mode infer --compile default --rounds 2 --no-cudnn-benchmark
    run "resnet50-infer-freezing" --model resnet50 --mode infer --compile default --rounds 2 --inductor freezing=true
    run "resnet50-infer-1x1mm" --model resnet50 --mode infer --compile default --rounds 2 --inductor conv_1x1_as_mm=true
    run "resnet50-infer-cudagraphs" --model resnet50 --mode infer --compile reduce-overhead --rounds 2
    run "resnet50-infer-compiled-b512" --model resnet50 --mode infer --compile default -b 512 --rounds 2
    for m in resnext50_32x4d res2net50_26w_4s; do
      run "$m-infer-compiled-cudnn-bm" --model $m --mode infer --compile default --rounds 2
      run "$m-infer-cudagraphs" --model $m --mode infer --compile reduce-overhead --rounds 2
    done
    RUN_TIMEOUT=150 run "resnet50-infer-autotune" --model resnet50 --mode infer --compile max-autotune-no-cudagraphs --rounds 2 --inductor conv_1x1_as_mm=true
    ;;
  next-data)  # the step fed by files after the bench's warm-up fix, eager; --decode-on-device's decoders and
    # decoding thread (benchmarks/device_decode.py) and their GPU tests; then compiled, and CUDA graphs
    python3 benchmarks/make_jpegs.py /tmp/jpegs --classes 10 --per-class 2000
    run "resnet50-data" --model resnet50 --mode train --data /tmp/jpegs -j 16 --steps 40 --rounds 2
    echo "=== --decode-on-device: TorchCodec against torchvision, decoding in turn with the step against ahead of it"
    timeout 200 python3 benchmarks/device_decode.py /tmp/jpegs --json "$out/device-decode.json" 2>&1 | grep -v Warn
    OMP_NUM_THREADS=2 timeout 150 python3 -m pytest -q -n 4 -rfE -p no:cacheprovider tests/data/test_device_decode.py \
      tests/training/test_gpu_sync.py 2>&1 | grep -v "Benchmark\|warner(" | tee "$out/tests.log" | tail -15
    run "resnet50-data-compiled" --model resnet50 --mode train --compile default --data /tmp/jpegs -j 16 --steps 40 --rounds 2
    left=$(( ${PHASE_BUDGET:-540} - (SECONDS - start) ))
    echo "=== the trainer with CUDA graphs: resnet50, 1 epoch of /tmp/jpegs ($left s left)"
    [ $left -gt 60 ] && timeout $left python3 -m resnets train --data-dir /tmp/jpegs --model resnet50 --epochs 1 \
      -b 256 -j 16 --compile --compile-mode reduce-overhead --output /tmp/runs --no-progress 2>&1 \
      | grep -v "Warn" | tail -6 | tee "$out/train-cudagraphs.txt"
    ;;
  next-loop)  # the trainer's loop against the bench's bare step: the no-host-sync tests, then ResNet-50 epochs from
    # the GPU-resident cache, eager and compiled (the epoch lines' img/s; epoch 1 holds the compilation), the
    # bench's synthetic step in the same session for the ratio, and Res2Net's grouped-branch A/B
    OMP_NUM_THREADS=4 timeout 240 python3 -m pytest -q -rfE -p no:cacheprovider tests/training/test_gpu_sync.py \
      tests/training/test_epoch.py tests/training/test_ema.py tests/training/test_optim.py 2>&1 | tee "$out/tests-loop.log" | tail -8
    [ -d /tmp/jpegs ] || python3 benchmarks/make_jpegs.py /tmp/jpegs --classes 10 --per-class 2000
    for mode in eager compiled; do
      left=$(( ${PHASE_BUDGET:-540} - (SECONDS - start) ))
      echo "=== the trainer, $mode, resnet50 from the resident cache of /tmp/jpegs ($left s left)"
      flag=""; [ $mode = compiled ] && flag="--compile"
      [ $left -gt 60 ] && timeout $left python3 -m resnets train --data-dir /tmp/jpegs --in-memory --model resnet50 \
        --epochs 3 -b 256 -j 16 $flag --output /tmp/runs-$mode --no-progress 2>&1 | grep -v "Warn" | tail -5 \
        | tee "$out/train-$mode.txt"
    done
    run "resnet50-train-eager" --model resnet50 --mode train --rounds 2
    run "resnet50-train-compiled" --model resnet50 --mode train --compile default --rounds 2
    echo "=== Res2Net's first-block branches: separate convs against one grouped conv (fwd + bwd, bf16, b256)"
    timeout 120 python3 benchmarks/res2net_branches.py --json "$out/res2net-branches.json" 2>&1 | grep -v Warn
    ;;
  compiled)
    run "resnet50-infer-compiled" --model resnet50 --mode infer --compile default --compare timm --rounds 2
    run "resnet50-train-compiled" --model resnet50 --mode train --compile default --compare timm --rounds 2
    run "resnet50-train-compiled-b384" --model resnet50 --mode train --compile default -b 384 --rounds 2
    ;;
esac
python3 - "$out" "$runs" <<'PY'
import json, pathlib, sys
out, runs = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
with open(out / "bench.jsonl", "w") as f:
    for p in sorted(runs.glob("*.json")):
        r = json.loads(p.read_text())
        for res in r["results"]:
            res.pop("step_ms", None)  # keep the summary small; medians and p90 stay
        f.write(json.dumps({"name": p.stem, **r}) + "\n")
PY
