#!/usr/bin/env bash
# The headline grid on a GPU machine: client-level q = 0.8, five methods x three seeds, 500 rounds each, all
# runs at once (one process per run; training and evaluation on CUDA; in-process transport, which gives the
# same numbers as the HTTP transport: tests/experiments/test_simulate.py).
# Usage: bash docs/results/run_grid_gpu.sh ARCHIVE.tgz [ROUNDS] [SECONDS]
#   env: METHODS (fedavg,fedprox,fedopt,fedproto,mfcpl), SEEDS (1,2,3), DEVICE (cuda), TAG, EXTRA (more sweep
#   arguments, e.g. "--set training.lambda_cmpr=0.1"), WORK (/tmp/grid).
#   needs python3 with torch, numpy, pydantic, httpx, matplotlib, and UCI-HAR under $MFCPL_DATASETS_DIR/uci_har.
#   Finished runs: results/*.json; every run's history so far (history.partial.json) is kept even when SECONDS
#   cuts the grid short. Everything is packed into ARCHIVE.tgz.
set -uo pipefail
archive=${1:?usage: run_grid_gpu.sh ARCHIVE.tgz [ROUNDS] [SECONDS]}
rounds=${2:-500}
seconds=${3:-520}
work=${WORK:-/tmp/grid}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
mkdir -p "$work/results" "$work/runs"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
started=$(date +%s)
tag_args=()
[ -n "${TAG:-}" ] && tag_args=(--tag "$TAG")
# shellcheck disable=SC2086
timeout --signal=INT "$seconds" python3 -m mfcpl.experiments.cli sweep \
  --methods "${METHODS:-fedavg,fedprox,fedopt,fedproto,mfcpl}" --rates 0.8 --modes client --seeds "${SEEDS:-1,2,3}" \
  --rounds "$rounds" --parallel 32 --device "${DEVICE:-cuda}" --in-process "${tag_args[@]}" ${EXTRA:-} \
  --results-dir "$work/results" --runs-dir "$work/runs" --table "$work/table.md" > "$work/sweep.log" 2>&1
echo "exit $? after $(( $(date +%s) - started )) s" >> "$work/sweep.log"
tar czf "$archive" -C "$work" --exclude='*.safetensors' --exclude='*.png' . 2>/dev/null
tail -n 30 "$work/sweep.log"
