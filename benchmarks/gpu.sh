#!/usr/bin/env bash
# GPU benchmark batch used for BENCHMARKS.md: one call of the device tool runs a whole phase.
#   bash benchmarks/gpu.sh eager|infer|compiled|rows|leads|data|data2|data2-compiled|tests OUTDIR
# One device call fits about 9 minutes: a compiled row costs 20-70 s of compilation on a cold cache.
# Runs from source (PYTHONPATH=src) with the torch/timm/torchvision installed on the machine.
set -u
phase=${1:-eager}
out=${2:-${OUT:-/tmp/bench}}
mkdir -p "$out/json"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee "$out/gpu.txt"
run() {  # name, then bench arguments
  local name=$1; shift
  echo "=== $name: resnets bench $*"
  timeout ${RUN_TIMEOUT:-900} python3 -m resnets bench "$@" --json "$out/json/$name.json" 2>&1 | grep -v "^W1\|UserWarning"
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
      tests/test_train.py tests/test_resume.py tests/test_resident.py tests/test_device_decode.py \
      tests/test_tasks.py tests/test_bench.py tests/test_data.py 2>&1 | grep -v "Benchmark\|warner(" \
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
  compiled)
    run "resnet50-infer-compiled" --model resnet50 --mode infer --compile default --compare timm --rounds 2
    run "resnet50-train-compiled" --model resnet50 --mode train --compile default --compare timm --rounds 2
    run "resnet50-train-compiled-b384" --model resnet50 --mode train --compile default -b 384 --rounds 2
    ;;
esac
python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
with open(out / "bench.jsonl", "w") as f:
    for p in sorted((out / "json").glob("*.json")):
        r = json.loads(p.read_text())
        for res in r["results"]:
            res.pop("step_ms", None)  # keep the summary small; medians and p90 stay
        f.write(json.dumps({"name": p.stem, **r}) + "\n")
PY
