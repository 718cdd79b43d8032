"""The checkpoint manager's cadence, by hand. Its saves, keep-last, client state and resume run in
tests/train/test_loop.py (the loop in this process); the world-size check in tests/train/test_universal_resume.py."""
from motionmae_ds.checkpoint.manager import CheckpointManager


def test_cadence_by_hand(tmp_path):
    # 3 epochs of 6 steps, every 4th step, every 2nd epoch
    manager = CheckpointManager(tmp_path, world=1, micro=2, epochs=3, save_every_steps=4, save_every_epochs=2)
    assert [s for s in range(1, 19) if manager.step_due(s)] == [4, 8, 12, 16]
    # epoch 0 ends at step 6 (not due), epoch 1 at 12 (every 2nd), epoch 2 at 18 (the last)
    assert [manager.epoch_due(e, 6 * (e + 1)) for e in range(3)] == [False, True, True]
    # a step already saved (or resumed from) is not saved again, whichever question asks
    manager.saved_step = 12
    assert not manager.step_due(12) and not manager.epoch_due(1, 12)

    never = CheckpointManager(tmp_path, world=1, micro=2, epochs=3)
    assert not any(never.step_due(s) for s in range(1, 19))
    assert [never.epoch_due(e, 6 * (e + 1)) for e in range(3)] == [False, False, True]  # the last epoch always


def test_prepare_leaves_a_fresh_run_alone(tmp_path):
    ds = {"train_micro_batch_size_per_gpu": 2}
    # --no_resume: the config as given, whatever latest names
    assert CheckpointManager(tmp_path, 1, 2, 1, resume=False).prepare(ds) is ds
    # resuming with nothing to resume: DeepSpeed is told not to load a universal checkpoint
    assert CheckpointManager(tmp_path, 1, 2, 1).prepare(ds) == {**ds, "checkpoint": {"load_universal": False}}
    assert CheckpointManager(tmp_path, 1, 2, 1).latest() is None
