"""Commands of `orchestration` that live in their own module (registered in orchestration/cli.py)."""
