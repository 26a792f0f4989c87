"""datasets/generators."""
