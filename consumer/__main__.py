"""`python -m consumer` runs the consumer command-line app."""

from consumer.cli import app

app(prog_name="consumer")
