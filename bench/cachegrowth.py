"""``--mode cachegrowth``: how a night's cost grows with the score cache (issue 24).

For each cache size of ``--cache-entries`` (default 10^5, 10^6 and 10^7 entries):

1. **fill**: a synthetic cache of that many entries, in the cache's real schema and through
   its real writer (``entries_table`` + ``append_entries``), committed as a month of nights
   would: ``--nights`` nights (default 30), each night's entries in commits of at most
   ``--fill-chunk-entries`` (default 50,000: the job's ``--task-pairs``, so one commit per
   file that Spark's Delta would write per task). The entries hold the pair keys of the
   benchmark nights' hits (the pairs whose document id hashes outside ``--misses``, default
   10%), spread at random over the nights, and random 32-hex keys (what SHA-256 pair keys
   look like) for the rest. The check of hits' sample (the 256 lowest hit keys of each
   night) carries the tiny model's real scores, so the night's check passes; the other hits
   carry random scores, which no timing depends on.
2. **nights**: the job (local Spark, tiny model, top-10 to Delta, as ``bench/nightly.py``)
   on each night of ``--night-pairs`` (default 10^5 and 10^6 pairs) whose hits fit in the
   cache; the misses are scored for real and committed, then the cache is restored to its
   filled version (``DeltaTable.restore``) for the next night. Reported per night: the
   summary's ``cache_lookup_seconds`` (the lookup and its count, as the score step runs
   it), wall and stage seconds, hits and misses, the cache's files and commits, and the
   peak RSS of the driver (this Python process), the JVM (local mode: Spark's driver and
   executor) and the Python workers (``bench.scaling.TreeSampler``).
3. **compare** (the largest cache only): the lookup alone (``score_cache.lookup(...)
   .counted``, on the kept pairs the job's own read and join steps give) of each night's
   pairs against the same entries written in ONE commit, written over the nights
   (``nights``), and that cache after ``cache_compact`` (``compacted``); with ``--sorted``
   also after compacting with the rows sorted by pair key (``sorted``: what a layout for
   min/max skipping would be). Repeats interleaved (``--lookup-repeats``), every other one
   in reverse order.
4. **pace**: the in-process ``Scorer`` (job defaults, ``torch`` threads = the master's
   cores) on the first misses of the largest night, tiny model and the CPU benchmark's
   ``quick`` model (~30x slower): the seconds the night's misses would cost at the scorer's
   own pace, which the issue's goal compares the lookup with.

``--workdir`` keeps the models, inputs and filled caches between invocations, so the sizes
can be measured in separate invocations (``--parts`` picks what runs).

Example:
    python bench/run.py --mode cachegrowth --cache-entries 100000,1000000 --night-pairs 100000,1000000
    python bench/run.py --mode cachegrowth --cache-entries 10000000 --parts nights --workdir /tmp/cachegrowth
    python bench/run.py --mode cachegrowth --cache-entries 10000000 --parts compare,pace --workdir /tmp/cachegrowth
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import io
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import MIB, SHAPES, cores, finish_cpu_args, job_config, load_average, new_report, print_header

MODES = ("cachegrowth",)
PARTS = ("fill", "nights", "compare", "pace")
T0 = dt.datetime(2026, 11, 1, 2, 0, tzinfo=dt.timezone.utc)
HEX = b"0123456789abcdef"


# -- the nights' pairs -----------------------------------------------------------------------


def missed(doc_id: str, share: float) -> bool:
    """A pair is a miss when its document id hashes into ``share``: the same pairs miss in
    every night that holds them (a smaller night's pairs are a larger one's first rows)."""
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def night_pairs(paths: dict[str, str], *, char_cap: int, share: float) -> Any:
    """The night's pairs with their pair keys (Python's twin of the Spark expressions) and
    whether each misses: ``pair_key, query_id, doc_id, query, text, miss``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dear_udf.cache import keys

    queries = pq.read_table(paths["queries"]).to_pydict()
    query_hash = {q: keys.query_hash(text, char_cap=char_cap) for q, text in zip(queries["query_id"], queries["query"])}
    query_text = dict(zip(queries["query_id"], queries["query"]))
    corpus = pq.read_table(paths["corpus"]).to_pydict()
    candidates = pq.read_table(paths["candidates"], columns=["query_id", "doc_id"]).to_pydict()
    # bench.scaling.write_inputs writes corpus and candidates row for row.
    assert corpus["doc_id"] == candidates["doc_id"]
    keys_ = [keys.combine(query_hash[q], keys.doc_hash(title, text, char_cap=char_cap))
             for q, title, text in zip(candidates["query_id"], corpus["title"], corpus["text"])]
    return pa.table({
        "pair_key": keys_,
        "query_id": candidates["query_id"],
        "doc_id": candidates["doc_id"],
        "query": [query_text[q] for q in candidates["query_id"]],
        "title": corpus["title"],
        "text": corpus["text"],
        "miss": [missed(d, share) for d in candidates["doc_id"]],
    })


