"""The settings (index checks, conv workspace) are context-local: a thread that changes one
never changes another thread's."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import backprop_xp
from backprop_xp import _config
from backprop_xp import functional as F


def _in_threads(*targets):
    """Run each target in its own thread, all started together; re-raise the first error."""
    errors: list[BaseException] = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as e:  # the assertion of a thread fails the test
                errors.append(e)

        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_index_checks_off_in_one_thread_stay_on_in_another():
    off, checked = threading.Event(), threading.Event()
    x = np.zeros((2, 3))
    bad = np.array([0, 7])

    def switches_off():
        with backprop_xp.index_checks(False):
            off.set()
            assert checked.wait(10)  # the other thread checks while this one is inside
            assert not _config.index_checks_enabled()

    def checks():
        assert off.wait(10)
        try:
            with pytest.raises(ValueError, match="out-of-range"):
                F.cross_entropy(x, bad)
        finally:
            checked.set()

    _in_threads(switches_off, checks)
    assert _config.index_checks_enabled()


def test_overlapping_index_check_blocks_in_two_threads_restore_the_default():
    """The interleaving that used to leave the check off for the whole process: A enters,
    B enters, A leaves (restoring B's False), B leaves."""
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def a():
        with backprop_xp.index_checks(False):
            a_in.set()
            assert b_in.wait(10)
        a_out.set()
        assert _config.index_checks_enabled()

    def b():
        assert a_in.wait(10)
        with backprop_xp.index_checks(False):
            b_in.set()
            assert a_out.wait(10)
            assert not _config.index_checks_enabled()
        assert _config.index_checks_enabled()

    _in_threads(a, b)
    assert _config.index_checks_enabled()


def test_set_index_checks_is_local_to_its_thread():
    def off():
        backprop_xp.set_index_checks(False)
        assert not _config.index_checks_enabled()

    _in_threads(off)
    assert _config.index_checks_enabled()
    with pytest.raises(TypeError, match=r"set_index_checks: argument 'enabled' expected a bool"):
        backprop_xp.set_index_checks("False")


def test_a_workspace_budget_set_in_one_thread_leaves_another_threads_gradient_bits():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3, 12, 12)).astype(np.float32)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)

    def dw() -> np.ndarray:
        y, cache = F.conv2d(x, w, stride=2)
        return F.conv2d_backward(np.ones_like(y), cache)[1]

    default = dw()
    with F.conv_workspace_bytes(1):  # one batch item per chunk: other summation order
        chunked = dw()
    assert F.get_conv_workspace_bytes() == 8 * 2**20
    results = {}
    small, measured = threading.Event(), threading.Event()

    def sets_small():
        F.set_conv_workspace_bytes(1)
        small.set()
        assert measured.wait(10)
        results["small"] = dw()

    def measures():
        assert small.wait(10)
        results["other"] = dw()
        measured.set()

    _in_threads(sets_small, measures)
    np.testing.assert_array_equal(results["other"], default)
    np.testing.assert_array_equal(results["small"], chunked)
    assert F.get_conv_workspace_bytes() == 8 * 2**20
