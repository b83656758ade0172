"""What a trained model shows: the activations of any layer and nearest
neighbours by them (features), conv1's kernels by tower (visualize). Used by
the experiments, the demo notebook and the tests; the library in core/ does
not import it."""
