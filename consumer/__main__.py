"""`python -m consumer` and the `consumer` script: the consumer command-line app.

The stop signals are caught before anything heavy is imported (see workpool/processes/signals.py): a
consumer told to stop while it is still importing stops cleanly instead of dying of SIGTERM.
"""

from workpool.processes import signals


def main() -> None:
    signals.install()
    from consumer.cli import app  # after the handlers, on purpose

    app(prog_name="consumer")


if __name__ == "__main__":
    main()
