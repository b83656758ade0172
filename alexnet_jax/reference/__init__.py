"""The PyTorch twins of the models: tests and benchmarks only (imports torch)."""
