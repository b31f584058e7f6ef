"""`osa-grid files register`: Ctrl-C around the commit is reported truthfully; a rerun is a no-op."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from osa_grid.catalog.store import Catalog
from osa_grid.cli.app import app
from osa_grid.system import interrupts_deferred


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "data").mkdir()
    for i in range(3):
        (tmp_path / "data" / f"f{i}.txt").write_text(f"content {i}\n")
    yield tmp_path


def run(home: Path, *args: str) -> Result:
    env = {"OSA_GRID_HOME": str(home), "OSA_GRID_CATALOG_URL": f"sqlite:///{home / 'catalog.sqlite'}"}
    return CliRunner().invoke(app, list(args), env=env)


def register(home: Path, *meta: str, names: tuple[str, ...] = ("f0.txt", "f1.txt", "f2.txt")) -> Result:
    paths = [str(home / "data" / name) for name in names]
    options = [part for item in meta for part in ("-m", item)]
    return run(home, "files", "register", *paths, *options, "--lfn-prefix", "raw")


def registered(home: Path) -> dict[str, Any]:
    catalog = Catalog.open(f"sqlite:///{home / 'catalog.sqlite'}")
    try:
        found = [catalog.file(f"raw/f{i}.txt") for i in range(3)]
        return {f.lfn: (f.size, f.checksum, f.metadata) for f in found if f is not None}
    finally:
        catalog.close()


def ctrl_c() -> None:
    """A real SIGINT to this process, its Python handler run before this returns."""
    signal.raise_signal(signal.SIGINT)


def test_ctrl_c_is_recorded_during_the_block_and_raised_again_after_it() -> None:
    with interrupts_deferred() as interrupt:
        ctrl_c()
        assert interrupt.received
    with pytest.raises(KeyboardInterrupt):
        ctrl_c()  # the previous handler is back


def test_the_block_runs_unprotected_outside_the_main_thread() -> None:
    import threading

    seen: list[bool] = []
    handler = signal.getsignal(signal.SIGINT)

    def body() -> None:
        with interrupts_deferred() as interrupt:
            seen.append(interrupt.received)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [False]
    assert signal.getsignal(signal.SIGINT) is handler


def _interrupting(original: Callable[..., Any], before: bool) -> Callable[..., Any]:
    def register_files(self: Catalog, *args: Any, **kwargs: Any) -> Any:
        if before:
            ctrl_c()
        result = original(self, *args, **kwargs)
        if not before:
            ctrl_c()  # the commit went through; the interrupt lands before the result is reported
        return result

    return register_files


@pytest.mark.parametrize("before", [True, False], ids=["as-the-commit-starts", "as-the-commit-returns"])
def test_ctrl_c_during_the_commit_says_what_was_registered_and_a_rerun_does_nothing(
    home: Path, monkeypatch: pytest.MonkeyPatch, before: bool
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(Catalog, "register_files", _interrupting(Catalog.register_files, before))
        first = register(home, "data_level=R0")
    assert first.exit_code == 130
    assert "registered 3 file(s)" in first.output
    assert "run the command again to resume" not in first.output
    assert "the registration was completed first" in first.output
    before_rerun = registered(home)
    assert sorted(before_rerun) == ["raw/f0.txt", "raw/f1.txt", "raw/f2.txt"]

    again = register(home, "data_level=R0")
    assert again.exit_code == 0, again.output
    assert "registered 0 file(s); 3 already registered with the same content" in again.output
    assert registered(home) == before_rerun


def test_ctrl_c_while_the_files_are_read_registers_nothing_and_says_so(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(path: Path) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr("osa_grid.services.files.adler32", interrupted)
    result = register(home, "data_level=R0")
    assert result.exit_code == 130
    assert "nothing was registered" in result.output
    assert registered(home) == {}


def test_a_rerun_with_more_files_registers_only_the_new_ones(home: Path) -> None:
    assert register(home, "data_level=R0", "x=1.5", names=("f0.txt",)).exit_code == 0
    result = register(home, "data_level=R0", "x=1.5")
    assert result.exit_code == 0, result.output
    assert "registered 2 file(s); 1 already registered with the same content" in result.output
    assert sorted(registered(home)) == ["raw/f0.txt", "raw/f1.txt", "raw/f2.txt"]


@pytest.mark.parametrize(
    ("first_meta", "second_meta", "change"),
    [
        (("data_level=R0",), ("data_level=DL1",), None),
        (("x=1",), ("x=1.0",), None),  # equal in Python, another type in the catalog
        (("data_level=R0",), ("data_level=R0", "extra=2"), None),
        (("data_level=R0",), ("data_level=R0",), "other bytes\n"),
    ],
    ids=["value", "type", "key", "content"],
)
def test_a_clash_with_other_content_is_refused_naming_the_file_and_registers_nothing(
    home: Path, first_meta: tuple[str, ...], second_meta: tuple[str, ...], change: str | None
) -> None:
    assert register(home, *first_meta, names=("f0.txt",)).exit_code == 0
    kept = registered(home)
    if change is not None:
        (home / "data" / "f0.txt").write_text(change)
    result = register(home, *second_meta)
    assert result.exit_code == 2
    assert "already registered with another size, adler32 or metadata" in result.output
    assert "raw/f0.txt" in result.output and "Traceback" not in result.output
    assert registered(home) == kept  # f1 and f2 were not registered either
