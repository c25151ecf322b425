"""One job, as Hydra runs it: compose and check the config (`compose`), check the inputs against
each other before any weight loads (`preflight`), build and train in named steps (`steps`, `run`),
checkpoint and resume (`checkpoint`), decide what a folder that already holds a run needs (`rerun`),
keep a multirun's books: job folders, the whole sweep checked against its folder, its exit code
(`sweep`), and run child processes that stop with their parent (`children`).

May import: `ftbench.plan` and below.
"""
