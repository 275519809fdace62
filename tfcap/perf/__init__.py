"""Measuring speed: timers, memory, FLOP counts and the model benchmarks of `tfcap.bench`."""
