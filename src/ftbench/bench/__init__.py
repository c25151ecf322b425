"""Benchmarks beyond one run: every method on a real pretrained LLM (`real`), each method beside
the implementation a user would pick instead (`peers`), and adapter switch times (`switch`).

May import: `ftbench.report`, `ftbench.job` and below.
"""
