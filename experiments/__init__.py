"""Experiments: ablation sweeps, the paper's CIFAR-10 figures, the demo."""
