"""Orchestration overhead: N tasks of t seconds on 2 slots, osa-grid side by side with its peers.

Every tool runs the very same command per task, as an argv (no tool-specific shell script)::

    /bin/sh -c 'sleep "$0"; cp "$1" "$2"'  T  <input>  <output>

- ideal: N * t / slots, the limit of any scheduler;
- ``xargs -P2``: the practical floor (no bookkeeping at all);
- GNU parallel ``-j2`` (Debian package ``parallel``, installed with apt-get when missing);
- Snakemake ``-j2`` (installed from PyPI into ``.bench-venv/``; skipped with a reason if that fails);
- osa-grid: ``osa-grid production run`` of a one-transformation production on the local backend with
  ``--max-cores 2``, in a subprocess, with all its bookkeeping: tasks and their events in the catalog,
  every output checksummed (adler32), moved into the store and registered with metadata, provenance rows.
  The inputs are registered in the catalog before the clock starts (for the other tools they are files
  that exist), and the run is checked afterwards (N done tasks, N outputs, N provenance rows).

Tools run interleaved (repeat 1 of every tool, then repeat 2, ...), in a rotating order, each in a fresh
directory, so the noise of a shared machine falls on all of them alike; the table shows medians.

    python bench/overhead.py                   # the default cases (a few minutes)
    python bench/overhead.py --quick           # a smoke run (under a minute)
    python bench/overhead.py --case 0:5000 --case 0.1:200 --repeats 5 --tools osa-grid,parallel
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
BENCH_VENV = ROOT / ".bench-venv"
SLOTS = 2
SCRIPT = 'sleep "$0"; cp "$1" "$2"'
PRODUCTION = "bench"
TOOLS = ("ideal", "xargs", "parallel", "snakemake", "osa-grid")
# The targets of issue 9: (duration, tasks the target is stated for).
TARGET_PARALLEL = (0.0, 1000)  # osa-grid no slower than GNU parallel
TARGET_IDEAL = (0.1, 200, 1.05)  # osa-grid within 1.05x of the ideal

console = Console(width=120)


@dataclass(frozen=True)
class Case:
    duration: float
    tasks: int

    @property
    def ideal(self) -> float:
        return self.tasks * self.duration / SLOTS

    @property
    def label(self) -> str:
        return f"{self.tasks} x {self.duration:g} s"

    @property
    def t_arg(self) -> str:
        return f"{self.duration:g}"


@dataclass
class Sample:
    tool: str
    case: str
    repeat: int
    seconds: float
    cpu_seconds: float  # user + system of the tool and everything it ran


@dataclass
class Summary:
    tool: str
    case: Case
    samples: list[float]
    cpu: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def overhead_ms(self) -> float:
        return (self.median - self.case.ideal) / self.case.tasks * 1000


@dataclass
class World:
    """A fresh directory: N inputs, a list of (input, output) pairs, an empty output directory."""

    root: Path
    case: Case
    inputs: list[Path] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.root / "out"

    def output_of(self, source: Path) -> Path:
        return self.out / source.name.replace("in_", "out_")

    def build(self) -> None:
        raw = self.root / "raw"
        raw.mkdir(parents=True)
        self.out.mkdir()
        for i in range(self.case.tasks):
            path = raw / f"in_{i:06d}.dat"
            path.write_text(f"input {i}\n")
            self.inputs.append(path)
        pairs = "".join(f"{p} {self.output_of(p)}\n" for p in self.inputs)
        (self.root / "pairs.txt").write_text(pairs)


# ---------------------------------------------------------------------------------------- tools


@dataclass
class Tool:
    name: str
    prepare: Callable[[World], tuple[list[str], dict[str, str]]]  # argv, extra environment
    check: Callable[[World], str | None]  # None when the run did all it had to, else what is wrong
    version: str = ""


def _outputs_complete(world: World) -> str | None:
    missing = [p for p in world.inputs if not world.output_of(p).is_file()]
    return f"{len(missing)} output(s) missing" if missing else None


def xargs_tool() -> Tool:
    def prepare(world: World) -> tuple[list[str], dict[str, str]]:
        pairs = str(world.root / "pairs.txt")
        return ["xargs", f"-P{SLOTS}", "-n2", "-a", pairs, "/bin/sh", "-c", SCRIPT, world.case.t_arg], {}

    return Tool("xargs", prepare, _outputs_complete, _first_line(["xargs", "--version"]))


def parallel_tool() -> Tool:
    def prepare(world: World) -> tuple[list[str], dict[str, str]]:
        pairs = str(world.root / "pairs.txt")
        argv = ["parallel", "--will-cite", f"-j{SLOTS}", "--colsep", " ", "-q"]
        argv += ["/bin/sh", "-c", SCRIPT, world.case.t_arg, "{1}", "{2}", "::::", pairs]
        # GNU parallel keeps its state under $HOME/.parallel: one per run, like a fresh user.
        return argv, {"HOME": str(world.root)}

    return Tool("parallel", prepare, _outputs_complete, _first_line(["parallel", "--version"]))


SNAKEFILE = """\
N = int(config["ntasks"])
T = config["seconds"]
IDS = [f"{{i:06d}}" for i in range(N)]

