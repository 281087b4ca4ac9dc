"""What runs below the graph: compressed sparse layouts and metadata packing, TensorRT plugins and GPU kernels,
each with a NumPy / PyTorch reference."""
