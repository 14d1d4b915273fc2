"""nerncompress: compress trained CNNs into neural representations of their weights, and expand them back."""

__version__ = "0.1.0"
