"""Data-driven work on the torch twin: datasets (digits, ImageFolder, synthetic), the digits reference model,
evaluation, and (in later stages) importance, calibration and fine-tuning."""
