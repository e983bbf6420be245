#!/usr/bin/env bash
# Every GPU check of the project in one run, under 8 minutes on one GPU; the figures go to DIR/*.json
# (default gpu_check/) and one summary, DIR/gpu_check.json:
#   - the GPU tests (Triton ContMix forward and backward against the reference, fp32 and bf16, awkward shapes);
#   - the Triton kernel's achieved memory bandwidth (fp32, bf16);
#   - inference and training throughput and peak memory of OverLoCK-XT and -T against ConvNeXt-T, batch 128, bf16;
#   - one forward and backward pass of the OverLoCK-T detection backbone at 800x1333, batch 2;
#   - OverLoCK-T Mask R-CNN at 800x1333: inference at batch 1 and a training step at batch 2, with peak memory.
# Without a CUDA GPU it says so and exits at once with status 2.
#
#   bash benchmarks/gpu_check.sh [DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_check}
python=${PYTHON:-python}

if ! "$python" -c "import overlock" 2>/dev/null; then
    echo "gpu_check: $python cannot import overlock; activate the project's environment (or set PYTHON)" >&2
    exit 1
fi
if ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU is available here, so nothing was checked or measured" >&2
    exit 2
fi
mkdir -p "$out"
status=0
run() {  # run NAME SECONDS COMMAND...: a step with a time limit; its status is recorded, the next steps still run
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" "$@"
    local rc=$?
    echo "{\"step\": \"$name\", \"status\": $rc}" > "$out/$name.status.json"
    [ $rc -eq 0 ] || status=1
}

run tests 150 "$python" -m pytest -q -m gpu tests --junitxml "$out/tests.xml"
run bandwidth_fp32 40 "$python" benchmarks/triton_av_bandwidth.py --dtype float32 --json "$out/bandwidth_fp32.json"
run bandwidth_bf16 40 "$python" benchmarks/triton_av_bandwidth.py --dtype bfloat16 --json "$out/bandwidth_bf16.json"
for mode in infer train; do
    run "throughput_$mode" 100 "$python" -m overlock.cli.main benchmark overlock_xt overlock_t convnext_tiny \
        --device cuda --dtype bf16 --batch-size 128 --mode "$mode" --iters 10 --warmup 3 --json "$out/throughput_$mode.json"
done
run dense_step 60 "$python" benchmarks/dense_step.py overlock_t --height 800 --width 1333 --batch-size 2 \
    --device cuda --json "$out/dense_step.json"
run det_cost 120 "$python" benchmarks/det_cost.py --device cuda --iters 5 --warmup 2 --json "$out/det_cost.json"

"$python" - "$out" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
summary = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    name = os.path.basename(path)[: -len(".json")]
    if name != "gpu_check":
        with open(path) as f:
            summary[name] = json.load(f)
with open(os.path.join(out, "gpu_check.json"), "w") as f:
    json.dump(summary, f, indent=2)
print(f"wrote {os.path.join(out, 'gpu_check.json')}")
PY
exit $status
