#!/usr/bin/env bash
# `make demo-toy` (and `make demo` without lstchain): a toy night of 4 runs x 50 sub-runs (200 files) through a 5-step production, on the embedded
# defaults (local process pool, SQLite catalog, local-filesystem store), in a fresh workspace.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
workspace=$(realpath -m "${1:-demo-workspace}")
bin="$here/.venv/bin"
rm -rf "$workspace"
mkdir -p "$workspace"
cd "$workspace"
export OSA_GRID_HOME="$workspace/.osa-grid"

echo "== 1. a night of raw data: a calibration run (5 sub-runs) and 4 data runs x 50 sub-runs"
"$bin/python" -m osa_grid.steps.toy make-inputs raw/20261121/calibration --runs 1806 --subruns 5 --events 200
"$bin/python" -m osa_grid.steps.toy make-inputs raw/20261121/data --runs 1807 1808 1809 1810 --subruns 50 --events 200

echo "== 2. register the raw files in the catalog (metadata from the names + the night's facts)"
pattern='LST-1.Run{run_id:d}.{subrun_id:d}.r0.csv'
"$bin/osa-grid" files register raw/20261121/calibration/*.r0.csv --pattern "$pattern" \
  --meta data_level=R0 --meta run_type=PEDCALIB --meta night=2026-11-21 --meta n_subruns=5 \
  --lfn-prefix raw/20261121
"$bin/osa-grid" files register raw/20261121/data/*.r0.csv --pattern "$pattern" \
  --meta data_level=R0 --meta run_type=DATA --meta night=2026-11-21 --meta n_subruns=50 --meta source=Crab \
  --lfn-prefix raw/20261121

echo "== 3. run the production: pedestal (calibration run) -> calibrate (per sub-run, needs the pedestal)"
echo "       -> merge (per complete run) -> reconstruct -> summarize (the night)"
"$bin/osa-grid" production run "$here/workflows/toy_chain.yaml"

echo "== 4. the products"
echo "catalog:  $OSA_GRID_HOME/catalog.sqlite"
echo "products: $OSA_GRID_HOME/data/toy-chain/"
echo "\$ osa-grid query 'production = toy-chain and data_level in (DL2, DL3)'"
"$bin/osa-grid" query 'production = toy-chain and data_level in (DL2, DL3)'
echo "\$ cat $OSA_GRID_HOME/data/toy-chain/v1.0/DL3/summary_2026-11-21.csv"
cat "$OSA_GRID_HOME/data/toy-chain/v1.0/DL3/summary_2026-11-21.csv"