def check_sample_scores(pairs: Any, hit_keys: set[str], *, spec: Any, layout: Any, char_cap: int) -> Any:
    """Real scores (score, pooling flags, computed key) of the given hit pairs: the pairs the
    night's check of hits scores again (``cache.check.HIT_CHECK_PAIRS`` lowest hit keys)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from dear_udf.model import load_model
    from dear_udf.scorer import Scorer

    rows = pairs.filter(pc.is_in(pairs.column("pair_key"), value_set=pa.array(sorted(hit_keys), pa.string())))
    scorer = Scorer(load_model(spec), layout=layout)
    cut = [[t[:char_cap] for t in rows.column(c).to_pylist()] for c in ("query", "title", "text")]
    encoded = scorer.encoder.encode(*cut)
    scores = scorer.score_encoded(encoded)
    return pa.table({
        "pair_key": rows.column("pair_key"),
        "query_id": rows.column("query_id"),
        "doc_id": rows.column("doc_id"),
        "score": pa.array(scores, pa.float32()),
        "pooled_early": encoded.pooled_early,
        "pooled_in_query": encoded.pooled_in_query,
        "computed_key": encoded.computed_keys,
    })


# -- filling a cache -------------------------------------------------------------------------


def random_hex(rng: Any, n: int, chars: int = 32) -> Any:
    """``n`` random lowercase hex strings of ``chars`` characters, built in numpy."""
    import numpy as np
    import pyarrow as pa

    raw = rng.integers(0, 256, size=(n, chars // 2), dtype=np.uint8)
    table = np.frombuffer(HEX, dtype=np.uint8)
    out = np.empty((n, chars), dtype=np.uint8)
    out[:, 0::2], out[:, 1::2] = table[raw >> 4], table[raw & 15]
    offsets = np.arange(0, (n + 1) * chars, chars, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(out.tobytes()))


def _filler(rng: Any, first: int, n: int) -> Any:
    """``n`` entries of pairs no benchmark night holds: random keys, ids like the nights'."""
    import pyarrow as pa

    return pa.table({
        "pair_key": random_hex(rng, n),
        "query_id": pa.array([f"o{(first + i) // 100:07d}" for i in range(n)], pa.string()),
        "doc_id": pa.array([f"o{(first + i) // 100:07d}-d{(first + i) % 100:03d}" for i in range(n)], pa.string()),
        "score": pa.array(rng.normal(0.0, 1.0, n).astype("float32")),
        "pooled_early": pa.array([False] * n),
        "pooled_in_query": pa.array([False] * n),
        "computed_key": random_hex(rng, n),
    })


