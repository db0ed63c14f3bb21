"""Typed settings and the options made from them: one option per field, checks across fields."""

import click
import pytest

from evalmem.cli.options import settings
from evalmem.errors import InputError
from evalmem.settings import ExtractSettings, GenerateSettings, OutputSpec


def test_options_come_from_the_fields():
    @click.command()
    @settings(GenerateSettings, "job")
    def command(job):
        click.echo(repr(job))

    names = {p.opts[0] for p in command.params}
    assert names == {
        "--model", "--adapter", "--revision", "--prefix-len", "--max-new-tokens", "--temperature", "--top-p", "--seed"
    }
    from click.testing import CliRunner

    result = CliRunner().invoke(command, ["--model", "m", "--temperature", "0.5"])
    assert result.output.strip() == repr(GenerateSettings(model="m", temperature=0.5))
    assert "Tokens generated after each prefix" in CliRunner().invoke(command, ["--help"]).output


@pytest.mark.parametrize("make, message", [
    (lambda: OutputSpec(out=""), "--out is empty"),
    (lambda: OutputSpec(out="o", shard="4/3"), "--shard must be I/N"),
    (lambda: ExtractSettings(model="m", prefix_lens=(0,)), "--prefix-len must be positive"),
    (lambda: GenerateSettings(model="m", temperature=float("inf")), "--temperature must be a finite number"),
])
def test_checks_across_fields(make, message):
    with pytest.raises(InputError, match=message):
        make()


def test_shard_parses_to_a_part():
    assert OutputSpec(out="o", shard="2/5").part == (2, 5) and OutputSpec(out="o").part is None
