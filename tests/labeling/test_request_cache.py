"""The request cache shared by mapped parts: partitions by shard, compaction that never
hides an entry from a concurrent reader, on local files and on moto's S3 server."""

from __future__ import annotations

import threading

from router_tasks.core.store import ArtifactStore
from router_tasks.data.ingest import ingest_prompts
from router_tasks.labeling.generate import generate_part
from router_tasks.labeling.request_cache import RequestCache, may_hold
from tests.openai_test_server import ScriptedOpenAIServer, last_user_text


def _cache(root, **kw):
    return RequestCache(ArtifactStore(root), base_url="http://x/v1", model="m", flush_every=1, **kw)


def _fill(root, partition, n, tag):
    writer = _cache(root)
    for i in range(n):
        writer.put(
            f"{tag}-{i}",
            answer=f"reply {tag} {i}",
            finish_reason="stop",
            input_tokens=1,
            output_tokens=2,
            partition=partition,
        )
    return [f"{tag}-{i}" for i in range(n)]


def test_may_hold_follows_the_shard_arithmetic():
    assert may_hold((4, 1), (4, 1)) and not may_hold((4, 2), (4, 1))
    assert may_hold((1, 0), (4, 3))  # unsharded entries can be anyone's
    assert may_hold((2, 1), (4, 3)) and not may_hold((2, 0), (4, 3))  # h%4=3 implies h%2=1
    assert may_hold((3, 2), (4, 1))  # coprime shard counts: any shard may hold it
    for h in range(100):  # the rule agrees with the definition
        assert may_hold((6, h % 6), (4, h % 4))


def test_a_part_reads_only_its_own_partitions(any_root):
    for shard in range(4):
        _fill(any_root, (4, shard), 5, f"s{shard}")
    reader_store = ArtifactStore(any_root)
    reader = RequestCache(reader_store, base_url="http://x/v1", model="m")
    assert reader.get("s1-3", (4, 1)).answer == "reply s1 3"
    assert reader.get("s2-3", (4, 1)) is None  # another shard's entry: not read at all
    assert reader_store.reads and all("/n4-1/" in key for key in reader_store.reads)
    assert sum(reader_store.reads.values()) == 5  # its five segments, each read once


def test_compaction_between_a_readers_listing_and_its_reads_hides_nothing(any_root):
    keys = _fill(any_root, (2, 0), 6, "k")

    class CompactsMidRead(ArtifactStore):
        """Runs another process's compaction (grace 0: deletes at once) right after the
        reader has listed the partition and before it reads the first segment."""

        fired = False

        def read_bytes(self, key):
            if "/seg-" in key and not self.fired:
                self.fired = True
                assert _cache(any_root, grace_s=0).compact((2, 0))  # merges, then deletes the segments
                assert not [k for k in ArtifactStore(any_root).list(_cache(any_root).prefix) if "/seg-" in k]
            return super().read_bytes(key)

    store = CompactsMidRead(any_root)
    reader = RequestCache(store, base_url="http://x/v1", model="m")
    assert all(reader.get(k, (2, 0)) is not None for k in keys)
    assert store.fired and any("/merged-" in k for k in store.reads)  # it read again, from the merged file


def test_two_parts_run_while_a_third_compacts_and_nothing_is_asked_twice(any_root, tmp_path):
    """Generate parts of one endpoint for two shards at once, with every reply already cached
    in many small segments, while another process compacts those partitions in a loop."""
    src = tmp_path / "p.jsonl"
    src.write_text("".join(f'{{"prompt": "Question number {i}?"}}\n' for i in range(48)))
    prompts = ingest_prompts(str(src), shards=4, artifact_root=any_root)
    with ScriptedOpenAIServer(lambda b: f"answer to {last_user_text(b)}") as srv:
        model = {"name": "m", "model": "m", "base_url": srv.base_url, "max_retries": 0}
        for shard in (1, 2):  # fill the cache: a segment per reply
            generate_part(prompts, model=model, shard=shard, artifact_root=any_root, flush_every=1)
        asked = srv.count()
        assert asked > 10
        # the same prompts under another dataset name: new artifacts, the same requests
        again = ingest_prompts(str(src), shards=4, dataset="renamed", artifact_root=any_root)
        stop = threading.Event()
        compactions, errors, refs = [], [], {}

        def compactor():
            cache = RequestCache(
                ArtifactStore(any_root), base_url=model["base_url"].rstrip("/"), model="m", grace_s=0.0
            )
            while not stop.is_set():
                for shard in (1, 2):
                    try:
                        compactions.append(cache.compact((4, shard)))
                    except Exception as err:  # noqa: BLE001
                        errors.append(err)

        def part(shard):
            try:
                refs[shard] = generate_part(again, model=model, shard=shard, artifact_root=any_root)
            except Exception as err:  # noqa: BLE001
                errors.append(err)

        c = threading.Thread(target=compactor)
        c.start()
        parts = [threading.Thread(target=part, args=(s,)) for s in (1, 2)]
        for t in parts:
            t.start()
        for t in parts:
            t.join(60)
        stop.set()
        c.join(30)
        assert not errors
        assert any(compactions)
        segs = [k for k in ArtifactStore(any_root).list("cache/requests") if "/seg-" in k]
        assert not segs  # the compactor did delete what it merged, while the parts read
        assert srv.count() == asked  # every cached reply found by every part: no re-ask
        store = ArtifactStore(any_root)
        from router_tasks.core.stage import read_manifest

        for shard in (1, 2):
            stats = read_manifest(store, refs[shard])["stats"]
            assert stats["calls"] == 0 and stats["cached"] == stats["requests"] > 0


def test_a_reader_past_the_threshold_compacts_and_the_next_reads_one_file(local_root):
    keys = _fill(local_root, (1, 0), 40, "c")  # 40 segments > COMPACT_AFTER
    first = RequestCache(ArtifactStore(local_root), base_url="http://x/v1", model="m")
    assert first.entries((1, 0)) == 40 and first.files_read == 40
    second_store = ArtifactStore(local_root)
    second = RequestCache(second_store, base_url="http://x/v1", model="m")
    assert all(second.get(k) is not None for k in keys)
    assert second.files_read == 1  # the merged file; the covered segments wait out their grace period
    assert len([k for k in second_store.list(second.prefix) if "/seg-" in k]) == 40