def _hit_rows(rng: Any, hits: Any, sample: Any) -> Any:
    """The hit entries: random scores and computed keys, the check sample's real ones."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = hits.num_rows
    real = pc.is_in(hits.column("pair_key"), value_set=sample.column("pair_key"))
    rows = pa.table({
        "pair_key": hits.column("pair_key"),
        "query_id": hits.column("query_id"),
        "doc_id": hits.column("doc_id"),
        "score": pa.array(rng.normal(0.0, 1.0, n).astype("float32")),
        "pooled_early": pa.array([False] * n),
        "pooled_in_query": pa.array([False] * n),
        "computed_key": random_hex(rng, n),
    }).filter(pc.invert(real))
    return pa.concat_tables([rows, sample.select(rows.column_names).cast(rows.schema)])


def fill_plan(entries: int, nights: int, chunk_entries: int) -> list[tuple[int, int, int]]:
    """(night, first, last) position ranges of the commits: each night ``entries / nights``
    entries, in commits of at most ``chunk_entries``."""
    plan = []
    for night in range(nights):
        first, last = entries * night // nights, entries * (night + 1) // nights
        for start in range(first, last, chunk_entries):
            plan.append((night, start, min(last, start + chunk_entries)))
    return plan


def fill_cache(uri: str, *, entries: int, hits: Any, nights: int, chunk_entries: int, scorer_key: str,
               scorers: dict[str, str], seed: int, one_commit: bool = False) -> dict[str, Any]:
    """Fill a new cache with ``entries`` entries, ``hits`` (rows of cache columns) among
    them at random positions; over ``nights`` nights of commits, or in ``one_commit``."""
    import numpy as np
    import pyarrow as pa

    from dear_udf.cache import append_entries, entries_table

    if hits.num_rows > entries:
        raise ValueError(f"{hits.num_rows} hits do not fit in a cache of {entries} entries.")
    rng = np.random.default_rng(seed)
    hits = hits.take(rng.permutation(hits.num_rows))
    where = np.sort(rng.choice(entries, hits.num_rows, replace=False))
    start = time.perf_counter()
    plan = fill_plan(entries, nights, chunk_entries)
    parts = []
    for night, first, last in plan:
        lo, hi = np.searchsorted(where, [first, last])
        chunk = pa.concat_tables([hits.slice(lo, hi - lo), _filler(rng, first, (last - first) - (hi - lo))])
        if one_commit:
            # Rows built per chunk (one table of 10^7 rows overflows the 2 GiB of a string
            # column in the scorer JSON's take), committed as ONE append below.
            parts.append(entries_table(chunk, run_id="fill-one-commit", scorer_key=scorer_key, scorers=scorers, scored_at=T0))
            continue
        append_entries(uri, entries_table(chunk, run_id=f"fill-{night + 1:02d}", scorer_key=scorer_key, scorers=scorers,
                                          scored_at=T0 + dt.timedelta(days=night)))
    if one_commit:
        append_entries(uri, pa.concat_tables(parts))
    return {"seconds": round(time.perf_counter() - start, 1), "commits": 1 if one_commit else len(plan), **cache_shape(uri)}


def cache_shape(uri: str) -> dict[str, Any]:
    """The cache's entries, files, bytes and version, from its Delta log."""
    from dear_udf.cache import cache_stats

    stats = cache_stats(uri)
    return {"entries": stats["entries"], "files": sum(r["files"] for r in stats["scorer_keys"]),
            "table_mib": round(stats["table_bytes"] / MIB, 1), "version": stats["version"]}


# -- the runs --------------------------------------------------------------------------------


