"""The training harness in one process: checkpoint cadence, resume after the last checkpointed step,
the final checkpoint republished by a run restored after its end, callbacks after every step.
(The same rules on Ray Train workers: the killed-worker tests of the three trainers.)"""

from __future__ import annotations

import json
from pathlib import Path

from semconv import training
from semconv.training import Session


def count_to(total: int, session: Session) -> list[int]:
    """A toy loop: its state is the list of steps it ran, checkpointed as ``steps.json``."""
    done: list[int] = []
    if session.restored is not None:
        done = json.loads((session.restored / "steps.json").read_text())

    def save(path: Path) -> None:
        if session.rank == 0:
            (path / "steps.json").write_text(json.dumps(done))

    for step in range(session.start_step + 1, total + 1):
        done.append(step)
        session.report(step, {"step": step}, save, last=step == total)
    session.finish(save)
    return done


def checkpoints(root: Path) -> dict[str, dict]:
    return {p.name: json.loads((p / training.PROGRESS).read_text()) for p in sorted(root.iterdir())}


def test_checkpoints_every_n_steps_and_at_the_last(tmp_path):
    assert count_to(5, Session(checkpoint_every=2, checkpoint_dir=tmp_path)) == [1, 2, 3, 4, 5]
    assert checkpoints(tmp_path) == {
        "checkpoint_000002": {"step": 2, "resumed_from": []},
        "checkpoint_000004": {"step": 4, "resumed_from": []},
        "checkpoint_000005": {"step": 5, "resumed_from": []},
    }
    assert json.loads((tmp_path / "checkpoint_000004" / "steps.json").read_text()) == [1, 2, 3, 4]


def test_a_restored_run_starts_after_the_checkpointed_step_and_records_each_resume(tmp_path):
    count_to(5, Session(checkpoint_every=2, checkpoint_dir=tmp_path / "a"))
    again = Session(checkpoint_every=2, checkpoint_dir=tmp_path / "b", restored=tmp_path / "a" / "checkpoint_000002")
    assert (again.start_step, again.resumed_from) == (2, [2])
    assert count_to(5, again) == [1, 2, 3, 4, 5]  # steps 3-5 ran once more, 1-2 came from the checkpoint
    assert checkpoints(tmp_path / "b")["checkpoint_000005"] == {"step": 5, "resumed_from": [2]}
    third = Session(restored=tmp_path / "b" / "checkpoint_000004")
    assert (third.start_step, third.resumed_from) == (4, [2, 4])


def test_a_run_restored_after_its_last_step_publishes_the_final_checkpoint_again(tmp_path):
    count_to(3, Session(checkpoint_every=10, checkpoint_dir=tmp_path / "a"))
    assert list(checkpoints(tmp_path / "a")) == ["checkpoint_000003"]  # only the last step
    assert count_to(3, Session(checkpoint_dir=tmp_path / "b", restored=tmp_path / "a" / "checkpoint_000003")) == [1, 2, 3]
    assert checkpoints(tmp_path / "b") == {"checkpoint_000003": {"step": 3, "resumed_from": [3]}}
    # nothing to train at all (e.g. zero epochs) still ends on a checkpoint of the initial state
    count_to(0, Session(checkpoint_dir=tmp_path / "c"))
    assert checkpoints(tmp_path / "c") == {"checkpoint_000000": {"step": 0, "resumed_from": []}}


def test_reports_follow_report_every_and_callbacks_run_after_every_step(tmp_path):
    published, seen = [], []

    class Recording(Session):
        def _publish(self, step, metrics, save):
            published.append((step, save is not None))

    session = Recording(checkpoint_every=4, report_every=3, callbacks=[lambda step, rank: seen.append((step, rank))])
    count_to(7, session)
    assert published == [(3, False), (4, True), (6, False), (7, True)]
    assert seen == [(step, 0) for step in range(1, 8)]


def test_callbacks_are_installed_only_inside_the_block():
    def hook(step: int, rank: int) -> None:
        pass

    with training.callbacks(hook):
        with training.callbacks(print):
            assert training._CALLBACKS.get() == (hook, print)
        assert training._CALLBACKS.get() == (hook,)
    assert training._CALLBACKS.get() == ()
