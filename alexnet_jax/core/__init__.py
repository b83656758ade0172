"""The library: model, ops, data, parallel layout, training, checkpoints.

Imports neither torch nor PIL, and nothing here reads flags: the commands
at the top of the package (`main`, `evaluate`, ...) do that."""
