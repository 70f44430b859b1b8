"""The server's cache of adapted tasks: least recently used first, within its byte budget
whatever a client sends, keyed by everything that decides a task."""

import threading

import numpy as np

from tfmeta_serving.task_cache import OVERHEAD, TaskCache, key


def support(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"support_x": rng.random((5, 4)).astype(np.float32),
            "support_y": np.arange(5, dtype=np.int32)}


def test_a_key_changes_with_every_part_of_a_task_and_only_with_them():
    base = key("m", 1, "adapt", support(0))
    assert base == key("m", 1, "adapt", support(0))
    changed = dict(support(0))
    changed["support_x"] = changed["support_x"].copy()
    changed["support_x"][2, 1] += 1e-7
    others = [key("n", 1, "adapt", support(0)), key("m", 2, "adapt", support(0)),
              key("m", 1, "adapt_images", support(0)), key("m", 1, "adapt", support(1)),
              key("m", 1, "adapt", changed),
              key("m", 1, "adapt", {**support(0), "support_y": np.arange(5, dtype=np.int64)}),
              key("m", 1, "adapt", {**support(0),
                                    "support_x": support(0)["support_x"].reshape(4, 5)})]
    assert len({base, *others}) == len(others) + 1
    files = lambda *items: np.array(list(items), object)  # noqa: E731
    # Files are delimited: ("ab", "c") and ("a", "bc") are different support sets.
    assert key("m", 1, "adapt_images", {"support_images": files(b"ab", b"c")}) != \
        key("m", 1, "adapt_images", {"support_images": files(b"a", b"bc")})


def test_least_recently_used_tasks_go_first_within_the_budget():
    task = bytes(1000)
    cost = 32 + len(task) + OVERHEAD
    cache = TaskCache(3 * cost)
    keys = [key("m", 1, "adapt", support(i)) for i in range(4)]
    for k in keys[:3]:
        cache.put(k, task)
    assert cache.get(keys[0]) == task          # now the most recent
    cache.put(keys[3], task)                   # evicts keys[1], the least recent
    assert cache.get(keys[1]) is None and cache.get(keys[2]) == task
    assert len(cache) == 3 and cache.bytes == 3 * cost
    cache.put(key("m", 1, "adapt", support(9)), bytes(4 * cost))   # larger than the budget
    assert len(cache) == 3 and cache.bytes == 3 * cost
    assert (cache.hits, cache.misses) == (2, 1)


def test_a_flood_of_new_support_sets_never_passes_the_budget():
    cache = TaskCache(50_000)

    def client(seed):
        rng = np.random.default_rng(seed)
        for i in range(300):
            k = key("m", 1, "adapt", {"support_x": np.array([seed, i], np.float32)})
            cache.put(k, bytes(int(rng.integers(100, 5000))))
            assert cache.bytes <= cache.max_bytes

    threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 0 < cache.bytes <= cache.max_bytes
    assert cache.bytes == sum(len(k) + len(v) + OVERHEAD for k, v in cache._entries.items())
