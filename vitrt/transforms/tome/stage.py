"""The tome transform as one row of the compile's STAGES table (vitrt.pipeline.stages)."""

from __future__ import annotations

from vitrt.transforms.base import Transform
from vitrt.transforms.tome import planner, report
from vitrt.transforms.tome.graph_pass import TokenMergePass

TRANSFORM = Transform(name="tome", manifest_key="token_merge", section="tome",
                      enabled=lambda options, target: options.enabled, plan=planner.plan, graph_pass=TokenMergePass,
                      report=report.report, finish=report.finish)
