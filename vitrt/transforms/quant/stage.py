"""The quant transform as one row of the compile's STAGES table (vitrt.pipeline.stages)."""

from __future__ import annotations

from vitrt.transforms.base import Transform
from vitrt.transforms.quant import planner, report
from vitrt.transforms.quant.config import QUANT_PRECISIONS
from vitrt.transforms.quant.graph_pass import QDQPass

TRANSFORM = Transform(name="quant", manifest_key="quantization", section="quant",
                      enabled=lambda options, target: target.precision in QUANT_PRECISIONS, plan=planner.plan,
                      graph_pass=QDQPass, report=report.report)