class Bench:
    """What the parts share: the arguments, the working folder, the session, the sampler."""

    def __init__(self, args: argparse.Namespace, work: Path, sampler: Any):
        self.args, self.work, self.sampler = args, work, sampler
        self.spark: Any = None

    def model(self, shape: str) -> Path:
        from dear_udf.testing import build_tiny_dear

        path = self.work / f"model-{shape}"
        if not (path / "config.json").exists():
            build_tiny_dear(path, pooling="index227", seed=0, **SHAPES[shape])
        return path

    def inputs(self, pairs: int) -> dict[str, str]:
        from transformers import AutoTokenizer

        from bench.scaling import write_inputs

        folder = self.work / f"inputs-{pairs}-seed{self.args.seed}"
        done = folder / "done.json"
        if not done.exists():
            tokenizer = AutoTokenizer.from_pretrained(str(self.model("tiny")))
            paths = write_inputs(folder, pairs=pairs, docs_per_query=self.args.docs_per_query, seed=self.args.seed, tokenizer=tokenizer)
            done.write_text(json.dumps(paths))
        return json.loads(done.read_text())

    def session(self) -> Any:
        from dear_udf.spark.session import get_session

        if self.spark is None:
            n = cores(self.args.spark_master)
            conf = {"spark.sql.shuffle.partitions": str(n), "spark.driver.memory": self.driver_memory()}
            self.spark = get_session(master=self.args.spark_master, conf=conf, arrow_batch_size=10000)
        return self.spark

    def driver_memory(self) -> str:
        """``--driver-memory``, else the local profile's (``dear_udf/conf/local.yaml``): in
        local mode the one JVM's heap, which holds the driver and the executor. Spark's own
        default, 1 GiB, runs out of heap on a night of 10^6 pairs with a cache."""
        if self.args.driver_memory:
            return self.args.driver_memory
        import yaml

        import dear_udf

        profile = yaml.safe_load((Path(dear_udf.__file__).parent / "conf" / "local.yaml").read_text())
        return profile["spark_conf"]["spark.driver.memory"]

    def config(self, pairs: int, cache: Path | None, run_id: str) -> Any:
        return job_config(self.inputs(pairs), self.model("tiny"), self.work / f"out-{run_id}", master=self.args.spark_master,
                          depth=self.args.docs_per_query, run_id=run_id, where="bench cachegrowth",
                          cache=str(cache) if cache is not None else None)

    def target(self) -> Any:
        """The run's facts the fill needs: the scorer key the job looks up, what it hashes,
        the character cap, the model spec and layout (``steps.start``, as the job does)."""
        from dear_udf.spark import steps

        if not hasattr(self, "_target"):
            run = steps.start(self.config(min(self.night_sizes()), None, "facts"), self.session())
            self._target = run
        return self._target

    def night_sizes(self) -> list[int]:
        return sorted(int(s) for s in self.args.night_pairs.split(","))

    def compare_sizes(self) -> list[int]:
        """The nights whose lookup ``compare`` times (default: every night of ``--night-pairs``)."""
        given = self.args.compare_pairs
        return self.night_sizes() if not given else sorted(int(s) for s in given.split(","))

    def pairs(self, size: int) -> Any:
        cache = getattr(self, "_pairs", {})
        self._pairs = cache
        if size not in cache:
            cache[size] = night_pairs(self.inputs(size), char_cap=self.target().info.char_cap, share=self.args.misses)
        return cache[size]

    def hits_for(self, entries: int) -> tuple[list[int], Any]:
        """The nights that fit in a cache of ``entries`` entries, and the hit entries to fill
        (the largest fitting night's hits; a smaller night's are among them)."""
        import pyarrow.compute as pc

        fitting, hits = [], None
        for size in self.night_sizes():
            pairs = self.pairs(size)
            night_hits = pairs.filter(pc.invert(pairs.column("miss")))
            if night_hits.num_rows <= entries:
                fitting.append(size)
                hits = night_hits
        if hits is None:
            return [], None
        sample = self.sample(fitting)
        import numpy as np

        return fitting, _hit_rows(np.random.default_rng(self.args.seed + 1), hits, sample)

    def hits_count(self, size: int) -> int:
        """The hits of the night of ``size`` pairs: its pairs that do not miss."""
        import pyarrow.compute as pc

        return self.pairs(size).num_rows - pc.sum(self.pairs(size).column("miss")).as_py()

    def sample(self, sizes: list[int]) -> Any:
        """The check of hits' sample of each night, scored for real (once per workdir)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from dear_udf.cache.check import HIT_CHECK_PAIRS

        path = self.work / f"check-sample-{'-'.join(map(str, sizes))}-miss{self.args.misses}.parquet"
        if path.exists():
            return pq.read_table(path)
        wanted: set[str] = set()
        for size in sizes:
            pairs = self.pairs(size)
            hit_keys = pairs.filter(pc.invert(pairs.column("miss"))).column("pair_key").to_pylist()
            wanted.update(sorted(hit_keys)[:HIT_CHECK_PAIRS])
        run = self.target()
        table = check_sample_scores(self.pairs(sizes[-1]), wanted, spec=run.config.model, layout=run.config.layout, char_cap=run.info.char_cap)
        pq.write_table(table, path)
        return table

    def cache(self, entries: int, *, one_commit: bool = False) -> tuple[Path, dict[str, Any], list[int]]:
        """A filled cache of ``entries`` (made once per workdir), its fill record and the
        nights that fit in it."""
        a = self.args
        label = "one-commit" if one_commit else f"nights{a.nights}-chunk{a.fill_chunk_entries}"
        path = self.work / f"cache-{entries}-{label}-miss{a.misses}-seed{a.seed}"
        record = path.parent / (path.name + ".json")
        if record.exists():
            # The nights' hit counts are kept with the cache: a later invocation needs not
            # compute the pairs' keys again to know which nights fit.
            kept = json.loads(record.read_text()).get("night_hits", {})
            if all(str(size) in kept for size in self.night_sizes()):
                return path, json.loads(record.read_text()), [s for s in self.night_sizes() if kept[str(s)] <= entries]
        fitting, hits = self.hits_for(entries)
        if not record.exists():
            if path.exists():
                shutil.rmtree(path)
            run = self.target()
            scorers = {run.cache.scorer_key: json.dumps(run.cache.fields, sort_keys=True)}
            print(f"  fill {entries} entries ({label}) ...", flush=True)
            with self.sampler.window() as w:
                filled = fill_cache(str(path), entries=entries, hits=hits, nights=a.nights, chunk_entries=a.fill_chunk_entries,
                                    scorer_key=run.cache.scorer_key, scorers=scorers, seed=a.seed, one_commit=one_commit)
            filled["driver_peak_rss_mib"] = round(w.peak["driver"] / MIB, 1)
            filled["night_hits"] = {str(size): self.hits_count(size) for size in self.night_sizes()}
            record.write_text(json.dumps(filled))
            print(f"  fill {entries} entries ({label}): {filled}", flush=True)
        return path, json.loads(record.read_text()), fitting

    def warm_up(self) -> None:
        """A small night without a cache first, so every timed night finds started Python
        workers with the model loaded (as ``bench/nightly.py`` does)."""
        from dear_udf.spark.job import run_job

        if getattr(self, "_warm", False):
            return
        print("  warm-up night of 1000 pairs ...", flush=True)
        with contextlib.redirect_stdout(io.StringIO()):
            run_job(self.config(1000, None, "warm-up"), spark=self.session())
        shutil.rmtree(self.work / "out-warm-up", ignore_errors=True)
        self._warm = True

    def night(self, pairs: int, cache: Path) -> dict[str, Any]:
        """The job on one night against ``cache``; the cache is restored afterwards."""
        from deltalake import DeltaTable

        from dear_udf.spark.job import run_job

        self.warm_up()
        version = DeltaTable(str(cache)).version()
        run_id = f"night-{pairs}"
        print(f"  night of {pairs} pairs against {cache.name}: running ...", flush=True)
        try:
            with self.sampler.window() as w, contextlib.redirect_stdout(io.StringIO()):
                summary = run_job(self.config(pairs, cache, run_id), spark=self.session())
        finally:
            if DeltaTable(str(cache)).version() != version:  # the night committed its misses
                DeltaTable(str(cache)).restore(version)
            shutil.rmtree(self.work / f"out-{run_id}", ignore_errors=True)
        record = {
            "pairs": pairs,
            "cache_lookup_seconds": summary.cache_lookup_seconds,
            "wall_seconds": summary.wall_seconds,
            "stage_seconds": summary.stage_seconds,
            "cache_hits": summary.cache_hits,
            "cache_misses": summary.cache_misses,
            "pairs_scored": summary.pairs_scored,
            "chunks": summary.chunks,
            "score_stage_pairs_per_s": summary.pairs_per_second,
            "hit_check": summary.hit_check,
            "peak_rss_mib": {k: round(v / MIB, 1) for k, v in w.peak.items()},
            "load_average": [w.load_start, w.load_end],
            "other_processes_cpu_seconds": w.other_cpu_seconds,
        }
        print(f"  night of {pairs} pairs: lookup {record['cache_lookup_seconds']:.1f} s, wall {record['wall_seconds']:.1f} s, "
              f"hits {record['cache_hits']}, misses {record['cache_misses']}, peaks {record['peak_rss_mib']}, "
              f"load {w.load_start} -> {w.load_end}", flush=True)
        return record

    def lookups(self, pairs: int, variants: dict[str, Path], repeats: int) -> dict[str, Any]:
        """The lookup alone, as the score step runs it, on the kept pairs of the job's own
        read and join steps; each variant ``repeats`` times, interleaved."""
        from pyspark import StorageLevel

        from dear_udf.spark import score_step, steps
        from dear_udf.spark.score_cache import lookup

        run = steps.start(self.config(pairs, None, f"lookup-{pairs}"), self.session())
        out: dict[str, Any] = {label: {"seconds": [], "peak_rss_mib": []} for label in variants}
        try:
            inputs, read = steps.read_inputs(run)
            status, _ = steps.join(run, inputs, read)
            kept = score_step.keyed_pairs(status, char_cap=run.info.char_cap)
            for repeat in range(repeats):
                # Every other repeat in reverse order: the first lookup of a session also
                # warms the JVM, which must not always count against the same layout.
                order = list(variants.items()) if repeat % 2 == 0 else list(variants.items())[::-1]
                for label, uri in order:
                    held: list[Any] = []

                    def persist(df: Any) -> Any:
                        df = df.persist(StorageLevel.MEMORY_AND_DISK)
                        held.append(df)
                        return df

                    with self.sampler.window() as w:
                        start = time.perf_counter()
                        split = lookup(kept, uri=str(uri), scorer_key=run.cache.scorer_key, spark_delta=False).counted(persist)
                        seconds = time.perf_counter() - start
                    for df in held:
                        df.unpersist(blocking=True)
                    out[label]["seconds"].append(round(seconds, 2))
                    out[label]["peak_rss_mib"].append({k: round(v / MIB, 1) for k, v in w.peak.items()})
                    out[label]["hits"], out[label]["misses"] = split.hit_count, split.miss_count
                    print(f"  lookup of {pairs} pairs against {label} ({repeat + 1}/{repeats}): {seconds:.1f} s, "
                          f"hits {split.hit_count}, load {w.load_start} -> {w.load_end}", flush=True)
        finally:
            run.release()
            shutil.rmtree(self.work / f"out-lookup-{pairs}", ignore_errors=True)
        for record in out.values():
            record["median_seconds"] = statistics.median(record["seconds"])
        return out

    def pace(self, size: int, shape: str, pairs: int) -> dict[str, Any]:
        """The in-process scorer's pairs/s on the first ``pairs`` misses of the night."""
        import torch

        from dear_udf.model import ModelSpec, load_model
        from dear_udf.scorer import Scorer

        night = self.pairs(size)
        misses = night.filter(night.column("miss")).slice(0, pairs)
        cap = self.target().info.char_cap
        cut = [[t[:cap] for t in misses.column(c).to_pylist()] for c in ("query", "title", "text")]
        threads = cores(self.args.spark_master)
        torch.set_num_threads(threads)
        loaded = load_model(ModelSpec(model=str(self.model(shape)), dtype="float32", device="cpu", local_files_only=True))
        scorer = Scorer(loaded, layout=self.target().config.layout)
        scorer.score(*[c[:256] for c in cut])  # first-call costs
        start, cpu = time.perf_counter(), time.process_time()
        scorer.score(*cut)
        seconds = time.perf_counter() - start
        record = {"model": shape, "pairs": len(cut[0]), "seconds": round(seconds, 2), "pairs_per_s": round(len(cut[0]) / seconds, 1),
                  "cpu_seconds": round(time.process_time() - cpu, 2), "torch_threads": threads, "load_average_end": load_average()}
        print(f"  pace, {shape} model: {record['pairs_per_s']} pairs/s on {threads} threads", flush=True)
        return record


