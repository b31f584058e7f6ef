#!/usr/bin/env bash
# `make demo`: a synthetic LST-1 night through the real analysis software (lstchain 0.12.3, ctapipe 0.25.1),
# on the embedded defaults (local process pool bounded by cores and memory, SQLite catalog, local store):
#   1. a toy Monte Carlo -> production lst-mc: DL1, random forests, point-like IRFs (catalogued)
#   2. a night written under onsite/ as LST-1 writes it: DRS4 + PEDCALIB runs, three data runs of two
#      sub-runs with the Crab in wobble (one of them raw, two gains, as before 2025), drive log, RunSummary
#   3. one `osa-grid nightly run` (workflows/lst_nightly.yaml) takes the night from R0 to a closed night:
#      calibration, gain selection, R0 -> DL1, DL1ab, datachecks, merge, DL2, quality figures, plots, the
#      night-wise datacheck, page
#   4. the night's status table, product tree and status page are checked
#   5. DL2 -> DL3 + index (workflows/lst_nightly_dl3.yaml); gammapy counts ON/OFF events at the Crab.
# About 5 minutes on 2 cores (docs/nightly.md). Without lstchain installed it runs the toy chain instead.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/.venv/bin"
if ! "$bin/python" -c "import lstchain" 2>/dev/null; then
  echo "lstchain is not installed (pip install -e '.[lstchain]'): running the toy chain instead"
  exec bash "$here/scripts/demo_toy.sh" "$@"
