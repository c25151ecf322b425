"""`ftbench --help` and `ftbench plan --help`: the config groups a user sets, their options, the paper
presets by paper, and the composed config."""

from __future__ import annotations

import textwrap

from ftbench import methods
from ftbench.config.tree import config_dir

# The config groups a user sets (conf/<group>/), in the order `--help` lists them; experiment is listed by paper.
USER_GROUPS = ("method", "model", "task", "hardware", "logger", "hydra/launcher")
HELP_WIDTH = 110  # characters per line of the groups' listing
PLAN_HELP = """ftbench plan [KEY=VALUE ...]: the peak GPU memory of the run the same keys would make, predicted from
the model's shape (nothing downloaded, nothing trained); writes plan.json. mode=plan is set for you.
  ftbench plan method=qlora model=llama2-7b hardware=h100-80gb   # hardware=<gpu>: the GPU and its memory
"""


def print_help(overrides: list[str], header: str = "") -> None:
    """`ftbench --help [KEY=VALUE ...]`: the groups a user sets and their options, the paper presets by
    paper, and the composed config, through Hydra's `hydra.help.template` (conf/config.yaml says where the
    docs are). Hydra's own --help finds the groups by building a config repository per group (about
    100 deep copies of the config store: seconds) and lists the internal `schema/*` groups too; here the
    options are the YAMLs of conf/<group>/, and the methods are the registry's (`ftbench.methods.names()`:
    one registered without a YAML is an option too). `header`: printed first (`ftbench plan --help`)."""
    import string

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    root = config_dir()
    lines = []
    for group in USER_GROUPS:
        options = methods.names() if group == "method" else sorted(f.stem for f in (root / group).glob("*.yaml"))
        lines.append(wrap(f"{group}: {', '.join(options)}", "  "))
    lines.append("experiment (a paper's preset; it overrides the groups above):")
    for paper, presets in experiments_by_paper(sorted(f.stem for f in (root / "experiment").glob("*.yaml"))).items():
        lines.append(wrap(f"  {paper:<11} {', '.join(presets)}", " " * 14))
    listing = "\n".join(lines) + "\n"
    with initialize_config_dir(config_dir=str(root), version_base="1.3", job_name="ftbench"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    template = cfg.hydra.help.template
    with open_dict(cfg):
        del cfg["hydra"]
    print(header + string.Template(template).substitute(APP_CONFIG_GROUPS=listing, CONFIG=OmegaConf.to_yaml(cfg)))


def wrap(line: str, indent: str) -> str:
    """`line` in lines of at most HELP_WIDTH characters, broken only between options."""
    return textwrap.fill(line, HELP_WIDTH, subsequent_indent=indent, break_on_hyphens=False, break_long_words=False)


def experiments_by_paper(names: list[str]) -> dict[str, list[str]]:
    """Paper presets (conf/experiment/<paper>-<rest>.yaml) by paper, each paper's names shortened: those
    that differ only in their last part (the GLUE task) are written once, e.g. sift-roberta-large-{cola,rte}."""
    papers: dict[str, dict[str, list[str]]] = {}
    for name in names:
        stem, _, last = name.rpartition("-")
        papers.setdefault(name.split("-")[0], {}).setdefault(stem, []).append(last)
    return {paper: [f"{stem}-{lasts[0]}" if len(lasts) == 1 else f"{stem}-{{{','.join(lasts)}}}"
                    for stem, lasts in stems.items()] for paper, stems in papers.items()}