rule all:
    input: expand("out/out_{{i}}.dat", i=IDS)

rule copy:
    input: "raw/in_{{i}}.dat"
    output: "out/out_{{i}}.dat"
    shell: "/bin/sh -c {script} {{T}} {{input}} {{output}}"
"""


def snakemake_tool(snakemake: Path) -> Tool:
    def prepare(world: World) -> tuple[list[str], dict[str, str]]:
        snakefile = world.root / "Snakefile"
        script = "'" + SCRIPT.replace('"', '\\"') + "'"
        snakefile.write_text(SNAKEFILE.format(script=script))
        argv = [str(snakemake), f"-j{SLOTS}", "--snakefile", str(snakefile), "--directory", str(world.root)]
        argv += ["--quiet", "all", "--config", f"ntasks={world.case.tasks}", f"seconds={world.case.t_arg}"]
        return argv, {}

    return Tool("snakemake", prepare, _outputs_complete, _first_line([str(snakemake), "--version"]))


def osa_grid_tool(tree: Path | None = None) -> Tool:
    """osa-grid through its CLI; ``tree``: another source tree (e.g. a patched copy) run side by side."""
    import yaml

    extra_env = {"PYTHONPATH": str(tree)} if tree is not None else {}
    cli = [sys.executable, "-m", "osa_grid.cli.app", "--quiet"]

    def osa_grid(world: World, *args: str) -> str:
        env = os.environ | extra_env | _osa_grid_env(world)
        result = subprocess.run(
            [*cli, *args], cwd=world.root, env=env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"osa-grid {' '.join(args[:2])} failed: {result.stderr[-2000:]}")
        return result.stdout

    def prepare(world: World) -> tuple[list[str], dict[str, str]]:
        production = {
            "name": PRODUCTION,
            "transformations": [
                {
                    "name": "copy",
                    "input": {"query": "data_level = RAW"},
                    "step": {
                        "argv": ["/bin/sh", "-c", SCRIPT, world.case.t_arg, "{input}", "{output.o}"],
                        "resources": {"cores": 1, "memory_gb": 0.1, "walltime": "10m"},
                    },
                    "outputs": [
                        {"name": "o", "file_name": "out_{i:06d}.dat", "metadata": {"data_level": "OUT"}}
                    ],
                }
            ],
        }
        (world.root / "production.yaml").write_text(yaml.safe_dump(production, sort_keys=False))
        # The inputs exist before the clock starts, as they do for the other tools: registered here.
        inputs = [str(p) for p in world.inputs]
        osa_grid(world, "files", "register", *inputs, "--pattern", "in_{i:d}.dat", "-m", "data_level=RAW")
        argv = [*cli, "production", "run", str(world.root / "production.yaml")]
        argv += ["--max-cores", str(SLOTS), "--no-live"]
        return argv, extra_env | _osa_grid_env(world)

    def check(world: World) -> str | None:
        """Every task done, every output checksummed, stored and registered, one provenance row each."""
        import sqlite3

        database = sqlite3.connect(world.root / "home" / "catalog.sqlite")
        try:

            def count(sql: str) -> int:
                return int(database.execute(sql).fetchone()[0])

            done = count("SELECT count(*) FROM tasks WHERE state = 'done'")
            outputs = count("SELECT count(*) FROM files WHERE task_id IS NOT NULL AND length(checksum) = 8")
            provenance = count("SELECT count(*) FROM provenance")
        finally:
            database.close()
        stored = len(list((world.root / "home" / "data" / PRODUCTION).glob("out_*.dat")))
        n = world.case.tasks
        if (done, outputs, provenance, stored) != (n, n, n, n):
            return f"done={done} outputs={outputs} provenance={provenance} stored={stored}, expected {n} each"
        return None

    name = "osa-grid" if tree is None else f"osa-grid@{tree.name}"
    version = _first_line([*cli, "--version"]) if tree is None else f"source tree {tree}"
    return Tool(name, prepare, check, version)


def _osa_grid_env(world: World) -> dict[str, str]:
    return {"OSA_GRID_HOME": str(world.root / "home"), "OSA_GRID_CATALOG_URL": _catalog_url(world)}


def _catalog_url(world: World) -> str:
    return f"sqlite:///{world.root / 'home' / 'catalog.sqlite'}"


def _first_line(argv: Sequence[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else "?"


# --------------------------------------------------------------------------------- installation


def ensure_parallel(install: bool) -> str | None:
    """None when GNU parallel is there (installing it with apt-get if allowed), else why not."""
    if shutil.which("parallel"):
        return None
    if not install:
        return "GNU parallel is not installed (--no-install)"
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return "GNU parallel is not installed and apt-get cannot be used here (not root or no apt-get)"
    console.print("[dim]installing GNU parallel (apt-get install parallel)...[/]")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    install_command = ["apt-get", "install", "-y", "-qq", "parallel"]
    # The package lists may be missing or stale on a fresh machine: update once, then try again.
    for before in ([], [["apt-get", "update", "-qq"]]):
        for command in [*before, install_command]:
            subprocess.run(command, env=env, capture_output=True, timeout=900, check=False)
        if shutil.which("parallel"):
            return None
    return "apt-get install parallel failed"


def ensure_snakemake(install: bool) -> tuple[Path | None, str | None]:
    """Snakemake in its own venv (.bench-venv/, ignored by git), installed from PyPI when missing."""
    snakemake = BENCH_VENV / "bin" / "snakemake"
    if snakemake.exists():
        return snakemake, None
    if not install:
        return None, f"Snakemake is not installed in {BENCH_VENV} (--no-install)"
    console.print(f"[dim]installing Snakemake into {BENCH_VENV} (pip install snakemake)...[/]")
    try:
        python = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([python, "-m", "venv", str(BENCH_VENV)], check=True, capture_output=True)
        pip = [str(BENCH_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True, capture_output=True, timeout=600)
        subprocess.run([*pip, "snakemake"], check=True, capture_output=True, timeout=900)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        tail = detail.decode(errors="replace").strip().splitlines()[-1:] if detail else []
        return None, f"cannot install Snakemake from PyPI: {exc} {' '.join(tail)}".strip()
    return (snakemake, None) if snakemake.exists() else (None, "pip did not install a snakemake command")


# ------------------------------------------------------------------------------------- running


def run_once(tool: Tool, case: Case, base: Path, keep: bool) -> tuple[float, float]:
    root = Path(tempfile.mkdtemp(prefix=f"{tool.name}-{case.tasks}x{case.t_arg}-", dir=base))
    try:
        world = World(root, case)
        world.build()
        argv, env = tool.prepare(world)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with (root / "tool.stdout").open("wb") as out, (root / "tool.stderr").open("wb") as err:
            start = time.perf_counter()
            result = subprocess.run(argv, cwd=root, env=os.environ | env, stdout=out, stderr=err, check=False)
            seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if result.returncode != 0:
            tail = (root / "tool.stderr").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{tool.name} exited with {result.returncode} on {case.label}:\n{tail}")
        problem = tool.check(world)
        if problem:
            raise RuntimeError(f"{tool.name} on {case.label}: {problem}")
        return seconds, cpu
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def machine() -> dict[str, object]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "?"
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kib / 1024**2:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": memory,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_before": os.getloadavg(),
    }


def parse_case(text: str) -> Case:
    try:
        duration, tasks = text.split(":")
        case = Case(float(duration), int(tasks))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected DURATION:TASKS, e.g. 0.1:200") from None
    if case.tasks < 1 or case.duration < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: at least one task, a duration >= 0")
    return case


DEFAULT_CASES = (Case(0.0, 1000), Case(0.1, 200), Case(1.0, 10))
QUICK_CASES = (Case(0.0, 200), Case(0.1, 40), Case(1.0, 4))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--case",
        action="append",
        type=parse_case,
        metavar="T:N",
        help="N tasks of T seconds (repeatable; default 0:1000 0.1:200 1:10)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="runs per tool and case (default 3)")
    parser.add_argument("--quick", action="store_true", help="small cases, one repeat: a smoke run")
    parser.add_argument("--tools", default=",".join(TOOLS[1:]), help=f"comma-separated, of {TOOLS[1:]}")
    parser.add_argument("--no-install", action="store_true", help="never install parallel or Snakemake")
    parser.add_argument("--workdir", type=Path, default=None, help="where the run directories go")
    parser.add_argument("--keep", action="store_true", help="keep the run directories")
    parser.add_argument("--json", type=Path, default=None, help="also write every sample here")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target of issue 9 is missed")
    parser.add_argument(
        "--osa-grid-tree",
        type=Path,
        action="append",
        default=[],
        help="also run osa-grid from this source tree (PYTHONPATH), e.g. a patched copy: before/after",
    )
    args = parser.parse_args(argv)

    cases = args.case or list(QUICK_CASES if args.quick else DEFAULT_CASES)
    repeats = args.repeats or (1 if args.quick else 3)
    wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(wanted) - set(TOOLS[1:])
    if unknown:
        parser.error(f"unknown tools: {', '.join(sorted(unknown))}")

    tools: list[Tool] = []
    skipped: dict[str, str] = {}
    for name in wanted:
        if name == "xargs":
            tools.append(xargs_tool())
        elif name == "parallel":
            reason = ensure_parallel(not args.no_install)
            if reason:
                skipped[name] = reason
            else:
                tools.append(parallel_tool())
        elif name == "snakemake":
            path, reason = ensure_snakemake(not args.no_install)
            if path is None:
                skipped[name] = reason or "?"
            else:
                tools.append(snakemake_tool(path))
        else:
            tools.append(osa_grid_tool())
    tools += [osa_grid_tool(tree.resolve()) for tree in args.osa_grid_tree]
    for name, reason in skipped.items():
        console.print(f"[yellow]skipping {name}: {reason}[/]")

    info = machine()
    console.print(
        f"[bold]overhead benchmark[/] {info['date']}: {info['nproc']} CPU ({info['cpu']}), {info['memory']}, "
        f"Python {info['python']}; {SLOTS} slots, {repeats} repeat(s), load before "
        f"{' '.join(f'{x:.2f}' for x in info['load_before'])}"  # type: ignore[attr-defined]
    )
    for tool in tools:
        console.print(f"  {tool.name}: {tool.version}")

    base = args.workdir or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    samples: list[Sample] = []
    started = time.perf_counter()
    for repeat in range(repeats):
        for index, case in enumerate(cases):
            # A rotating order: no tool always runs right after the heaviest one.
            shift = (repeat + index) % len(tools) if tools else 0
            for tool in tools[shift:] + tools[:shift]:
                seconds, cpu = run_once(tool, case, base, args.keep)
                samples.append(Sample(tool.name, case.label, repeat, seconds, cpu))
                console.print(
                    f"[dim]  repeat {repeat + 1}/{repeats} {case.label:>12} {tool.name:<10} "
                    f"{seconds:8.2f} s  (cpu {cpu:6.2f} s)[/]"
                )
    info["load_after"] = os.getloadavg()
    info["bench_seconds"] = round(time.perf_counter() - started, 1)

    summaries = {
        (tool.name, case): Summary(
            tool.name,
            case,
            [s.seconds for s in samples if s.tool == tool.name and s.case == case.label],
            [s.cpu_seconds for s in samples if s.tool == tool.name and s.case == case.label],
        )
        for tool in tools
        for case in cases
    }
    for case in cases:
        console.print(case_table(case, tools, summaries))
    verdicts = targets(cases, tools, summaries)
    for line in verdicts:
        console.print(line)
    console.print(
        f"[dim]load average before {_load(info['load_before'])}, after {_load(info['load_after'])}; "
        f"the whole benchmark took {info['bench_seconds']} s[/]"
    )
    if args.json:
        payload = {
            "machine": info,
            "slots": SLOTS,
            "repeats": repeats,
            "command": ["/bin/sh", "-c", SCRIPT, "T", "<input>", "<output>"],
            "tools": {t.name: t.version for t in tools},
            "skipped": skipped,
            "samples": [asdict(s) for s in samples],
            "targets": verdicts,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    missed = any("NOT MET" in line for line in verdicts)
    return 1 if args.strict and missed else 0


def _load(values: object) -> str:
    return " ".join(f"{x:.2f}" for x in values)  # type: ignore[attr-defined]


def case_table(case: Case, tools: Sequence[Tool], summaries: dict[tuple[str, Case], Summary]) -> Table:
    table = Table(title=f"{case.label} on {SLOTS} slots (ideal {case.ideal:.2f} s)", title_justify="left")
    for column in ("tool", "makespan s (median)", "min-max s", "overhead ms/task", "cpu ms/task"):
        table.add_column(column, justify="left" if column == "tool" else "right")
    table.add_column("x GNU parallel", justify="right")
    table.add_column("x ideal", justify="right")
    reference = summaries.get(("parallel", case))
    ideal = f"{case.ideal:.2f}"
    table.add_row("ideal N*t/slots", ideal, "", "0.00", "", _ratio(case.ideal, reference), "1.00")
    for tool in tools:
        summary = summaries[(tool.name, case)]
        table.add_row(
            tool.name,
            f"{summary.median:.2f}",
            f"{min(summary.samples):.2f}-{max(summary.samples):.2f}",
            f"{summary.overhead_ms():.2f}",
            f"{statistics.median(summary.cpu) / case.tasks * 1000:.2f}",
            _ratio(summary.median, reference),
            f"{summary.median / case.ideal:.2f}" if case.ideal > 0 else "-",
            style="bold" if tool.name.startswith("osa-grid") else None,
        )
    return table


def _ratio(seconds: float, reference: Summary | None) -> str:
    return f"{seconds / reference.median:.2f}" if reference is not None else "-"


def targets(
    cases: Sequence[Case], tools: Sequence[Tool], summaries: dict[tuple[str, Case], Summary]
) -> list[str]:
    """The verdict on each target of issue 9 these cases allow one, for every osa-grid measured."""
    lines: list[str] = []
    for tool in tools:
        if not tool.name.startswith("osa-grid"):
            continue
        for case in cases:
            mine = summaries[(tool.name, case)]
            reference = summaries.get(("parallel", case))
            if case.duration == TARGET_PARALLEL[0] and reference is not None:
                met = mine.median <= reference.median
                note = "" if case.tasks == TARGET_PARALLEL[1] else f" (measured with N={case.tasks})"
                lines.append(
                    f"{tool.name}: target {TARGET_PARALLEL[1]} x 0 s no slower than GNU parallel{note}: "
                    f"{'MET' if met else 'NOT MET'} - {mine.median:.2f} s "
                    f"({mine.overhead_ms():.2f} ms/task), "
                    f"GNU parallel {reference.median:.2f} s ({reference.overhead_ms():.2f} ms/task), "
                    f"ratio {mine.median / reference.median:.2f}"
                )
            if case.duration == TARGET_IDEAL[0]:
                ratio = mine.median / case.ideal
                met = ratio <= TARGET_IDEAL[2]
                note = "" if case.tasks == TARGET_IDEAL[1] else f" (measured with N={case.tasks})"
                lines.append(
                    f"{tool.name}: target {TARGET_IDEAL[1]} x 0.1 s "
                    f"within {TARGET_IDEAL[2]}x of the ideal{note}: "
                    f"{'MET' if met else 'NOT MET'} - {mine.median:.2f} s, ideal {case.ideal:.2f} s, "
                    f"ratio {ratio:.3f}"
                )
    return lines


if __name__ == "__main__":
    sys.exit(main())
