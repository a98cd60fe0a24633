"""The per-image cache: keys, LRU eviction by bytes, 0 = off, thread safety."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from lesionseg.pipeline.cache import EmbeddingCache, image_key, models_identity


def array(nbytes: int, fill: int = 0) -> np.ndarray:
    return np.full(nbytes, fill, np.uint8)


def test_get_returns_what_was_put_and_counts():
    cache = EmbeddingCache(1000)
    assert cache.get("a") is None
    value = np.arange(10, dtype=np.float32)
    cache.put("a", value)
    got = cache.get("a")
    assert got is value and (cache.hits, cache.misses) == (1, 1)
    assert (len(cache), cache.nbytes) == (1, 40)


def test_values_are_read_only_so_no_caller_can_change_a_later_answer():
    cache = EmbeddingCache(1000)
    cache.put("a", np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="read-only"):
        cache.get("a")[0] = 1.0


def test_eviction_by_bytes_drops_the_least_recently_used():
    cache = EmbeddingCache(300)
    for key in "abc":
        cache.put(key, array(100))
    assert cache.get("a") is not None  # a is now the most recent; b the least
    cache.put("d", array(100))
    assert cache.get("b") is None
    assert all(cache.get(k) is not None for k in "acd")
    assert (len(cache), cache.nbytes) == (3, 300)
    cache.put("e", array(250))  # needs room for 250: evicts c, a, d (least recent first)
    assert [k for k in "acde" if cache.get(k) is not None] == ["e"]
    assert cache.nbytes == 250


def test_replacing_a_key_counts_its_bytes_once():
    cache = EmbeddingCache(300)
    cache.put("a", array(100))
    cache.put("a", array(200))
    assert (len(cache), cache.nbytes, int(cache.get("a").nbytes)) == (1, 200, 200)


def test_a_value_over_the_whole_budget_is_not_stored():
    cache = EmbeddingCache(100)
    cache.put("small", array(60))
    cache.put("big", array(101))
    assert cache.get("big") is None and cache.get("small") is not None


def test_zero_turns_it_off():
    cache = EmbeddingCache(0)
    cache.put("a", array(1))
    assert not cache.enabled and cache.get("a") is None
    assert (len(cache), cache.nbytes, cache.hits, cache.misses) == (0, 0, 0, 0)


def test_key_depends_on_pixels_shape_and_models():
    image = np.zeros((4, 6, 3), np.uint8)
    key = image_key(image, "m1")
    assert key == image_key(image.copy(), "m1")
    assert key == image_key(np.asfortranarray(image), "m1")  # layout is not content
    changed = image.copy()
    changed[3, 5, 2] = 1
    assert image_key(changed, "m1") != key
    assert image_key(image.reshape(6, 4, 3), "m1") != key  # same bytes, other shape
    assert image_key(image, "m2") != key


def test_models_identity_changes_with_any_model():
    models = {"backend": "onnxruntime", "sam": {"sha256": "aa"}, "store": {"exports": "e:1"}}
    same = {"store": {"exports": "e:1"}, "sam": {"sha256": "aa"}, "backend": "onnxruntime"}
    assert models_identity(models) == models_identity(same)
    assert models_identity(models) != models_identity({**models, "sam": {"sha256": "ab"}})
    assert models_identity(models) != models_identity({**models, "store": {"exports": "e:2"}})


def test_threads_share_it_safely():
    cache = EmbeddingCache(50 * 16)  # room for 50 of the 200 keys

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(2000):
            k = int(rng.integers(200))
            if (value := cache.get(k)) is not None:
                assert int(value[0]) == k % 256
            else:
                cache.put(k, array(16, k % 256))

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.nbytes == 16 * len(cache) <= 50 * 16
    assert cache.hits + cache.misses == 8000
