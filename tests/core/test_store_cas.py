"""Compare-and-swap on the artifact store, on a local folder and on moto's S3 server
(conditional PUT with If-Match / If-None-Match over HTTP)."""

from __future__ import annotations

from router_tasks.core.store import ArtifactStore


def test_write_if_replaces_only_the_version_read(any_root):
    store = ArtifactStore(any_root)
    assert store.read_versioned("p/ptr.json") == (None, None)
    assert store.write_if("p/ptr.json", b"one", None)  # create: only if absent
    assert not store.write_if("p/ptr.json", b"again", None)  # exists now: refused
    data, v1 = store.read_versioned("p/ptr.json")
    assert data == b"one" and v1
    assert store.write_if("p/ptr.json", b"two", v1)
    assert not store.write_if("p/ptr.json", b"stale", v1)  # v1 is gone: a second writer loses
    data, v2 = store.read_versioned("p/ptr.json")
    assert data == b"two" and v2 != v1
    assert store.list("p/") == ["p/ptr.json"]  # no lock or temporary file shows up
