"""Where metrics go: metrics.jsonl always, and the sinks the `logger` group chooses (TensorBoard,
MLflow, your own: sinks.py); the console's progress."""
