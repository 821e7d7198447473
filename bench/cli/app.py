"""The one typer application every command module attaches to."""

import typer

app = typer.Typer(
    name="bench",
    help="ascbench: train, score and compare low-complexity acoustic scene classifiers (DCASE 2025 Task 1).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: generate the embedded benchmark, validate, prepare the packed store.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
