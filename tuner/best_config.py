"""best_config.yaml: a complete, fixed config with provenance comments, written at the end of every
search and again by `python -m tuner.export`; `python -m tuner.final` reads it."""
import ast
import typing
from pathlib import Path

import yaml

from trainables.config import SYNTHETIC_ONLY_KEYS, DistillConfig


def write_best_config(path: Path, config: dict, **header) -> Path:
    """A complete, fixed config as YAML (its keys are config keys only) with provenance comments. The
    keys of generated data (synthetic_size, synthetic_classes) are written only for synthetic data: of an
    ImageFolder or CIFAR run they would state a count that is not the data's."""
    cfg = DistillConfig.from_dict(config).to_dict()
    if cfg["dataset"] != "synthetic":
        cfg = {k: v for k, v in cfg.items() if k not in SYNTHETIC_ONLY_KEYS}
    lines = [f"# sfkd.{k}: {v}" for k, v in header.items() if v is not None]
    text = "\n".join(lines + ["# Run it: python -m tuner.final --config " + str(path), ""])
    text += yaml.safe_dump(cfg, sort_keys=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def read_header(path: Path) -> dict:
    out = {}
    for line in Path(path).read_text().splitlines():
        if line.startswith("# sfkd.") and ":" in line:
            key, _, value = line[len("# sfkd."):].partition(":")
            out[key.strip()] = value.strip()
    return out


def config_from_params(params: dict) -> dict:
    """MLflow keeps params as strings; turn them back into typed config values."""
    hints = typing.get_type_hints(DistillConfig)
    out = {}
    for key, raw in params.items():
        if key not in hints:
            continue
        base = next((a for a in typing.get_args(hints[key]) if a is not type(None)), hints[key])
        base = typing.get_origin(base) or base
        if raw == "None":
            out[key] = None
        elif base is bool:
            out[key] = raw == "True"
        elif base in (int, float):
            out[key] = base(float(raw)) if base is int else float(raw)
        elif base is list:
            out[key] = ast.literal_eval(raw)
        else:
            out[key] = raw
    return out
