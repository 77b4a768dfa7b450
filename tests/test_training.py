"""The training harness that the three trainers share: checkpoint cadence, resume after the last
checkpointed step, the final checkpoint republished by a run restored after its end, callbacks after
every step; what a checkpoint holds (weights, optimizer, state) and that a run resumed from one
follows the uninterrupted trajectory; and, on two Ray Train workers, the resume after a killed
worker. Each trainer's own test only shows that it checkpoints and resumes through this harness."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch

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


class SavesItself(torch.nn.Linear):
    """A model with its own ``save_pretrained`` (like the codebook): the harness must call it."""

    def save_pretrained(self, path: Path) -> None:
        (path / "config.json").write_text(json.dumps({"in": self.in_features, "out": self.out_features}))
        training.save_checkpoint(path, self.state_dict())


def test_a_checkpoint_holds_weights_optimizer_and_state_and_loads_them_back(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    training.save_checkpoint(tmp_path / "a", model, opt, {"losses": [0.5]})
    assert {p.name for p in (tmp_path / "a").iterdir()} == {training.WEIGHTS, training.OPTIMIZER, training.STATE}

    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.1)
    training.load_weights(tmp_path / "a", fresh)
    training.load_optimizer(tmp_path / "a", fresh_opt)
    assert training.load_state(tmp_path / "a") == {"losses": [0.5]}
    torch.testing.assert_close(fresh.state_dict(), model.state_dict(), rtol=0, atol=0)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])

    training.save_checkpoint(tmp_path / "b", SavesItself(3, 2))
    assert {p.name for p in (tmp_path / "b").iterdir()} == {"config.json", training.WEIGHTS}


def test_loading_weights_checks_that_they_fit_the_model(tmp_path):
    model = torch.nn.Linear(3, 2)
    training.save_checkpoint(tmp_path, {"weight": torch.ones(2, 3)})  # only the tensors that learn
    with pytest.raises(RuntimeError, match="lacks the model's 'bias'"):
        training.load_weights(tmp_path, model)
    bias = model.bias.detach().clone()
    training.load_weights(tmp_path, model, partial=True)
    assert torch.equal(model.weight, torch.ones(2, 3)) and torch.equal(model.bias, bias)
    training.save_checkpoint(tmp_path, {"weight": torch.ones(2, 3), "lora_A": torch.ones(1)})
    with pytest.raises(RuntimeError, match="holds 'lora_A', which the model lacks"):
        training.load_weights(tmp_path, model, partial=True)


def test_unwrap_returns_the_module_inside_a_wrapper_and_seeding_repeats_every_generator():
    class Wrapper(torch.nn.Module):  # what DDP and DeepSpeed look like from outside
        def __init__(self, module: torch.nn.Module):
            super().__init__()
            self.module = module

    inner = torch.nn.Linear(2, 2)
    assert training.unwrap(Wrapper(inner)) is inner and training.unwrap(inner) is inner

    def draws() -> tuple:
        training.seed_everything(7)
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    assert draws() == draws()


def make_regression():
    """A toy trainer: linear regression with Adam, each worker taking its strided share of every
    seeded batch (the LightGCN trainer's scheme), checkpointed through the harness. Built inside a
    function so that cloudpickle ships it to the Ray workers by value (they cannot import tests/)."""

    def regression(config: dict, session: Session) -> tuple[torch.nn.Module, list[float]]:
        training.seed_everything(config["seed"])
        model = torch.nn.Linear(4, 1)
        opt = torch.optim.Adam(model.parameters(), lr=0.5)
        losses: list[float] = []
        if session.restored is not None:
            training.load_weights(session.restored, model)
            training.load_optimizer(session.restored, opt)
            losses = training.load_state(session.restored)["losses"]

        def save(path: Path) -> None:
            if session.rank == 0:
                training.save_checkpoint(path, model, opt, {"losses": losses})

        net = session.prepare_model(model)
        x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        for step in range(session.start_step, config["steps"]):
            batch = torch.randperm(64, generator=torch.Generator().manual_seed(step))[:16]
            mine = batch[session.rank :: session.world]
            loss = (net(x[mine]) - y[mine]).pow(2).sum() / len(batch)
            opt.zero_grad()
            (loss * session.world).backward()  # DDP averages: the gradient of the whole batch's mean
            opt.step()
            total = loss.detach().clone()
            if session.world > 1:
                torch.distributed.all_reduce(total)
            losses.append(float(total))
            session.report(step + 1, {"step": step + 1, "loss": losses[-1]}, save, last=step + 1 == config["steps"])
        session.finish(save)
        return model, losses

    return regression


def test_a_run_resumed_from_a_checkpoint_follows_the_uninterrupted_trajectory(tmp_path):
    regression = make_regression()
    full, full_losses = regression({"seed": 0, "steps": 4}, Session(checkpoint_every=2, checkpoint_dir=tmp_path))
    for pt in tmp_path.glob("*/*.pt"):  # plain tensors and numbers: loads without unpickling code
        torch.load(pt, weights_only=True)
    resumed, losses = regression({"seed": 0, "steps": 4}, Session(restored=tmp_path / "checkpoint_000002"))
    assert losses == full_losses  # steps 1-2 from the checkpoint, 3-4 recomputed bit for bit
    torch.testing.assert_close(resumed.state_dict(), full.state_dict(), rtol=0, atol=0)
    assert full_losses[-1] < full_losses[0] / 2  # and it learns: the trajectory is not a constant


def kill_after(step: int, rank: int, once_registered: int, run_dir: Path, marker: Path):
    """A step callback that kills worker ``rank`` after step ``step``, once, as soon as Ray Train's
    controller has registered the checkpoint of step ``once_registered`` (its snapshot in ``run_dir``
    lists it); dying earlier would lose that checkpoint. Waits on that condition, not on a clock."""

    def registered() -> bool:
        try:
            snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        except (FileNotFoundError, ValueError):  # not written yet, or being written
            return False
        return any(r.get("metrics", {}).get("step") == once_registered for r in snapshot["checkpoint_results"])

    def callback(done: int, worker_rank: int) -> None:
        if worker_rank != rank or done != step or marker.exists():
            return
        give_up = time.monotonic() + 300  # a hung controller fails the run instead of hanging it
        while not registered():
            if time.monotonic() > give_up:
                raise TimeoutError(f"checkpoint of step {once_registered} never registered in {run_dir}")
            time.sleep(0.1)
        marker.write_text(f"killed worker {rank} after step {step}\n")
        os._exit(1)

    return callback


@pytest.mark.slow  # two worker-group starts on the shared 2-core machine: 1-3 minutes
def test_two_workers_resume_after_a_killed_worker_on_the_uninterrupted_trajectory(ray_local, tmp_path):
    config = {"seed": 0, "steps": 4}
    _, one_process = make_regression()(config, Session())
    marker = tmp_path / "killed"
    with training.callbacks(kill_after(3, rank=1, once_registered=2, run_dir=tmp_path / "toy", marker=marker)):
        result = training.run_on_ray(make_regression(), config, name="toy", storage_path=str(tmp_path),
                                     num_workers=2, checkpoint_every=2, cpus_per_worker=1, max_failures=1)
    assert marker.exists()  # worker 1 died after step 3 (checkpoint at step 2)
    with result.checkpoint.as_directory() as d:
        progress = json.loads((Path(d) / training.PROGRESS).read_text())
        losses = training.load_state(Path(d))["losses"]
    assert progress == {"step": 4, "resumed_from": [2]}  # the restarted group resumed after step 2
    # and two workers followed the one-process trajectory (up to float summation order)
    assert losses == pytest.approx(one_process, rel=1e-5)
