"""Benchmarks of issue 7: checkpoint stall and throughput, resume, listing, model speed and memory,
training samples/s. Run `python -m bench` (or `make bench`); it writes BENCHMARKS.md."""
