"""alexnet_jax: the reference JAX/Flax implementation of AlexNet (2012)."""

__version__ = '0.1.0'
