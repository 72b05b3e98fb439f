"""Tasks: what a batch means. A task turns a batch into the training loss and into the sums an
evaluation adds up, declares its metrics with their direction, and checks its data before
training (tasks/task.py says how to write one)."""
