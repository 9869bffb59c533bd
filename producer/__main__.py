"""`python -m producer`: the same as the `producer` console script."""

from producer.cli import app

app(prog_name="producer")