def run_growth(args: argparse.Namespace) -> dict[str, Any]:
    from bench.scaling import TreeSampler

    parts = set(args.parts.split(","))
    sizes = sorted(int(s) for s in args.cache_entries.split(","))
    out: dict[str, Any] = {"settings": {k: getattr(args, k) for k in ("cache_entries", "night_pairs", "nights", "fill_chunk_entries",
                                                                          "misses", "lookup_repeats", "compare_pairs", "sorted", "parts", "spark_master", "driver_memory")},
                           "caches": {}}
    with contextlib.ExitStack() as stack:
        if args.workdir:
            work = Path(args.workdir)
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dear-cachegrowth-")))
        sampler = stack.enter_context(TreeSampler(0.2))
        bench = Bench(args, work, sampler)
        out["settings"]["driver_memory"] = bench.driver_memory()
        try:
            for entries in sizes:
                record: dict[str, Any] = {}
                if "fill" in parts and "nights" not in parts:
                    path, filled, fitting = bench.cache(entries)
                    record["fill"] = filled
                if "nights" in parts:
                    path, filled, fitting = bench.cache(entries)
                    record["fill"] = filled
                    record["nights"] = {str(p): bench.night(p, path) for p in fitting}
                    record["nights_not_possible"] = [p for p in bench.night_sizes() if p not in fitting]
                out["caches"][str(entries)] = record
            if "compare" in parts:
                out["compare"] = compare(bench, sizes[-1])
            if "pace" in parts:
                size = bench.night_sizes()[-1]
                out["pace"] = {shape: bench.pace(size, shape, n) for shape, n in (("tiny", args.pace_pairs_tiny), ("quick", args.pace_pairs_quick))}
        finally:
            if bench.spark is not None:
                bench.spark.stop()
    return out


