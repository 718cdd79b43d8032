"""A pretraining task that stops itself after a given optimizer step (tests of what a relaunch does)."""
from motionmae_ds.train.pretrain import PretrainTask


class StopAt(PretrainTask):
    """Pretraining killed (an exception out of the loop) after optimizer step ``stop``."""

    def __init__(self, cfg, stop: int) -> None:
        super().__init__(cfg)
        self.stop = stop

    def after_step(self, engine, step: int) -> None:
        super().after_step(engine, step)
        if step == self.stop:
            raise KeyboardInterrupt(f"stopped after step {step}")
