"""The one error type users see: a one-line message on stderr and exit code 2 (130 when interrupted)."""

import click


class InputError(click.ClickException):
    """Bad input or settings; click prints `Error: <message>` and exits with code 2."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class Interrupted(click.ClickException):
    """Ctrl-C: one line saying that the work done is kept, and the shell's exit code for SIGINT."""

    exit_code = 130

    def __init__(self):
        super().__init__("interrupted; finished shards and stages are kept: rerun the same command to resume")


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text, for one-line error messages."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


class OneLineGroup(click.Group):
    """A click group whose commands' usage errors (a bad option value, a missing option) are one line,
    like every other error, instead of click's usage block; Ctrl-C exits with 130 and says how to resume."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            where = f" (see {exc.ctx.command_path} --help)" if exc.ctx else ""
            raise InputError(exc.format_message() + where) from exc
        except (KeyboardInterrupt, click.Abort) as exc:
            raise Interrupted() from exc
