"""The S3 replicas' cache of model versions: a version in use is never
removed, and a replaced, evicted or deleted one goes when its last user is done."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("boto3")

from mlbackend.server.s3 import _Version, _VersionCache


def version(cache: _VersionCache, key: str, etag: str) -> _Version:
    v = _Version(key, etag, None, cache.new_dir())
    Path(v.model_dir, "marker").write_text(etag)
    return v


def test_a_replaced_version_stays_while_in_use(tmp_path: Path) -> None:
    cache = _VersionCache(str(tmp_path), size=8)
    first = cache.install(version(cache, "m/h", '"1"'))
    assert cache.checkout("m/h") is first  # a second user
    cache.release(first)

    second = cache.install(version(cache, "m/h", '"2"'))
    assert os.path.isdir(first.model_dir)  # the first request still reads it
    assert cache.checkout("m/h") is second
    cache.release(first)
    assert not os.path.exists(first.model_dir)
    cache.release(second)
    cache.release(second)
    assert os.path.isdir(second.model_dir)  # current: kept for the next request


def test_the_same_version_installed_twice_keeps_one_copy(tmp_path: Path) -> None:
    cache = _VersionCache(str(tmp_path), size=8)
    a = cache.install(version(cache, "m/h", '"1"'))
    duplicate = version(cache, "m/h", '"1"')  # another request downloaded it meanwhile
    b = cache.install(duplicate)
    assert b is a
    assert not os.path.exists(duplicate.model_dir)
    cache.release(a)
    cache.release(b)


def test_evicted_and_forgotten_versions_are_removed(tmp_path: Path) -> None:
    cache = _VersionCache(str(tmp_path), size=2)
    versions = []
    for i in range(3):
        v = cache.install(version(cache, f"m{i}/h", f'"{i}"'))
        cache.release(v)
        versions.append(v)
    assert not os.path.exists(versions[0].model_dir)  # least recently used, unused
    assert cache.checkout("m0/h") is None

    in_use = cache.checkout("m1/h")
    assert in_use is versions[1]
    cache.forget("m1/")  # the model was deleted
    assert cache.checkout("m1/h") is None
    assert os.path.isdir(in_use.model_dir)
    cache.release(in_use)
    assert not os.path.exists(in_use.model_dir)

    cache.forget(key="m2/h")
    assert not os.path.exists(versions[2].model_dir)
    assert os.listdir(tmp_path) == []
