"""Configs of the paper's CIFAR-10 experiments (Figure 1, LRN)."""
