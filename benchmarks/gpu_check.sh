#!/usr/bin/env bash
# The CUDA path checked and measured on one GPU in about 5 minutes (issue 14).
#
#   bash benchmarks/gpu_check.sh                 # from the project folder, on a node with one GPU
#   CUDA_VISIBLE_DEVICES=3 bash benchmarks/gpu_check.sh
#
# Part A needs only python with torch and numpy; the source tree goes on PYTHONPATH (nothing is installed):
#   A1 correctness on CUDA (benchmarks.cuda_checks): batched vs loop per-dimension gradients incl. second order,
#      maps from the training forward, device-resident dSprites batches, bf16 within tolerances of fp32;
#   A2 single-trial it/s per model, ours vs the independent textbook step, grad methods and bf16 (benchmarks.step);
#   A3 K trials packed on the GPU as plain processes, summed it/s, projected Table 1 wall time (benchmarks.packing).
# Part B runs only where the project is installed (ray, mlflow, optuna importable): a quick sweep end to end on
# CUDA with an MLflow check, then a sweep interrupted after its first checkpoint and resumed. Elsewhere it
# prints one line saying it was skipped. One summary block at the end; exit 1 if any part failed.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY=PASSIVE
PY=${PYTHON:-python}
WORK=$(mktemp -d -t gpu_check.XXXXXX)
SUMMARY=()
FAILED=0
note() { SUMMARY+=("$1"); }
part() {  # part NAME TIMEOUT_S COMMAND...: run, keep its output, record PASS/FAIL
  local name=$1 limit=$2; shift 2
  echo "== $name"
  timeout "$limit" "$@" 2>&1 | tee "$WORK/$name.out"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 0 ]; then note "PASS $name"; return 0; fi
  note "FAIL $name (exit $rc$([ "$rc" -eq 124 ] && echo ', timed out'); see $WORK/$name.out)"; FAILED=1; return 1
}

if ! $PY -c "import torch, numpy, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device visible to $PY (torch.cuda.is_available() is False); nothing to check"
  exit 1
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

# ---- Part A: torch + numpy only -------------------------------------------------------------------------------
part A1_cuda_checks 120 $PY -m benchmarks.cuda_checks --device cuda --steps 30
part A2_step 150 $PY -m benchmarks.step --device cuda --threads 4 --steps 60
part A3_packing 240 $PY -m benchmarks.packing --device cuda --trials 1 2 4 8 16 --seconds 6 --threads 1
STEP_ROWS=$(grep -E "\[ours\]" "$WORK/A2_step.out" 2>/dev/null | awk '{printf "  %s\n", $0}')
BEST=$(grep "best packing" "$WORK/A3_packing.out" 2>/dev/null)

# ---- Part B: the installed project end to end ---------------------------------------------------------------
if $PY -c "import ray, mlflow, optuna, study, trainables" 2>/dev/null; then
  STORE="$WORK/ray"; URI="sqlite:///$WORK/mlflow.db"
  part B1_quick_sweep 240 $PY -m study.run disentangle --quick --gpus-per-trial 0.5 --cpus-per-trial 1 \
      --storage "$STORE" --tracking-uri "$URI" --name gpu-check
  part B2_mlflow 60 $PY - "$URI" gpu-check 2 <<'EOF'
import sys
import mlflow
uri, name, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = mlflow.MlflowClient(tracking_uri=uri)
runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], "tags.run_kind = 'trial'")
bad = [(r.info.run_id, r.info.status, r.data.tags.get("device")) for r in runs
       if r.info.status != "FINISHED" or not r.data.tags.get("device", "").startswith("cuda")
       or "recon_loss" not in r.data.metrics]
print(f"{len(runs)} trial runs, {len(bad)} not FINISHED on cuda with recon_loss: {bad}")
sys.exit(0 if len(runs) == want and not bad else 1)
EOF
  # a sweep long enough to checkpoint, interrupted after its first checkpoint, then resumed
  setsid $PY -m study.run disentangle --quick --iterations 600 --checkpoint-every 100 --gpus-per-trial 0.5 \
      --cpus-per-trial 1 --storage "$STORE" --tracking-uri "$URI" --name gpu-check-resume > "$WORK/B3_first.out" 2>&1 &
  SWEEP=$!
  for _ in $(seq 180); do
    find "$STORE/gpu-check-resume" -name "checkpoint_*" -type d 2>/dev/null | grep -q . && break
    sleep 1
  done
  kill -TERM -- "-$SWEEP" 2>/dev/null; sleep 5; kill -KILL -- "-$SWEEP" 2>/dev/null; wait "$SWEEP" 2>/dev/null
  part B3_resume 240 $PY -m study.run disentangle --resume --name gpu-check-resume --storage "$STORE"
  part B4_resume_mlflow 60 $PY - "$URI" gpu-check-resume 2 <<'EOF'
import sys
import mlflow
uri, name, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = mlflow.MlflowClient(tracking_uri=uri)
runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], "tags.run_kind = 'trial'")
done = [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get("device", "").startswith("cuda")]
print(f"resumed sweep: {len(runs)} trial runs (one per trial, none duplicated), {len(done)} FINISHED on cuda")
sys.exit(0 if len(runs) == want and len(done) == want else 1)
EOF
else
  note "SKIP Part B: the project is not installed here (ray/mlflow/optuna not importable); Part A only"
  echo "Part B skipped: the project is not installed here (pip install -e . for the end-to-end sweep and resume)"
fi

echo
echo "==================== gpu_check summary ===================="
$PY -c "import torch; print('device:', torch.cuda.get_device_name(), '| torch', torch.__version__)"
printf '%s\n' "${SUMMARY[@]}"
[ -n "$STEP_ROWS" ] && printf 'single-trial it/s (ours, vs the textbook step):\n%s\n' "$STEP_ROWS"
[ -n "$BEST" ] && echo "$BEST"
echo "outputs: $WORK"
echo "==========================================================="
exit $FAILED
