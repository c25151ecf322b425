"""One job, as Hydra runs it: compose and check the config (`compose`), check the inputs against
each other before any weight loads (`preflight`), run the recipe of named steps (`run.Job`: build,
train, evaluate, summarize, write; its building steps in `steps`), validate, select and score
(`evaluation`), checkpoint and resume (`checkpoint`), decide what a folder that already holds a run needs
(`rerun`), hold what stands where a job writes to the kind it must be (`places`), lock a job's folder while
it runs (`lock`), keep a multirun's books: job folders, the whole sweep checked against its folder, its exit code
(`sweep`), and run child processes that stop with their parent (`children`).

May import: `ftbench.plan` and below.
"""
