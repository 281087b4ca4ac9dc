"""``vitrt optimize`` and ``vitrt study``: the fastest engine within an accuracy budget, and the empirical-study table.

    holdout.py   the search's data: a fit split for planners and fine-tuning, a held-out split for its estimates
    space.py     recipes (prune fraction, token-merge schedule, low rank, 2:4, precision) and their compile options
    evaluate.py  cheap estimates of a recipe: latency from the table, held-out accuracy of the final twin
    halving.py   successive halving over recipes (fine-tuning budget doubles, population halves); resumable
    front.py     the Pareto front, compiled and measured side by side (single-thread CPU clock), pareto.md/.json/.png
    optimize.py  the command
    study.py     ``vitrt study``: every method alone and stacked, one table
"""
