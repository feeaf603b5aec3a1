"""pgen: learn to generate the weights of multi-agent RL policies."""

__version__ = "0.1.0"
