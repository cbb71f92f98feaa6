"""Plumbing every layer uses: typed errors, atomic files, locks, TensorFlow start-up, time budgets."""
