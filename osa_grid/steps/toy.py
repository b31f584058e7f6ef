"""A small, self-contained analysis chain used by the demo and the tests when lstchain is not installed.

It does real work on real files (deterministic, so a re-run gives byte-identical products):
    make-inputs  -> R0-like sub-run files: one event per line, ``event_id,pedestal,charge,alpha``
    pedestal     -> per calibration run: the mean pedestal (the chain's calibration file)
    calibrate    -> per sub-run: pedestal-subtracted charge and image size (the "DL1" of the chain)
    merge        -> per run: the sub-runs' events in one file
    reconstruct  -> per run: a gammaness score per event and the gamma-like selection ("DL2")
    summarize    -> per night: ON counts per run and in total ("DL3"-like table)
Run ``python -m osa_grid.steps.toy --help``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

HEADER_R0 = "event_id,pedestal,charge,alpha"


def make_inputs(directory: Path, runs: Sequence[int], subruns: int, events: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for run in runs:
        for subrun in range(subruns):
            path = directory / f"LST-1.Run{run:05d}.{subrun:04d}.r0.csv"
            rng = random.Random(zlib.crc32(path.name.encode()))
            lines = [HEADER_R0]
            for event in range(events):
                gamma = rng.random() < 0.2
                pedestal = rng.gauss(400.0, 3.0)
                charge = pedestal + (rng.expovariate(1 / 300.0) if gamma else rng.expovariate(1 / 150.0))
                alpha = abs(rng.gauss(0.0, 6.0)) if gamma else rng.uniform(0.0, 90.0)
                lines.append(f"{subrun * events + event},{pedestal:.3f},{charge:.3f},{alpha:.3f}")
            path.write_text("\n".join(lines) + "\n")
            written.append(path)
    return written


def _rows(path: Path) -> Iterable[list[str]]:
    with path.open() as handle:
        next(handle)
        for line in handle:
            if line.strip():
                yield line.strip().split(",")


def pedestal(target: Path, sources: Sequence[Path]) -> None:
    values = [float(row[1]) for source in sorted(sources) for row in _rows(source)]
    if not values:
        raise SystemExit("pedestal: the calibration run has no events")
    target.write_text(f"pedestal\n{sum(values) / len(values):.3f}\n")


def _calibration(path: Path | None) -> float | None:
    if path is None:
        return None
    return float(path.read_text().split()[1])


def calibrate(source: Path, target: Path, calibration: Path | None = None) -> None:
    """Subtract the calibration run's mean pedestal (or, without one, each event's own)."""
    mean = _calibration(calibration)
    lines = ["event_id,size,alpha"]
    for event_id, pedestal_value, charge, alpha in _rows(source):
        size = max(float(charge) - (mean if mean is not None else float(pedestal_value)), 0.0)
        lines.append(f"{event_id},{size:.3f},{alpha}")
    target.write_text("\n".join(lines) + "\n")


def merge(target: Path, sources: Sequence[Path]) -> None:
    lines = ["event_id,size,alpha"]
    for source in sorted(sources):
        lines += [",".join(row) for row in _rows(source)]
    target.write_text("\n".join(lines) + "\n")


def reconstruct(source: Path, target: Path, cut: float, quality: Path | None = None) -> None:
    """Score events; with ``quality``, also write the run's figures (events, selected fraction) as JSON."""
    lines = ["event_id,gammaness,selected"]
    selected = 0
    for event_id, size, alpha in _rows(source):
        gammaness = 1.0 / (1.0 + math.exp((float(alpha) - 10.0) / 3.0)) * min(float(size) / 200.0, 1.0)
        selected += gammaness > cut
        lines.append(f"{event_id},{gammaness:.4f},{int(gammaness > cut)}")
    target.write_text("\n".join(lines) + "\n")
    if quality is not None:
        events = len(lines) - 1
        figures = {"events": events, "gamma_fraction": round(selected / events, 4) if events else 0.0}
        quality.write_text(json.dumps(figures))


def summarize(target: Path, sources: Sequence[Path]) -> None:
    lines = ["file,events,selected"]
    total = 0
    for source in sorted(sources):
        rows = list(_rows(source))
        selected = sum(int(row[2]) for row in rows)
        total += selected
        lines.append(f"{source.name},{len(rows)},{selected}")
    lines.append(f"TOTAL,,{total}")
    target.write_text("\n".join(lines) + "\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m osa_grid.steps.toy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sleep", type=float, default=0.0, help="extra seconds of 'work' (for tests)")
    parser.add_argument("--fail", action="store_true", help="exit 3 without output (for tests)")
    parser.add_argument("--record", type=Path, help="append '<command> <target>' here when done (for tests)")
    sub = parser.add_subparsers(dest="command", required=True)
    inputs = sub.add_parser("make-inputs")
    inputs.add_argument("directory", type=Path)
    inputs.add_argument("--runs", type=int, nargs="+", required=True)
    inputs.add_argument("--subruns", type=int, default=10)
    inputs.add_argument("--events", type=int, default=200)
    ped = sub.add_parser("pedestal")
    ped.add_argument("target", type=Path)
    ped.add_argument("sources", type=Path, nargs="+")
    one = sub.add_parser("calibrate")
    one.add_argument("source", type=Path)
    one.add_argument("target", type=Path)
    one.add_argument("--calibration", type=Path, help="a pedestal file from the night's calibration run")
    many = sub.add_parser("merge")
    many.add_argument("target", type=Path)
    many.add_argument("sources", type=Path, nargs="+")
    reco = sub.add_parser("reconstruct")
    reco.add_argument("source", type=Path)
    reco.add_argument("target", type=Path)
    reco.add_argument("--cut", type=float, default=0.5)
    reco.add_argument("--quality", type=Path, help="write the run's quality figures here (JSON)")
    summary = sub.add_parser("summarize")
    summary.add_argument("target", type=Path)
    summary.add_argument("sources", type=Path, nargs="+")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.sleep:
        time.sleep(args.sleep)
    if args.fail:
        print("toy step asked to fail", file=sys.stderr)
        return 3
    if args.command == "make-inputs":
        written = make_inputs(args.directory, args.runs, args.subruns, args.events)
        print(f"wrote {len(written)} files under {args.directory}")
    elif args.command == "pedestal":
        pedestal(args.target, args.sources)
    elif args.command == "calibrate":
        calibrate(args.source, args.target, args.calibration)
    elif args.command == "merge":
        merge(args.target, args.sources)
    elif args.command == "reconstruct":
        reconstruct(args.source, args.target, args.cut, args.quality)
    else:
        summarize(args.target, args.sources)
    if args.record is not None and args.command != "make-inputs":
        with args.record.open("a") as record:
            record.write(f"{args.command} {args.target.name}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
