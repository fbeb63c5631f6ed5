"""octvideo: Octave-Convolution video networks trained at cluster scale."""

__version__ = "0.1.0"
