"""edgeslice: neuron-level semantic slicing (NeuSemSlice) for maintaining edge and IoT models."""

__version__ = "0.1.0"
__all__ = ["__version__"]
