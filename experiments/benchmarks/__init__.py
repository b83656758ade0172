"""Scripts that time parts of the step (see each docstring)."""
