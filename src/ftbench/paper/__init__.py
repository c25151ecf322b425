"""Reproducing the papers: recipes (`recipes/*.yaml`: cells, seeds, published values), running
them into fixed folders (`reproduce`) and setting ours beside the published numbers (`comparison`).

May import: `ftbench.report`, `ftbench.job` and below.
"""
