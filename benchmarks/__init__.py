"""Speed and memory benchmarks (plain scripts: `python -m benchmarks.<name>` from the repo root)."""
