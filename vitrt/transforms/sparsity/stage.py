"""The sparsity transform as one row of the compile's STAGES table (vitrt.pipeline.stages)."""

from __future__ import annotations

from vitrt.transforms.base import Transform
from vitrt.transforms.sparsity import planner, report
from vitrt.transforms.sparsity.graph_pass import SparsityPass

TRANSFORM = Transform(name="sparsity", manifest_key="sparsity", section="sparsity",
                      enabled=lambda options, target: options.enabled, plan=planner.plan, graph_pass=SparsityPass,
                      report=report.report, finish=report.finish)
