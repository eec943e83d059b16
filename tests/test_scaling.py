"""Issue 9a: no step holds per-record state of the whole corpus in one place.

* The duplicate check and the incremental match run as keyed shuffles on hash buckets
  (`dedup.CheckTextRecords`, `incremental.AttachPriorKeys`); checked here on real Beam pipelines,
  across files and across the line chunks of the side inputs.
* The Dataflow job, built offline against the GCS emulator, has no global combine and no side
  input fed by anything but the small, allowed PCollections: the ceiling cannot come back unnoticed.
"""

import json

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from gcs_emulator import gcs_emulator  # noqa: F401 - the fixture
from transforms.records import ImageRef
from transforms.state.dedup import CHUNK_LINES, CheckTextRecords, LineFlags
from transforms.state.incremental import AttachPriorKeys, prior_key_batches
from transforms.state.keys import PriorKeys, content_keys, hash64, id_hashes, text_key_batch

MODEL = "m" * 64


def test_hash64_is_the_same_for_every_spelling_of_the_same_strings():
    ids = ["a", "bb", "", "x" * 17, "é" * 9, "a", "12345678", "123456789"]
    h = hash64(ids)
    assert h.dtype == np.uint64 and h[0] == h[5]
    assert len(set(h.tolist())) == 7
    assert (hash64(pa.array(ids, pa.large_string())) == h).all()
    assert (hash64(pa.chunked_array([ids[:3], ids[3:]])) == h).all()
    assert (hash64(pa.array(ids).slice(2, 4)) == h[2:6]).all()
    assert (hash64(pa.array(ids).dictionary_encode()) == h).all()
    assert hash64(["\ud800x"])[0] == hash64(pa.array([b"\xed\xa0\x80x"], pa.binary()))[0]  # surrogatepass bytes
    distinct = hash64([f"rt-{i:08d}" for i in range(200_000)])
    assert len(np.unique(distinct)) == 200_000


def _table(path, lines, ids):
    return pa.table({"source": pa.array([path] * len(lines)), "line": pa.array(lines, pa.int64()), "id": pa.array(ids)})


def _run_checks(current, prior, expected: dict, bits=2):
    """CheckTextRecords on real key batches; LineFlags' answer for every current record must be
    `expected[(path, line)] == (id, skipped, first occurrence or None)`."""
    batches = []
    for path, index, lines, ids, contents in current:
        ckeys = content_keys(contents, MODEL) if contents is not None else None
        batches += list(text_key_batch(path, index, np.array(lines), id_hashes(ids), ckeys, bits))
    prior_batches = []
    for ids, contents in prior:
        ikeys, ckeys = id_hashes(ids), content_keys(contents, MODEL)
        for bucket in range(1 << bits):
            rows = np.flatnonzero((ikeys >> np.uint64(64 - bits)) == bucket)
            if rows.size:
                prior_batches.append((bucket, PriorKeys(ikeys[rows], ckeys[rows])))

    def answer(_, skips, duplicates):
        flags = LineFlags(skips, duplicates)
        for path, _, lines, ids, _ in current:
            table = _table(path, lines, ids)
            skipped = flags.skipped(table)
            firsts = flags.first_occurrences(table)
            for row, (line, record_id) in enumerate(zip(lines, ids)):
                yield path, line, record_id, bool(skipped[row]), firsts.get(row)

    def check(actual):
        found = {(path, line): (record_id, skipped, first) for path, line, record_id, skipped, first in actual}
        assert found == expected, {k: (found.get(k), v) for k, v in expected.items() if found.get(k) != v}

    with beam.Pipeline(runner=FnApiRunner()) as p:
        checked = (p | "Keys" >> beam.Create(batches + prior_batches, reshuffle=False)) | CheckTextRecords(bits)
        out = (
            p
            | "Trigger" >> beam.Create([None])
            | beam.FlatMap(
                answer, skips=beam.pvalue.AsMultiMap(checked["skips"]), duplicates=beam.pvalue.AsMultiMap(checked["duplicates"])
            )
        )
        assert_that(out, check)


