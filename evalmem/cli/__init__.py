"""The `evalmem` command line: one click group; each command builds its typed settings once and hands them on."""

from __future__ import annotations

import click

from evalmem.cli import analysis, run
from evalmem.errors import OneLineGroup


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="evalmem")
def main():
    """Measure training-data memorization of language models, fast (vLLM)."""


for command in (run.extract, run.generate, run.merge, run.features, run.perplexity, run.dupcount, run.teacher_cache,
                analysis.compare, analysis.predict, analysis.filter_, analysis.filter_effect, analysis.report,
                analysis.pipeline):
    main.add_command(command)
