"""The prune transform as one row of the compile's STAGES table (vitrt.pipeline.stages)."""

from __future__ import annotations

from vitrt.transforms.base import Transform
from vitrt.transforms.prune import planner, report
from vitrt.transforms.prune.graph_pass import PrunePass

TRANSFORM = Transform(name="prune", manifest_key="pruning", section="prune",
                      enabled=lambda options, target: options.enabled, plan=planner.plan, graph_pass=PrunePass,
                      report=report.report, finish=report.finish)
