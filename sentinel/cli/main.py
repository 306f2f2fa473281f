"""The ``sentinel`` command: one typer app, one sub-app per concern."""

from __future__ import annotations

import typer

from sentinel import __version__
from sentinel.cli import bench, cluster, consume, groups, produce, run, sim, topics
from sentinel.cli.errors import OneLineErrors

app = typer.Typer(
    cls=OneLineErrors,  # every usage error is one `error:` line (exit 2)
    rich_markup_mode=None,  # plain click help: rich boxes cut option and env var names at 80 columns
    help="Sentinel: a Kafka-class log streaming engine on Trio.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(bench.app, name="bench")
app.command(name="run")(run.run)
app.command(name="produce")(produce.produce)
app.command(name="consume")(consume.consume)
app.add_typer(topics.app, name="topics")
app.add_typer(groups.app, name="groups")
app.add_typer(cluster.app, name="cluster")
app.add_typer(sim.app, name="sim")


@app.command()
def version() -> None:
    """Print Sentinel's version."""
    print(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
