import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one intra-op thread (~40x faster than two on a shared 2-core
    machine); modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def interrupt_at_call(monkeypatch):
    """`arm(n)` patches `dllmq.sweep.evaluate_cell` to record each cell's shard and raise
    KeyboardInterrupt (a Ctrl-C mid-run) on its n-th call; returns the list of recorded shards."""
    from dllmq import sweep

    real = sweep.evaluate_cell

    def arm(n: int) -> list:
        calls = []

        def evaluate(lm, cell, *a):
            calls.append(cell.shard)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(lm, cell, *a)

        monkeypatch.setattr(sweep, "evaluate_cell", evaluate)
        return calls
    return arm
