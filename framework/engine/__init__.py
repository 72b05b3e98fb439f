"""The training engine: run (the story), Training (a method per named step), one step, state, preemption."""
