"""Where metrics go: metrics.jsonl, TensorBoard, the console's progress."""