def compare(bench: Bench, entries: int) -> dict[str, Any]:
    """The lookup against one set of entries in four layouts (see the module docstring)."""
    from dear_udf.cache import cache_compact

    nights, filled, fitting = bench.cache(entries)
    one, one_filled, _ = bench.cache(entries, one_commit=True)
    variants = {"one commit": one, "nights": nights}
    shapes = {"one commit": one_filled, "nights": filled}
    compacted = bench.work / (nights.name + "-compacted")
    if not compacted.exists():
        shutil.copytree(nights, compacted)
        print(f"  compact {compacted.name} ...", flush=True)
        with bench.sampler.window() as w:
            start = time.perf_counter()
            result = cache_compact(str(compacted))
            seconds = time.perf_counter() - start
        result = {**result, "seconds": round(seconds, 1), "driver_peak_rss_mib": round(w.peak["driver"] / MIB, 1)}
        (compacted.parent / (compacted.name + ".json")).write_text(json.dumps(result))
    variants["compacted"] = compacted
    shapes["compacted"] = {**cache_shape(str(compacted)), "compaction": json.loads((compacted.parent / (compacted.name + ".json")).read_text())}
    if bench.args.sorted:
        ordered = bench.work / (nights.name + "-sorted")
        if not ordered.exists():
            shutil.copytree(nights, ordered)
            print(f"  z-order {ordered.name} by pair_key ...", flush=True)
            from deltalake import DeltaTable

            start = time.perf_counter()
            metrics = DeltaTable(str(ordered)).optimize.z_order(["pair_key"])
            (ordered.parent / (ordered.name + ".json")).write_text(json.dumps({"seconds": round(time.perf_counter() - start, 1),
                                                                               "files_added": metrics.get("numFilesAdded"),
                                                                               "files_removed": metrics.get("numFilesRemoved")}))
        variants["sorted"] = ordered
        shapes["sorted"] = {**cache_shape(str(ordered)), "z_order": json.loads((ordered.parent / (ordered.name + ".json")).read_text())}
    return {"entries": entries, "caches": shapes,
            "lookups": {str(p): bench.lookups(p, variants, bench.args.lookup_repeats) for p in fitting
                        if p in bench.compare_sizes() and bench.args.lookup_repeats > 0}}


