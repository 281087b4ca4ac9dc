"""The low-rank transform as one row of the compile's STAGES table (vitrt.pipeline.stages)."""

from __future__ import annotations

from vitrt.transforms.base import Transform
from vitrt.transforms.lowrank import planner, report
from vitrt.transforms.lowrank.graph_pass import LowRankPass

TRANSFORM = Transform(name="lowrank", manifest_key="lowrank", section="lowrank",
                      enabled=lambda options, target: options.enabled, plan=planner.plan, graph_pass=LowRankPass,
                      report=report.report)
