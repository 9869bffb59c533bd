"""Benchmarks (`make bench`, `python -m bench`); not part of the test run."""

import os

# TensorFlow's start-up chatter (CUDA probing on a machine without GPUs) would bury the figures.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