# -- the report ------------------------------------------------------------------------------


def analyse(growth: dict[str, Any]) -> dict[str, Any]:
    """How the lookup grows with entries and pairs; the issue's two goals where measured."""
    from bench.scaling import linear_fit

    out: dict[str, Any] = {"lookup_by_pairs": {}}
    by_pairs: dict[str, list[tuple[int, float]]] = {}
    for entries, record in growth["caches"].items():
        for pairs, night in record.get("nights", {}).items():
            by_pairs.setdefault(pairs, []).append((int(entries), night["cache_lookup_seconds"]))
    for pairs, points in by_pairs.items():
        fit = linear_fit([float(e) for e, _ in points], [s for _, s in points])
        out["lookup_by_pairs"][pairs] = {"points": points, "seconds_per_million_entries": None if fit["slope"] is None else round(fit["slope"] * 1e6, 3),
                                         "fixed_seconds": None if fit["intercept"] is None else round(fit["intercept"], 2)}
    pace = growth.get("pace")
    largest = max((int(e) for e in growth["caches"]), default=None)
    night = growth["caches"].get(str(largest), {}).get("nights", {}) if largest else {}
    if pace and night:
        pairs = max(night, key=int)
        lookup = night[pairs]["cache_lookup_seconds"]
        misses = night[pairs]["cache_misses"]
        out["goal_lookup_vs_scoring"] = {
            "entries": largest, "pairs": int(pairs), "misses": misses, "lookup_seconds": lookup,
            **{f"scoring_seconds_{m}": round(misses / pace[m]["pairs_per_s"], 1) for m in pace},
            **{f"met_{m}": lookup < misses / pace[m]["pairs_per_s"] for m in pace},
        }
    compared = growth.get("compare")
    if compared:
        out["goal_compacted_vs_one_commit"] = {
            pairs: {"one_commit": r["one commit"]["median_seconds"], "compacted": r["compacted"]["median_seconds"],
                    "nights": r["nights"]["median_seconds"], "compacted_over_one_commit": round(r["compacted"]["median_seconds"] / r["one commit"]["median_seconds"], 3)}
            for pairs, r in compared["lookups"].items()
        }
    return out


