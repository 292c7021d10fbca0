"""What the student trainer's and the student_model stage's tests share: two stand-in teachers,
toy captions, and one intra-op thread per test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

DIMS = [8, 12]  # two stand-in teachers

SCALES = [100.0, 50.0]

COLORS = ["red", "green", "blue", "yellow"]

SHAPES = ["circle", "square", "star"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # The shared 2-core test machine is often oversubscribed; two OpenMP threads then spin-wait
    # on each other and run 10-100x slower. One thread keeps these tests fast; it is restored
    # after each test, and the stage itself never changes the thread count.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def caption(i: int) -> str:
    return f"a {COLORS[i % 4]} {SHAPES[i % 3]} number {i}"
