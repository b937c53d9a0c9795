import argparse
from dataclasses import dataclass

import pytest

from core.options import add_options, from_namespace, option


@dataclass(frozen=True)
class Example:
    batch_size: int = option(8, "batch size")
    rate: float = option(0.5, "a rate")
    name: str | None = option(None, "a name")
    enabled: bool = option(True, "a switch")
    mode: str = option("a", "a mode", choices=("a", "b"))


def parse(argv, monkeypatch=None, env=None):
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    parser = argparse.ArgumentParser()
    add_options(parser, Example)
    return from_namespace(Example, parser.parse_args(argv))


def test_defaults():
    assert parse([]) == Example()


def test_flag_beats_environment_beats_default(monkeypatch):
    config = parse(["--batch-size", "3"], monkeypatch, {"PROTOLM_BATCH_SIZE": "5", "PROTOLM_RATE": "0.25"})
    assert config.batch_size == 3 and config.rate == 0.25


def test_booleans_and_none(monkeypatch):
    assert parse(["--enabled", "false"]).enabled is False
    assert parse(["--enabled"]).enabled is True
    assert parse([], monkeypatch, {"PROTOLM_ENABLED": "no"}).enabled is False
    assert parse(["--name", "none"]).name is None
    assert parse(["--name", "x"]).name == "x"


def test_bad_environment_value_names_the_variable(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        parse([], monkeypatch, {"PROTOLM_BATCH_SIZE": "many"})
    assert "PROTOLM_BATCH_SIZE" in capsys.readouterr().err


def test_choices_and_help_mention_the_variable(capsys):
    with pytest.raises(SystemExit):
        parse(["--mode", "c"])
    parser = argparse.ArgumentParser()
    add_options(parser, Example)
    assert "PROTOLM_BATCH_SIZE" in parser.format_help()