def print_growth(report: dict[str, Any]) -> None:
    growth = report["cachegrowth"]
    print_header("cache entries | files | night pairs | lookup s | wall s | score s | hits | misses | driver MiB | JVM MiB | worker MiB")
    for entries, record in growth["caches"].items():
        for pairs, n in record.get("nights", {}).items():
            p = n["peak_rss_mib"]
            print(f"{entries} | {record['fill']['files']} | {pairs} | {n['cache_lookup_seconds']:.1f} | {n['wall_seconds']:.1f} | "
                  f"{n['stage_seconds']['score']:.1f} | {n['cache_hits']} | {n['cache_misses']} | {p['driver']:.0f} | {p['jvm']:.0f} | {p['worker']:.0f}")
        for pairs in record.get("nights_not_possible", []):
            print(f"{entries} | {record['fill']['files']} | {pairs} | - (its hits do not fit in the cache at {growth['settings']['misses']:.0%} misses)")
    if "compare" in growth:
        print()
        print_header("lookup alone | " + " | ".join(growth["compare"]["caches"]))
        for pairs, r in growth["compare"]["lookups"].items():
            print(f"{pairs} pairs | " + " | ".join(f"{v['median_seconds']:.1f} ({', '.join(map(str, v['seconds']))})" for v in r.values()))
        print("files: " + ", ".join(f"{k} {v['files']}" for k, v in growth["compare"]["caches"].items()))
    if "pace" in growth:
        print("\npace: " + ", ".join(f"{m} {p['pairs_per_s']} pairs/s" for m, p in growth["pace"].items()))
    print("\n" + json.dumps(growth["analysis"], indent=1))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cachegrowth mode (bench/cachegrowth.py)")
    group.add_argument("--cache-entries", default="100000,1000000,10000000", help="cache sizes (default: %(default)s)")
    group.add_argument("--night-pairs", default="100000,1000000", help="pairs of the nights run against each cache (default: %(default)s)")
    group.add_argument("--nights", type=int, default=30, help="nights the cache is filled over (default: %(default)s)")
    group.add_argument("--fill-chunk-entries", type=int, default=50_000, help="entries per fill commit at most (default: %(default)s)")
    group.add_argument("--misses", type=float, default=0.1, help="share of a night's pairs the cache lacks (default: %(default)s)")
    group.add_argument("--parts", default="nights,compare,pace", help=f"what runs, of {','.join(PARTS)} (default: %(default)s)")
    group.add_argument("--compare-pairs", help="the nights whose lookup compare times (default: every night of --night-pairs; "
                       "the caches are filled for --night-pairs either way)")
    group.add_argument("--lookup-repeats", type=int, default=2, help="repeats of each lookup in compare (default: %(default)s)")
    group.add_argument("--sorted", action="store_true", help="compare also a cache z-ordered by pair_key")
    group.add_argument("--pace-pairs-tiny", type=int, default=10_000, help="misses scored in-process, tiny model (default: %(default)s)")
    group.add_argument("--pace-pairs-quick", type=int, default=1_000, help="misses scored in-process, quick model (default: %(default)s)")
    group.add_argument("--driver-memory", help="the JVM's heap in local mode (default: the local profile's spark.driver.memory)")
    group.add_argument("--workdir", help="keep models, inputs and filled caches here between invocations (default: a temp folder)")


def finish_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    finish_cpu_args(args, parser, "cachegrowth-cpu")
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"--parts takes {', '.join(PARTS)}, got {sorted(unknown)}.")


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    report = new_report(args, command, "cpu")
    start = time.perf_counter()
    growth = run_growth(args)
    growth["analysis"] = analyse(growth)
    growth["bench_seconds"] = round(time.perf_counter() - start, 1)
    report["cachegrowth"] = growth
    report["machine"]["load_average_end"] = load_average()
    print_growth(report)
    return report
