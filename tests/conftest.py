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
