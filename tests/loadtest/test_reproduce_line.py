"""The benchmark's "Reproduce:" line is a command the same CLI accepts, meaning the same options."""

from __future__ import annotations

import shlex

import typer

from loadtest import benchmark


def test_the_reproduce_line_parses_back_to_the_same_options() -> None:
    command = typer.main.get_command(benchmark.app).commands["systems"]  # type: ignore[attr-defined]
    given = [
        "--repeats=2",
        "--step-seconds=15.0",
        "--no-unbatched",
        "--no-no-baseline",
        "--models=starter",
        "--models-dir=/tmp/a folder/models",
    ]
    context = command.make_context("systems", list(given))

    line = benchmark.given_options(context)
    # Flags come back as flags (Typer refuses "--no-unbatched=True", the form this line once had).
    assert "=True" not in line and "=False" not in line
    again = command.make_context("systems", shlex.split(line))
    assert again.params == context.params
    assert shlex.split(line) == [
        "--repeats=2",
        "--step-seconds=15.0",
        "--no-unbatched",
        "--no-no-baseline",
        "--models=starter",
        "--models-dir=/tmp/a folder/models",  # one word for the shell: quoted
    ]
