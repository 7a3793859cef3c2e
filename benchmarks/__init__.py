"""Benchmarks of textlora against the Trainer + PEFT notebook stack; results go to BENCHMARKS.md."""
