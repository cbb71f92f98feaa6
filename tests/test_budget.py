"""Wall-time budgets: parsing, the training callback on a fake clock, the project's ledger."""

import json

import keras
import numpy as np
import pytest

from shipseg.core import atomic, budget


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45m", 2700), ("1h30m", 5400), ("90s", 90), ("1.5h", 5400), ("2h5s", 7205)],
)
def test_durations_parse_with_their_units(text, seconds):
    assert budget.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "45", "m", "-5m", "0m", "1d", "5 minutes"])
def test_durations_without_units_or_length_are_refused(text):
    with pytest.raises(ValueError, match="45m"):
        budget.parse_duration(text)


class FakeClock:
    """Every call advances time: one training step costs ``step`` seconds."""

    def __init__(self, step: float):
        self.now, self.step = 1000.0, step

    def __call__(self):
        self.now += self.step
        return self.now


def tiny_fit(callback, epochs=10, steps=5):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.zeros((steps, 2)), np.zeros((steps, 1))
    return model.fit(x, y, batch_size=1, epochs=epochs, callbacks=[callback], verbose=0)


def test_training_stops_before_an_epoch_that_cannot_end_within_the_budget():
    # Each epoch reads the clock 7 times (begin, 5 steps, end): 7 seconds an epoch.
    clock = FakeClock(step=1.0)
    time_budget = budget.TimeBudget(deadline=clock.now + 30, clock=clock, verbose=False)
    history = tiny_fit(time_budget)
    # 4 epochs end by t+28; a fifth would end at t+35, past the deadline: not started.
    assert len(history.epoch) == 4 and time_budget.epochs_completed == 4
    assert time_budget.stopped and clock.now <= 1000 + 30


def test_an_epoch_running_past_the_deadline_stops_at_the_next_step():
    clock = FakeClock(step=1.0)
    time_budget = budget.TimeBudget(deadline=clock.now + 3, clock=clock, verbose=False)
    history = tiny_fit(time_budget, steps=50)
    assert len(history.epoch) == 1 and time_budget.epochs_completed == 0
    assert time_budget.stopped


def test_without_a_binding_budget_training_runs_every_epoch():
    clock = FakeClock(step=1.0)
    time_budget = budget.TimeBudget(deadline=clock.now + 10_000, clock=clock, verbose=False)
    assert len(tiny_fit(time_budget).epoch) == 10 and not time_budget.stopped


def test_the_project_budget_counts_earlier_runs_and_can_be_extended(tmp_path):
    clock = FakeClock(step=0.0)
    path = tmp_path / "budget.json"
    first = budget.SearchBudget(path, 600, clock)
    clock.now += 500
    first.save(atomic.write_json_atomically)
    assert json.loads(path.read_text())["spent_seconds"] == 500
    rerun = budget.SearchBudget(path, 600, clock)
    assert rerun.left() == pytest.approx(100) and rerun.deadline() == pytest.approx(clock.now + 100)
    clock.now += 200
    assert rerun.left() == 0
    extended = budget.SearchBudget(path, 1200, clock)
    assert extended.left() == pytest.approx(700)


def test_a_damaged_budget_record_is_named(tmp_path):
    path = tmp_path / "budget.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match="budget.json"):
        budget.SearchBudget(path, 60)
