"""surge.runner.transfer: a StepInput-like pytree packed into one buffer per dtype and rebuilt under jit."""

import jax
import numpy as np
import pytest

from surge.runner import transfer


def _tree():
    return {"ids": np.arange(6, dtype=np.int32).reshape(2, 3), "pos": np.array([7, 8], np.int32),
            "scale": np.array([0.5, 1.5, 2.5], np.float32), "flag": np.bool_(True), "seed": np.uint32(9),
            "table": np.full((2, 2), -1, np.int32)}


def test_one_buffer_per_dtype_in_first_seen_order():
    layout, buffers = transfer.pack(_tree())
    assert [b.dtype for b in buffers] == [np.dtype(np.bool_), np.dtype(np.int32), np.dtype(np.float32),
                                         np.dtype(np.uint32)]  # leaves flatten in sorted key order
    assert [b.size for b in buffers] == [1, 6 + 2 + 4, 3, 1]
    np.testing.assert_array_equal(buffers[1], [0, 1, 2, 3, 4, 5, 7, 8, -1, -1, -1, -1])


def test_unpack_under_jit_gives_the_tree_back():
    tree = _tree()
    layout, buffers = transfer.pack(tree)
    rebuilt = jax.jit(transfer.unpack, static_argnums=0)(layout, buffers)
    for key, value in tree.items():
        np.testing.assert_array_equal(np.asarray(rebuilt[key]), value)
        assert np.asarray(rebuilt[key]).dtype == np.asarray(value).dtype


def test_layout_is_static_and_compares_by_shape():
    first, _ = transfer.pack(_tree())
    second, _ = transfer.pack(_tree())
    assert first == second and hash(first) == hash(second)
    other = _tree()
    other["pos"] = np.array([1, 2, 3], np.int32)
    assert transfer.pack(other)[0] != first


def test_pack_as_a_known_layout_gives_the_same_buffers():
    layout, buffers = transfer.pack(_tree())
    again = transfer.pack_as(layout, _tree())
    assert len(again) == len(buffers)
    for got, want in zip(again, buffers):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_pack_as_refuses_a_tree_of_another_layout():
    layout, _ = transfer.pack(_tree())
    other = _tree()
    other["pos"] = np.array([1, 2, 3], np.int32)
    with pytest.raises(ValueError, match="leaf"):
        transfer.pack_as(layout, other)
    other = _tree()
    other["scale"] = other["scale"].astype(np.float64)
    with pytest.raises(ValueError, match="leaf"):
        transfer.pack_as(layout, other)
    other = _tree()
    del other["seed"]
    with pytest.raises(ValueError, match="structure"):
        transfer.pack_as(layout, other)
