"""`ftbench compare`: which method to use, answered as an experiment rather than a table of runs.

Every arm gets the same budget (optimizer steps at one effective batch) and its own lr, chosen in stage 1
on a validation split carved from the training data (the reported split unread); stage 2 runs every seed
at that lr and scores the reported split. The report gives means over seeds with Student's t intervals,
paired tests against full fine-tuning and LoRA, peak memory, speed, time to target and engagement.
`spec` reads the spec (comparisons/*.yaml), `cells` lays out and runs the runs, `stats` holds the
statistics, `report` writes the files, `runner` is the command.

May import: `ftbench.report`, `ftbench.job` and below.
"""
