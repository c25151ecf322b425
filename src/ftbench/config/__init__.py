"""Configuration, torch-free: the schemas of the run-wide config groups (model, hardware, logger,
train, optim, eval; profile and plan, the groups of one mode, in `modes`) with the checks that reject
meaningless values (`schema`), the knobs the other settings leave unused (`unused`), the one owner of
every knob two groups can both set (`knobs`), the step-counting knobs a run of its length cannot reach
(`within`), what a model or tokenizer folder holds when it is not one (`folders`),
the sizes of a model's config that must agree with each other (`sizes`, for a folder's config.json and a shape),
and where the model comes from as the user said it: the source loaded, and its name in results (`sources`).

The bottom of what `ftbench --help` and `--cfg job` load. May import: `ftbench.errors`, omegaconf.
Never torch, nor any other ftbench package.
"""
