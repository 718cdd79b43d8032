"""The console of a run whose output goes to a file: plain progress lines at a fixed interval instead of a bar's
carriage-return updates, and the epoch line's fields. A whole run's console through the launcher:
tests/runtime/test_relaunch.py."""
import contextlib
import io

from motionmae_ds.train.logging import Progress, clock, epoch_line


def _console(every_s: float) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()  # not terminals
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        bar = Progress(total=10, initial=4, desc="epoch 2", enabled=True, every_s=every_s)
        bar.set_postfix(loss="0.5000", lr="1.00e-03")
        for _ in range(3):
            bar.update(1)
        bar.close()
    return out.getvalue(), err.getvalue()


def test_progress_in_a_file_is_plain_lines_at_an_interval():
    out, err = _console(every_s=0.0)  # a line at every update
    assert err == "" and "\r" not in out
    lines = out.splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"epoch 2: {n}/10 micro-steps loss 0.5000 lr 1.00e-03"
                                                     for n in (5, 6, 7)]
    assert all(line.endswith(" in this epoch)") for line in lines)
    assert _console(every_s=3600.0) == ("", "")  # nothing before the interval has passed


def test_epoch_line():
    assert clock(0) == "0:00:00" and clock(3725.4) == "1:02:05"
    line = epoch_line(11, 52, 192, 832, {"loss": 0.05, "loss_frame": 0.0312345, "loss_motion": 0.00004}, 0.0029734,
                      51.04, 0.031, 31.2, 105.0)
    assert line == ("epoch 12/52 step 192/832 loss 0.05 loss_frame 0.03123 loss_motion 4.00e-05 lr 0.00297 clips/s "
                    "51.0 data_wait 3% elapsed 0:00:31 remaining 0:01:45")
    assert epoch_line(0, 1, 6, 6, {"loss": 1.0}, 0.1, 0.0, 0.0, 1.0, None).endswith("remaining ?")
