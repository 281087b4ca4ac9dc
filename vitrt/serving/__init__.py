"""Serving compiled artifacts: Triton model repositories (``vitrt export triton``), a real Triton Inference Server
in front of vitrt's own runners (``vitrt serve``, through PyTriton), and a bounded loopback load generator
(``vitrt loadtest``). Needs the ``serve`` extra (nvidia-pytriton, tritonclient); imported lazily by the CLI."""
