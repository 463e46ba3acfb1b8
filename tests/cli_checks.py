"""Checks shared by the bad-input tests: a refused CLI call and a folder's file list."""

from __future__ import annotations

from pathlib import Path

from emq.cli import main


def files(folder: Path) -> list[str]:
    """Every path below ``folder``, relative and sorted (to check nothing was written)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def refused(argv: list[str], capsys, *needles: str, folder: Path | None = None) -> str:
    """``main`` returns 2 with exactly one ``emq: error:`` line naming ``needles``, and
    leaves ``folder`` as it was."""
    before = files(folder) if folder is not None else None
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, err
    assert captured.out == ""
    assert err.startswith("emq: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    if folder is not None:
        assert files(folder) == before
    return err
