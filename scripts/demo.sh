#!/usr/bin/env bash
# `make demo`: a synthetic LST-1 night through the real analysis software (lstchain 0.12.3, ctapipe 0.25.1),
# on the embedded defaults (local process pool bounded by cores and memory, SQLite catalog, local store):
#   1. a toy Monte Carlo -> production lst-mc: DL1, random forests, point-like IRFs (catalogued)
#   2. a night (DRS4 + PEDCALIB runs, two data runs of three sub-runs with the Crab in wobble)
#      -> production lst-night: DRS4 pedestal, calibration, R0 -> DL1 -> DL1 per run -> DL2 -> DL3 + index
#   3. gammapy reads the DL3 and counts ON/OFF events at the Crab.
# About 6 minutes on 2 cores. Without lstchain installed it runs the toy chain instead (scripts/demo_toy.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/.venv/bin"
if ! "$bin/python" -c "import lstchain" 2>/dev/null; then
  echo "lstchain is not installed (pip install -e '.[lstchain]'): running the toy chain instead"
  exec bash "$here/scripts/demo_toy.sh" "$@"
fi
workspace=$(realpath -m "${1:-demo-workspace}")
night=2025-11-20
rm -rf "$workspace"
mkdir -p "$workspace"
cd "$workspace"
export OSA_GRID_HOME="$workspace/.osa-grid" MPLBACKEND=Agg
quiet() { grep -v -e 'Warning' -e 'warn' -e '^  ' -e 'Column .* not writable' -e ' - Closed ' -e 'Will compress' -e 'MissingReferenceMetadata' || true; }
start=$(date +%s)

echo "== 1. toy Monte Carlo: diffuse gammas and protons (training), point-like gammas (IRFs)"
"$bin/osa-grid" site simulate-mc mc --train-events 500 --test-events 300 2>&1 | quiet
"$bin/osa-grid" site register-mc mc --tag toy-v1
"$bin/osa-grid" production run "$here/workflows/lst_mc.yaml" --no-live

echo "== 2. a synthetic LST-1 night: R0 zfits (4 streams), drive log, RunSummary"
"$bin/osa-grid" site simulate-night onsite --date "$night" --run 1807 --run 1808 --subruns 3 --events 200 \
  --calibration-events 200 2>&1 | quiet
"$bin/osa-grid" site register-night onsite --date "$night" --mc-production toy-v1 --calibration-sample-size 50

echo "== 3. the night's production: calibration, R0 -> DL1 -> DL2 -> DL3 (real lstchain tools)"
"$bin/osa-grid" production run "$here/workflows/lst_night.yaml" --no-live

echo "== 4. the products"
echo "\$ osa-grid query 'production = lst-night and data_level in (CALIBRATION, DL2, DL3)'"
"$bin/osa-grid" query 'production = lst-night and data_level in (CALIBRATION, DL2, DL3)'
dl3="$OSA_GRID_HOME/data/lst-night/DL3/${night//-/}"
echo "\$ osa-grid site check-dl3 $dl3"
"$bin/osa-grid" site check-dl3 "$dl3" --min-significance 5 2>&1 | quiet
echo "demo done in $(( $(date +%s) - start )) s; catalog: $OSA_GRID_HOME/catalog.sqlite"
