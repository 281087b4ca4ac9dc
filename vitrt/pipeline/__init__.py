"""The compile pipeline: the nested CompileConfig, the STAGES table, ``compile()`` and the latency-table feedback.

Imports the transforms and the compiler; nothing below it imports it.
"""
