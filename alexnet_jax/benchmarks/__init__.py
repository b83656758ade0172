"""Speed measurements, each with its peer measured in the same run.

The command is `python -m alexnet_jax.benchmark`."""
