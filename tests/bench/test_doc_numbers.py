"""bench/doc_numbers.py: the commands it runs are the ones the docs show, each run has a directory of its own, and its
tables land between the docs' markers."""
import re

import pytest

from tests.bench.scripts import load_script
from tests.helpers import REPO

doc_numbers = load_script("doc_numbers")


def _output_dir(command: str) -> str:
    match = re.search(r"--output_dir (\S+)", command)
    assert match, f"no --output_dir: {command}"
    return match.group(1)


def test_every_command_is_documented_and_has_its_own_output_dir():
    docs = (REPO / "README.md").read_text() + (REPO / "docs" / "EVALUATION.md").read_text()
    commands = [s.command for s in doc_numbers.steps()]
    for command in commands:
        assert command in docs, f"the docs do not show: {command}"
    dirs = [_output_dir(c) for c in commands]
    assert len(set(dirs)) == len(dirs), dirs
    # the README's in-order sequence: the same commands, one directory each
    readme = (REPO / "README.md").read_text()
    block = readme.split("## The embedded demo in order, and its numbers", 1)[1].split("```bash", 1)[1]
    block = block.split("```", 1)[0]
    sequence = [line.strip() for line in block.strip().splitlines()]
    assert sequence and all(line in commands for line in sequence), sequence
    assert len({_output_dir(line) for line in sequence}) == len(sequence)
    assert sequence[0] == commands[0] and "pretrain.py" in sequence[0]   # the others read its run


RESULTS = {
    "date": "2026-12-06 09:00 UTC", "commit": "abc1234", "jobs": 1, "total_s": 1500.0,
    "machine": {"cpu": "Some CPU", "cores": 2, "bf16": "bf16 in hardware (avx512_bf16)", "torch": "2.14.1",
                "load_at_start": 0.5},
    "steps": {
        "pretrain": {"wall_s": 134.0, "steps": 832, "first_loss": 0.5762, "last_loss": 0.02364},
        "finetune": {"wall_s": 61.0, "top1": 20.0, "videos": 40, "views": 6},
        "finetune_random": {"wall_s": 59.0, "top1": 100.0, "videos": 40, "views": 6},
        "linprobe": {"wall_s": 50.0, "top1": 17.5, "videos": 40, "views": 6},
        "linprobe_random": {"wall_s": 52.0, "top1": 35.0, "videos": 40, "views": 6},
        "attentive": {"wall_s": 90.0, "top1": 25.0, "videos": 40, "views": 6},
        "attentive_random": {"wall_s": 95.0, "top1": 95.0, "videos": 40, "views": 6},
        "knn": {"wall_s": 40.0, "top1": 12.5, "videos": 40},
        "knn_random": {"wall_s": 41.0, "top1": 22.5, "videos": 40},
        "vos": {"wall_s": 720.0, "checkpoint": {"J&F": 45.94, "J": 55.61, "F": 36.12},
                "random_init": {"J&F": 56.5, "J": 63.4, "F": 49.6}},
    },
}


def test_tables_show_the_numbers_and_replace_only_their_block(tmp_path):
    made = doc_numbers.tables(RESULTS)
    assert set(made) == set(doc_numbers.DOCS)
    readme = made["readme"]
    assert "832 steps, loss 0.576 -> 0.024 | 134 s |" in readme
    assert "J&F 45.9 (random init 56.5) | 12.0 min |" in readme
    assert "| `deepspeed launch/finetune.py --deepspeed_config ds_configs/zero2.json --set finetune.init=none " \
           "--output_dir runs/finetune_random` | test top-1 100.0 | 59 s |" in readme
    assert "2026-12-06 09:00 UTC" in readme and "Some CPU, 2 cores, bf16 in hardware (avx512_bf16)" in readme
    assert "| 45.9 / 55.6 / 36.1 | 56.5 / 63.4 / 49.6 |" in made["evaluation_vos"]
    probes = made["evaluation_probes"]
    assert "--output_dir runs/knn_random` | 22.5 |" in probes and "--output_dir runs/attentive_probe_random` | 95.0" \
        in probes
    doc = "before\n<!-- doc_numbers: readme -->\nold table\n<!-- /doc_numbers -->\nafter\n"
    assert doc_numbers.replace_block(doc, "readme", "NEW") == \
        "before\n<!-- doc_numbers: readme -->\nNEW\n<!-- /doc_numbers -->\nafter\n"
    with pytest.raises(ValueError, match="no '<!-- doc_numbers: evaluation_vos -->'"):
        doc_numbers.replace_block(doc, "evaluation_vos", "NEW")


def test_every_doc_has_the_markers_of_its_tables():
    for name, doc in doc_numbers.DOCS.items():
        text = (REPO / doc).read_text()
        doc_numbers.replace_block(text, name, "x")  # raises without the markers
