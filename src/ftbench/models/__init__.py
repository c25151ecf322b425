"""Models: loading from a folder, a package, a GGUF file, the hub or random init (`loading`, `gguf`,
`hub`), the one place that knows architectures: layer stacks, projections, heads, tied
weights (`architecture`), and the position table's rule for every entry, run or plan (`positions`).

May import: `ftbench.errors`, `ftbench.files`, `ftbench.config`, torch, transformers.
"""
