"""Models: loading from a folder, a package, a GGUF file, the hub or random init (`loading`, `gguf`,
`hub`), and the one place that knows architectures: layer stacks, projections, heads, tied
weights (`architecture`).

May import: `ftbench.errors`, `ftbench.files`, `ftbench.config`, torch, transformers.
"""
