"""Reports a person reads: the demo (and, later, the study tables). Top layer: may import everything below."""
