"""Run directories: their layout and lock, the run record (metrics.json), resume, reproducibility, sweep summaries."""
