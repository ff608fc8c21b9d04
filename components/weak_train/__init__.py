"""The weak-train stage's component: weak pre-training on the synsets' soft targets."""
