#!/usr/bin/env bash
# GPU benchmark batch used for BENCHMARKS.md: one call of the device tool runs a whole phase.
#   bash benchmarks/gpu.sh eager|infer|compiled|data|tests OUTDIR
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
  tests)  # the suite on the GPU machine: device "auto" is CUDA there, and the GPU-only tests run
    timeout 420 python3 -m pytest -q -n 8 --maxfail 25 -p no:cacheprovider 2>&1 | tee "$out/tests.log" | tail -40
    ;;
  rows)  # the rows the first H100 session left as —: compiled ResNeXt/Res2Net/ResNet-18, eager inference re-measures
    for m in resnext50_32x4d res2net50_26w_4s resnet18; do
      refs=timm; [ $m = resnet18 ] || refs=""  # timm compiled is in the issue's table except for resnet18
      run "$m-train-compiled" --model $m --mode train --compile default --rounds 2 ${refs:+--compare $refs}
      run "$m-infer-compiled" --model $m --mode infer --compile default --rounds 2 ${refs:+--compare $refs}
      run "$m-infer-eager" --model $m --mode infer --compare timm
    done ;;
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
