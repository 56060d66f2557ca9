"""pynotes benchmark suite: `python -m benchmarks --help`."""