def test_duplicates_keep_the_first_occurrence_by_file_order_then_line_across_chunks():
    far = CHUNK_LINES * 3 + 5  # a later chunk of the side input
    current = [
        ("b.jsonl", 1, [1, 2, far], ["x", "y", "z"], None),
        ("a.jsonl", 0, [7, far + 1, CHUNK_LINES + 2], ["y", "x", "x"], None),
    ]
    _run_checks(
        current,
        [],
        {
            ("a.jsonl", 7): ("y", False, None),  # file order: a.jsonl (index 0) comes first
            ("b.jsonl", 2): ("y", False, ("a.jsonl", 7)),
            ("a.jsonl", CHUNK_LINES + 2): ("x", False, None),
            ("a.jsonl", far + 1): ("x", False, ("a.jsonl", CHUNK_LINES + 2)),
            ("b.jsonl", 1): ("x", False, ("a.jsonl", CHUNK_LINES + 2)),
            ("b.jsonl", far): ("z", False, None),
        },
    )


def test_unchanged_records_are_skipped_by_bitmaps_and_changed_ones_are_not():
    lines = [1, 2, 3, CHUNK_LINES, CHUNK_LINES + 1]
    ids = ["a", "b", "c", "d", "e"]
    contents = ["ha", "hb", "hc", "hd", "he"]
    prior = [(["a", "b", "d", "zzz"], ["ha", "CHANGED", "hd", "hz"]), (["e"], ["he"])]
    skipped = [True, False, False, True, True]  # b changed, c is new
    _run_checks(
        [("t.jsonl", 0, lines, ids, contents)],
        prior,
        {("t.jsonl", line): (i, skip, None) for line, i, skip in zip(lines, ids, skipped)},
    )


def test_image_refs_travel_with_the_earlier_keys_of_their_id(tmp_path):
    import pyarrow.parquet as pq

    earlier = tmp_path / "part-0.parquet"
    pq.write_table(
        pa.table(
            {"id": ["a", "b", "b"], "content_sha256": ["ca", "cb1", "cb2"], "model_sha256": [MODEL] * 3, "embedding": [[0.0]] * 3}
        ),
        earlier,
    )
    refs = [ImageRef("a", "/x/a.png"), ImageRef("b", "/x/b.png"), ImageRef("c", "/x/c.png")]
    expected = [
        (refs[0], (int(content_keys(["ca"], MODEL)[0]),)),
        (refs[1], tuple(sorted(int(k) for k in content_keys(["cb1", "cb2"], MODEL)))),
        (refs[2], ()),
    ]
    with beam.Pipeline(runner=FnApiRunner()) as p:
        joined = p | beam.Create(refs) | AttachPriorKeys([str(earlier)], bits=2)
        assert_that(joined | beam.Map(lambda pair: (pair[0], tuple(sorted(pair[1])))), equal_to(expected))
    # the reader takes only the key columns, a batch at a time
    slices = list(prior_key_batches(str(earlier), bits=1, batch_rows=2))
    assert sum(len(s[1].ikeys) for s in slices) == 3


# ---- the Dataflow job, built offline -----------------------------------------------------------

