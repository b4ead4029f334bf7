"""sonify: sonify image datasets into audio-visual training pairs."""

__version__ = "0.1.0"
