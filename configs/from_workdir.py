"""The config a run saved, to resume or fine-tune it: `--config=configs/from_workdir.py:WORKDIR`.

    aero-train --config=configs/from_workdir.py:workdirs/gpt2 --workdir=workdirs/gpt2 --config.train.num_steps=200

For a run that did not come from a config file of its own, e.g. a GPT-2 made by aero-import-hf.
Overrides (`--config.*`) apply on top, as with any config file.
"""

import json
import os

import ml_collections


def get_config(workdir: str = ""):
    path = os.path.join(os.path.expanduser(workdir), "config.json")
    if not workdir or not os.path.isfile(path):
        raise ValueError(f"configs/from_workdir.py:{workdir} names no run directory with a config.json; accepted: "
                         f"configs/from_workdir.py:WORKDIR")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))