# Side inputs may come only from these steps: each is exceptional or compact, never 16+ bytes a record.
ALLOWED_SIDE_INPUT_PRODUCERS = {
    "Text/CheckTextRecords/": "text duplicates (later occurrences only) and per-chunk skip bitmaps (1 bit a line)",
    "Images/FindDuplicateImageIds/": "image ids that occur more than once, with their first occurrence",
    "Text/WriteTextEmbeddings/": "the sink's temp folder and file names (one per output file)",
    "Images/WriteImageEmbeddings/": "the sink's temp folder and file names",
    "Text/WriteCarriedText/": "carry-over's own sink (text/carried-*): its temp folder and file names",
    "Images/WriteCarriedImages/": "carry-over's own sink (image/carried-*): its temp folder and file names",
    "WriteErrors/": "the sink's temp folder and file names",
    "SumCounts": "a few counters",
    "TopErrorReasons/": "one dict of error kinds (modality, stage, type): bounded by the kinds, not the records",
    "AllOutputFiles": "output file names",
    "Unaccounted": "at most 5 lines naming text files whose lines do not reconcile (issue 19)",
}
MULTIMAP_ONLY = ("Text/CheckTextRecords/",)  # fetched lazily per (file, chunk): never all at once
# Combines allowed: keyed ones whose keys spread over the shuffle (a file path each), and the counters.
# TopErrorReasons: a global combine whose accumulator holds one entry per error kind, never per record.
# Text/LinesPerFile: the line tallies keyed by file path (one small tuple per range read).
ALLOWED_COMBINES = ("SumCounts", "DedupTextFiles/", "DedupImageFiles/", "TopErrorReasons/", "Text/LinesPerFile")


def _producers(pipeline_proto) -> dict:
    """PCollection id -> the unique name of the leaf transform that produces it."""
    produced = {}
    for transform in pipeline_proto.components.transforms.values():
        if transform.subtransforms:
            continue
        for pcoll in transform.outputs.values():
            produced[pcoll] = transform.unique_name
    return produced


