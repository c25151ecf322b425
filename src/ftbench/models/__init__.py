"""Models: loading from a folder, a package, a GGUF file, the hub or random init (`loading`, `gguf`,
`hub`), the one place that knows architectures: layer stacks, projections, heads, tied
weights (`architecture`), the position table's rule for every entry, run or plan (`positions`), and
the model against what a run asks of it, head and embedding rows, shared by a run and its plan (`fit`).

May import: `ftbench.errors`, `ftbench.files`, `ftbench.config`, torch, transformers.
"""