fi
workspace=$(realpath -m "${1:-demo-workspace}")
night=2025-11-20
nd=${night//-/}
runs=(1807 1808 1809)
rm -rf "$workspace"
mkdir -p "$workspace"
cd "$workspace"
export OSA_GRID_HOME="$workspace/.osa-grid" MPLBACKEND=Agg
quiet() { grep -v -e 'Warning' -e 'warn' -e '^  ' -e 'Column .* not writable' -e ' - Closed ' -e 'Will compress' -e 'MissingReferenceMetadata' || true; }
fail() { echo "demo: $*" >&2; exit 1; }
start=$(date +%s)
lap() { echo "   ($(( $(date +%s) - start )) s)"; }

echo "== 1. toy Monte Carlo: diffuse gammas and protons (training), point-like gammas (IRFs)"
"$bin/osa-grid" site simulate-mc mc --train-events 500 --test-events 300 2>&1 | quiet
"$bin/osa-grid" site register-mc mc --tag toy-v1
"$bin/osa-grid" production run "$here/workflows/lst_mc.yaml" --no-live
lap

echo "== 2. a synthetic LST-1 night under onsite/: R0 zfits (4 streams), drive log, RunSummary, run catalog"
"$bin/osa-grid" site simulate-night onsite --date "$night" "${runs[@]/#/--run=}" --raw-run 1809 \
  --subruns 2 --events 200 --calibration-events 200 2>&1 | quiet
lap

echo "== 3. the night, shepherded: osa-grid nightly run --workflow workflows/lst_nightly.yaml"
# The one change to the site's workflow: the synthetic calibration run has 200 events where LST-1's have
# tens of thousands, so the flat-field statistics are taken over 50 events instead of 2500.
workflow="$workspace/lst_nightly.yaml"
sed 's/calibration_sample_size: 2500/calibration_sample_size: 50/' "$here/workflows/lst_nightly.yaml" > "$workflow"
grep -q 'calibration_sample_size: 50' "$workflow" || fail "lst_nightly.yaml has no calibration_sample_size: 2500"
nightly=(--date "$night" --base-dir onsite --workflow "$workflow")
"$bin/osa-grid" nightly run "${nightly[@]}" --poll 1 2>&1 | quiet
lap

echo "== 4. the night's status, products and page"
echo "\$ osa-grid nightly status --date $night --base-dir onsite"
"$bin/osa-grid" nightly status "${nightly[@]}"
"$bin/osa-grid" nightly status "${nightly[@]}" --json > status.json
"$bin/python" - status.json "${runs[@]}" <<'EOF'
import json, sys
status = json.load(open(sys.argv[1]))
rows = {row["run_id"]: row for row in status["sequences"]}
data = [int(r) for r in sys.argv[2:]]
bad = {run: row["state"] for run, row in rows.items() if row["state"] != "COMPLETED"}
assert not bad, f"sequences not completed: {bad}"
assert sorted(r for r in rows if rows[r]["kind"] == "DATA") == data, sorted(rows)
for run in data:
    assert all(v == 100.0 for k, v in rows[run]["progress"].items() if k != "CALIB%"), rows[run]
    quality = rows[run]["quality"]  # measured from the run's datacheck and muon files
    assert all(quality.get(k, 0) > 0 for k in ("Rate/s", "PedNoise", "FF")), (run, quality)
    assert quality.get("MuRings") == 0, (run, quality)  # the synthetic night has no muons
print(f"status: {len(rows)} sequences COMPLETED, quality figures for runs {', '.join(map(str, data))}")
EOF
missing=()
expect() { [[ -s "onsite/$1" ]] || missing+=("$1"); }
p="v0.1"
expect "calibration/$nd/$p/drs4_pedestal.Run01805.0000.h5"
expect "calibration/$nd/$p/calibration_filters_52.Run01806.0000.h5"
for run in "${runs[@]}"; do
  for sub in 0000 0001; do
    expect "DL1/$nd/$p/dl1_LST-1.Run0$run.$sub.h5"
    expect "DL1/$nd/$p/tailcut84/dl1_LST-1.Run0$run.$sub.h5"
    expect "DL1/$nd/$p/tailcut84/datacheck/datacheck_dl1_LST-1.Run0$run.$sub.h5"
  done
  expect "DL1/$nd/$p/tailcut84/dl1_LST-1.Run0$run.h5"
  expect "DL1/$nd/$p/tailcut84/datacheck/datacheck_dl1_LST-1.Run0$run.h5"
  expect "DL2/$nd/$p/dl2_LST-1.Run0$run.h5"
  expect "DL1/$nd/$p/muons/muons_LST-1.Run0$run.fits"
  expect "web/datacheck/$nd/$p/datacheck_dl1_LST-1.Run0$run.h5"
  expect "web/datacheck/$nd/$p/datacheck_dl1_LST-1.Run0$run.png"
done
for kind in h5 html; do
  expect "DL1/$nd/$p/tailcut84/datacheck/DL1_datacheck_$nd.$kind"
  expect "web/datacheck/$nd/$p/DL1_datacheck_$nd.$kind"
done
expect "R0G/$nd/LST-1.1.Run01809.0000.fits.fz"
expect "running_analysis/$nd/$p/NightFinished.txt"
expect "web/nightly/$nd.html"
(( ${#missing[@]} == 0 )) || fail "missing products: ${missing[*]}"
grep -q '<h1>Night 2025-11-20 <small>(closed)' "onsite/web/nightly/$nd.html" || fail "the page does not show a closed night"
for run in "${runs[@]}"; do
  grep -q "src=\"../datacheck/$nd/$p/datacheck_dl1_LST-1.Run0$run.png\"" "onsite/web/nightly/$nd.html" ||
    fail "the page does not show the datacheck plot of run $run"
done
grep -q "href=\"../datacheck/$nd/$p/DL1_datacheck_$nd.html\"" "onsite/web/nightly/$nd.html" ||
  fail "the page does not link the night-wise datacheck"
echo "products: all there (onsite/{calibration,R0G,DL1,DL2,web,running_analysis}/$nd/...)"
echo "page: onsite/web/nightly/$nd.html (closed, with the runs' datacheck plots and the night-wise datacheck)"
lap

echo "== 5. DL2 -> DL3 and the night's index (workflows/lst_nightly_dl3.yaml), then gammapy at the Crab"
"$bin/osa-grid" production run "$here/workflows/lst_nightly_dl3.yaml" --no-live
dl3="$OSA_GRID_HOME/data/lst-nightly-dl3/v1/DL3/$nd"
echo "\$ osa-grid site check-dl3 $dl3"
"$bin/osa-grid" site check-dl3 "$dl3" --min-significance 5 2>&1 | quiet
echo "demo done in $(( $(date +%s) - start )) s; catalog: $OSA_GRID_HOME/catalog.sqlite"