@pytest.fixture(scope="module", params=["images", "carry-over"])
def incremental_job(request, tmp_path_factory, gcs_emulator, tiny_text_model, tiny_image_model):
    """The job with text, images (glob and manifest), the duplicate check and --incremental-from,
    built for Dataflow with --template_location (nothing leaves the machine); and the same job with
    --carry-over, whose copy of earlier rows must add no side input either."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.portability.api import beam_runner_api_pb2
    from test_dataflow import _dataflow_flags, _read, _run_in_project_root, _upload_inputs

    from transforms.io import fileio
    from transforms.records import embedding_schema

    job = "embed-scaling" if request.param == "images" else "embed-carry"
    _upload_inputs(gcs_emulator, job, tmp_path_factory.mktemp("scaling") / "in")
    text_model = gcs_emulator.upload(tiny_text_model, "models", "scale-text.keras")
    image_model = gcs_emulator.upload(tiny_image_model, "models", "scale-image.keras")
    earlier = gcs_emulator.url(job, "earlier")
    manifest = {"status": "complete", "files": {"text": ["text/part-0.parquet"], "image": ["image/part-0.parquet"]}}
    for modality, files in manifest["files"].items():  # the launch checks that an earlier run's files exist
        sink = pa.BufferOutputStream()
        pq.write_table(embedding_schema(modality, 8, provenance=True).empty_table(), sink)
        with FileSystems.create(fileio.join(earlier, files[0])) as handle:
            handle.write(sink.getvalue().to_pybytes())
    with FileSystems.create(fileio.join(earlier, "_MANIFEST.json")) as handle:
        handle.write(json.dumps(manifest).encode())
    location = gcs_emulator.url(job, "template", "embed.json")
    modality = [
        "--image-input",
        gcs_emulator.url(job, "in", "*.png"),
        "--image-input",
        gcs_emulator.url(job, "in", "images.csv"),
        "--image-model",
        image_model,
    ]
    if request.param == "carry-over":
        modality.append("--carry-over")
    argv = _dataflow_flags(gcs_emulator, job) + [
        "--output",
        gcs_emulator.url(job, "out"),
        "--text-input",
        gcs_emulator.url(job, "in", "*.jsonl"),
        "--text-model",
        text_model,
        "--incremental-from",
        earlier,
        *modality,
        "--sdk_container_image",
        "europe-docker.pkg.dev/p/beam/embeddings:0.1.0",
        "--sdk_location",
        "container",
        "--template_location",
        location,
    ]
    assert _run_in_project_root(argv) == {}
    options = json.loads(_read(location))["environment"]["sdkPipelineOptions"]["options"]
    return beam_runner_api_pb2.Pipeline.FromString(_read(options["pipelineUrl"]))


@pytest.mark.gcs
def test_dataflow_job_side_inputs_carry_no_per_record_data(request, incremental_job):
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2

    produced = _producers(incremental_job)
    seen = {}
    for transform in incremental_job.components.transforms.values():
        if transform.spec.urn != common_urns.primitives.PAR_DO.urn:
            continue
        payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
        for tag, side in payload.side_inputs.items():
            producer = produced[transform.inputs[tag]]
            allowed = [prefix for prefix in ALLOWED_SIDE_INPUT_PRODUCERS if producer.startswith(prefix)]
            assert allowed, f"{transform.unique_name} takes a side input from {producer}: not an allowed small PCollection"
            if allowed[0] in MULTIMAP_ONLY:
                assert side.access_pattern.urn == common_urns.side_inputs.MULTIMAP.urn, (transform.unique_name, producer)
            seen[(transform.unique_name, producer)] = side.access_pattern.urn
    consumers = {name for name, _ in seen}
    assert any(name.startswith("Text/ScreenText/") for name in consumers)  # the checks are wired, as multimaps
    text_checks = {
        p.split("/")[2] for name, p in seen if name.startswith("Text/ScreenText/") and p.startswith("Text/CheckTextRecords/")
    }
    assert text_checks == {"PackDuplicates", "SkipBitmaps"}  # duplicates (packed) and skips, both multimaps
    names = {t.unique_name for t in incremental_job.components.transforms.values()}
    assert {"Text/PriorTextKeys/PriorKeys", "Images/AttachPriorImageKeys/GroupRefBuckets"} <= names  # the joins are shuffles
    carry = {
        "Text/CarryTextRows/GroupCarryRowGroups",
        "Text/CarryTextRows/ReadCarriedRows",
        "Images/CarryImageRows/GroupCarryRowGroups",
        "Images/CarryImageRows/ReadCarriedRows",
    }  # carry-over: read by row group
    if request.node.callspec.params["incremental_job"] == "carry-over":
        assert carry <= names
    else:
        assert not carry & names


@pytest.mark.gcs
def test_dataflow_job_has_no_global_combine_on_record_data(incremental_job):
    from apache_beam.portability import common_urns

    combines = {common_urns.composites.COMBINE_PER_KEY.urn, common_urns.composites.COMBINE_GLOBALLY.urn}
    for transform in incremental_job.components.transforms.values():
        name = transform.unique_name
        assert "CombineGlobally" not in name, name
        if transform.spec.urn in combines:
            assert name.startswith(ALLOWED_COMBINES), f"{name}: a combine over record data"


def test_slices_of_a_bundle_are_merged_per_bucket_keeping_each_rows_file_and_line():
    from transforms.state.dedup import MergeBucketSlices
    from transforms.state.keys import CurrentKeys, key_batch_rows

    merge = MergeBucketSlices(bits=2, budget_bytes=4 * 24 * 256)  # flush at 256 rows a bucket
    merge.start_bundle()
    rng = np.random.default_rng(0)
    sent, out = [], []
    for k in range(40):  # 40 batches of 30 records from three files
        path = f"f{k % 3}.jsonl"
        ids = [f"id-{k}-{i}" for i in range(30)]
        lines = np.arange(k * 30, k * 30 + 30) + (1 << 33) * (k == 7)  # one batch with lines past 2^32
        ikeys = id_hashes(ids)
        ckeys = rng.integers(0, 2**63, 30, dtype=np.int64).astype(np.uint64)
        for bucket, part in text_key_batch(path, k % 3, lines, ikeys, ckeys, bits=2):
            _, _, _, part_lines, part_ikeys, part_ckeys = key_batch_rows(part)
            sent += [(bucket, path, int(line), int(i), int(c)) for line, i, c in zip(part_lines, part_ikeys, part_ckeys)]
            out += list(merge.process((bucket, part)))
    flushed_early = len(out)
    out += [w.value for w in merge.finish_bundle()]
    assert 0 < flushed_early < len(out) <= 4 * 6  # fewer, larger elements: not one per batch slice
    got = []
    for bucket, batch in out:
        assert isinstance(batch, CurrentKeys)
        paths, indexes, part_of_row, lines, ikeys, ckeys = key_batch_rows(batch)
        assert len(set(paths)) == len(paths) and indexes == [int(p[1]) for p in paths]
        got += [(bucket, paths[p], int(line), int(i), int(c)) for p, line, i, c in zip(part_of_row, lines, ikeys, ckeys)]
    assert sorted(got) == sorted(sent)


def test_content_keys_decode_hex_digests_and_hash_anything_else():
    import hashlib

    from transforms.state.keys import sha256_keys

    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(70_000)]  # more than one chunk
    keys = sha256_keys(digests)
    assert len(np.unique(keys)) == len(digests)
    assert (sha256_keys(pa.array(digests).slice(5, 100)) == keys[5:105]).all()
    odd = ["XYZ", None, digests[0], "g" * 64, digests[0].upper(), digests[1]]
    odd_keys = sha256_keys(pa.array(odd))
    assert odd_keys[2] == keys[0] and odd_keys[5] == keys[1]
    assert len(set(odd_keys.tolist())) == 6  # upper case is another string, not the same digest
    # the model column of earlier runs: each distinct model once, the same as a constant
    models = pa.array(["a" * 64] * 3 + ["b" * 64] * 2)
    mixed = content_keys(pa.array(digests[:5]), models)
    assert (mixed[:3] == content_keys(pa.array(digests[:3]), "a" * 64)).all()
    assert (mixed[3:] == content_keys(pa.array(digests[3:5]), "b" * 64)).all()
    assert (mixed[3:] != content_keys(pa.array(digests[3:5]), "a" * 64)).all()


def test_scale_benchmark_report_reads_growth_per_record_and_flags_targets():
    from benchmarks.scale import format_report, growth_bytes_per_record

    def run(n, mb, seconds, cpu, skipped):
        counts = {"text": {"read": n, "embedded": n - skipped, "skipped": skipped}}
        return {"count": n, "peak_rss_mb": mb, "seconds": seconds, "cpu_seconds": cpu, "loadavg_after": 1.0, "counts": counts}

    small, large = run(1_000_000, 900.0, 100, 50, 0), run(5_000_000, 1100.0, 400, 200, 0)
    assert growth_bytes_per_record(small, large) == pytest.approx(200 * 1024 * 1024 / 4_000_000)
    assert growth_bytes_per_record(large, small) is None
    report = {
        "stamp": "T",
        "sizes": [1_000_000, 5_000_000],
        "runs": {
            "1000000": {"plain": small, "incremental": run(1_000_000, 950.0, 50, 20, 1_000_000)},
            "5000000": {"plain": large, "incremental": run(5_000_000, 1000.0, 500, 80, 5_000_000)},
        },
        "summary": {
            "plain_growth_bytes_per_record": 52.4,
            "incremental_growth_bytes_per_record": 13.1,
            "incremental_speed_vs_plain_1000000": 2.0,
            "incremental_cpu_speed_vs_plain_1000000": 2.5,
            "incremental_speed_vs_plain_5000000": 0.8,
            "incremental_cpu_speed_vs_plain_5000000": 2.5,
        },
    }
    text = format_report(report)
    assert "plain: 52.4 bytes/record (target <= 40: ABOVE TARGET)" in text
    assert "incremental: 13.1 bytes/record (target <= 40: ok)" in text
    assert "at 5,000,000: 0.80x wall (target >= 1: BELOW TARGET)" in text
