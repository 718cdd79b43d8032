"""docs/RECIPES.md's tables against the recipes: every cell equals what the recipe resolves to, every paper
recipe has a column, and changing any audited value away from the table is caught."""
import copy
import math
import re

import pytest

from motionmae_ds.config import REPO_ROOT, load_finetune_config, load_pretrain_config
from motionmae_ds.train.schedule import scaled_lr

DOC = REPO_ROOT / "docs" / "RECIPES.md"
JOBS = {"Pretraining": ("pretrain_", load_pretrain_config), "Finetuning": ("finetune_", load_finetune_config)}
# rows that are not a config key: what a run derives from the keys
DERIVED = {
    "lr": lambda cfg: scaled_lr(cfg.optim.base_lr, cfg.schedule.total_batch_size),
    "test short side": lambda cfg: cfg.short_side,
}


def _tables() -> dict[str, dict[str, dict[str, str]]]:
    """section -> recipe -> key -> cell text, from the markdown tables under '## Pretraining' / '## Finetuning'."""
    out: dict[str, dict[str, dict[str, str]]] = {}
    section = None
    header: list[str] = []
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section, header = line[3:].strip(), []
            continue
        if section not in JOBS or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not header:
            header = cells
            assert header[0] == "key" and header[-1] == "source", f"{DOC}: table header {header}"
            out[section] = {name: {} for name in header[1:-1]}
        elif not set(cells[0]) <= set("-"):
            key = cells[0].strip("`")
            assert len(cells) == len(header), f"{DOC}: row {key} has {len(cells)} cells, header {len(header)}"
            for name, cell in zip(header[1:-1], cells[1:-1]):
                out[section][name][key] = cell
    return out


def _parse(cell: str):
    text = cell.strip("`")
    if "," in text:
        return tuple(_parse(part.strip()) for part in text.split(","))
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _value(cfg, key: str):
    if key in DERIVED:
        return DERIVED[key](cfg)
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _same(got, want) -> bool:
    if isinstance(want, tuple):
        return isinstance(got, (tuple, list)) and len(got) == len(want) and all(map(_same, got, want))
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=0.0)
    return got == want


def audit(cfg, expected: dict[str, str]) -> list[str]:
    """The audited keys whose resolved value differs from the table's cell ('—' cells are not used)."""
    return [f"{key}: recipe {_value(cfg, key)!r}, table {cell}" for key, cell in expected.items()
            if cell != "—" and not _same(_value(cfg, key), _parse(cell))]


TABLES = _tables()
CASES = [(section, name) for section in JOBS for name in TABLES.get(section, {})]


def _load(section: str, name: str):
    prefix, load = JOBS[section]
    return load(REPO_ROOT / "configs" / f"{prefix}{name}.yaml")


def test_every_paper_recipe_has_a_column():
    assert set(TABLES) == set(JOBS)
    for section, (prefix, _) in JOBS.items():
        # a mixture of datasets is not a paper recipe (tests/config/test_recipes.py checks it against K400's)
        shipped = {p.stem.removeprefix(prefix) for p in (REPO_ROOT / "configs").glob(f"{prefix}*.yaml")
                   if not p.stem.startswith("pretrain_mixture_")}
        assert set(TABLES[section]) == shipped - {"demo"}, section
        # the rows the issue names are audited for every recipe
        keys = set(next(iter(TABLES[section].values())))
        assert {"schedule.epochs", "schedule.warmup_epochs", "schedule.total_batch_size", "optim.base_lr", "lr",
                "data.flip", "data.sampling_rate"} <= keys
    assert {"masking.ratio", "masking.kind", "targets.norm_target"} <= set(TABLES["Pretraining"]["k400_vit_base"])
    assert {"optim.layer_decay", "model.drop_path_rate", "mixup.mixup_alpha", "mixup.cutmix_alpha",
            "data.rand_aug", "mixup.label_smoothing", "data.num_repeats", "data.sampling", "eval.test_clips",
            "eval.test_crops", "test short side"} <= set(TABLES["Finetuning"]["ssv2_vit_base"])


@pytest.mark.parametrize("section,name", CASES, ids=[f"{s[:4].lower()}-{n}" for s, n in CASES])
def test_recipe_matches_the_table(section, name):
    cfg = _load(section, name)
    assert audit(cfg, TABLES[section][name]) == []


@pytest.mark.parametrize("section,name", CASES, ids=[f"{s[:4].lower()}-{n}" for s, n in CASES])
def test_changing_any_audited_value_is_caught(section, name):
    cfg, expected = _load(section, name), TABLES[section][name]
    for key, cell in expected.items():
        if key in DERIVED or cell == "—":
            continue
        section_name, field = key.split(".")
        value = getattr(getattr(cfg, section_name), field)
        if isinstance(value, bool):
            changed = not value
        elif isinstance(value, (int, float)):
            changed = type(value)(value * 2 + 1)
        elif isinstance(value, tuple):
            changed = tuple(v * 0.5 for v in value)
        else:
            changed = value + "_changed"
        bad = copy.deepcopy(cfg)
        setattr(getattr(bad, section_name), field, changed)
        problems = audit(bad, expected)
        assert problems and any(p.startswith(f"{key}:") for p in problems), (name, key)
    # the derived rows follow their keys: a doubled base lr breaks `lr` too
    bad = copy.deepcopy(cfg)
    bad.optim.base_lr *= 2
    assert {p.split(":")[0] for p in audit(bad, expected)} == {"optim.base_lr", "lr"}


def test_ssv2_finetuning_samples_segments():
    for size in ("base", "large"):
        cfg = load_finetune_config(REPO_ROOT / "configs" / f"finetune_ssv2_vit_{size}.yaml")
        assert cfg.data.sampling == "segment" and cfg.eval.test_clips == 2 and not cfg.data.flip
    for name in ("k400_vit_base", "k400_vit_large", "ucf101_vit_base", "ucf101_vit_large"):
        assert load_finetune_config(REPO_ROOT / "configs" / f"finetune_{name}.yaml").data.sampling == "dense"


def test_doc_rows_are_real_keys():
    # a row naming a key that does not exist would make the audit silently check nothing
    for section in JOBS:
        for name, expected in TABLES[section].items():
            cfg = _load(section, name)
            for key in expected:
                if key not in DERIVED:
                    assert re.fullmatch(r"[a-z_]+\.[a-z_]+", key), key
                    assert hasattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]), f"{section}/{name}: {key}"
