"""Model file figures: load time of a large FFM file, and vocab vs hash file size.

    python benchmarks/bench_model_file.py            # 1e6 features x 39 fields x k=4 (~630 MB), 200k Criteo-like rows
    python benchmarks/bench_model_file.py --quick    # 50k features, 20k rows: a smoke run

1. Load time (median of --repeats, warm page cache: the file was just written,
   as on a server that fetched it): `load_model(mmap=True, verify=False)`
   (zero-copy: maps the file, checks the header and section bounds) and
   `load_model(verify=True)` (+ sha256 of every section and finite weights)
   against the baseline of reading the whole file into memory with
   `np.fromfile` and taking the arrays from that buffer.
3. Magnitude pruning of trained models: features, bytes and validation log
   loss before and after (LR always; FFM in the full run).
2. File size of a vocab-indexed (min_count=10) and a hash-indexed
   (hash_space=1e6) FFM on the same Criteo-shaped data (generated with
   /work/shared/bench/gen_criteo_like.py), with the encoder fitted by
   ctrops.data.features.FeatureEncoder. The weights do not change the size,
   so the models are not trained.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ctrops.artifact.format import PREAMBLE, PREAMBLE_SIZE, load_model, save_model
from ctrops.artifact.vocab import build_table
from ctrops.models.params import ModelParams

GENERATOR = Path("/work/shared/bench/gen_criteo_like.py")


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def big_ffm(n_features: int, n_fields: int, k: int, seed: int) -> tuple[ModelParams, dict, dict]:
    """Random FFM weights plus a vocabulary table of n_features - 2*n_fields keys."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n_features, n_fields, k), dtype=np.float32)
    latent *= np.float32(0.05)
    linear = rng.standard_normal(n_features, dtype=np.float32) * np.float32(0.05)
    params = ModelParams("ffm", n_features, n_fields, k, bias=-1.2, linear=linear, latent=latent)
    reserved = 2 * n_fields
    keys = np.unique(rng.integers(2, 2**63, size=n_features - reserved + 1000, dtype=np.uint64))
    keys = rng.permutation(keys)[:n_features - reserved]
    tk, tv = build_table(keys, np.arange(keys.size) + reserved)
    header = {"indexing": "vocab", "seed": 0, "hash_space": 0, "min_count": 10,
              "field_names": [f"f{i}" for i in range(n_fields)]}
    return params, header, {"vocab_keys": tk, "vocab_values": tv}


def read_fully(path: Path) -> dict[str, np.ndarray]:
    """Baseline: the whole file into memory with np.fromfile, arrays as views of that buffer."""
    buf = np.fromfile(path, dtype=np.uint8)
    header_len = PREAMBLE.unpack_from(buf)[3]
    header = json.loads(buf[PREAMBLE_SIZE:PREAMBLE_SIZE + header_len].tobytes())
    out = {}
    for sec in header["sections"]:
        count = int(np.prod(sec["shape"]))
        out[sec["name"]] = np.frombuffer(buf, dtype=sec["dtype"], count=count,
                                         offset=sec["offset"]).reshape(sec["shape"])
    return out


def bench_load(out_dir: Path, n_features: int, repeats: int) -> dict:
    params, header, arrays = big_ffm(n_features, 39, 4, seed=1)
    path = out_dir / f"ffm_{n_features}.ctm"
    t0 = time.perf_counter()
    info = save_model(path, params, header, arrays, {"purpose": "benchmark"})
    write_s = time.perf_counter() - t0
    path16 = out_dir / f"ffm_{n_features}_f16.ctm"
    info16 = save_model(path16, params, header, arrays, {"purpose": "benchmark"}, dtype="float16")
    del params, arrays

    def mmap_load():
        load_model(path, verify=False).close()

    def mmap_load_verified():
        load_model(path, verify=True).close()

    def baseline():
        read_fully(path)

    def float16_load():
        load_model(path16, verify=False).close()

    results = {"file_bytes": info.nbytes, "float16_file_bytes": info16.nbytes, "n_features": n_features,
               "write_s": write_s}
    baseline(), mmap_load(), mmap_load_verified(), float16_load()  # warm the page cache and imports equally
    for name, fn in (("fromfile_s", baseline), ("mmap_s", mmap_load), ("mmap_verified_s", mmap_load_verified),
                     ("float16_s", float16_load)):
        results[name], results[name + "_all"] = median_time(fn, repeats)
    path.unlink()
    path16.unlink()
    return results


def criteo_rows(out_dir: Path, rows: int) -> Path:
    path = out_dir / f"criteo_like_{rows}.tsv"
    if not path.exists():
        subprocess.run([sys.executable, str(GENERATOR), str(rows), str(path), "--seed", "7"], check=True,
                       stdout=subprocess.DEVNULL)
    return path


def bench_sizes(out_dir: Path, rows: int) -> dict:
    from ctrops.data.features import FeatureEncoder
    from ctrops.data.readers import iter_criteo
    from ctrops.data.spec import FieldSpec

    data = criteo_rows(out_dir, rows)
    spec = FieldSpec.criteo()
    out = {"rows": rows}
    for indexing in ("vocab", "hash"):
        encoder = FeatureEncoder(spec, indexing=indexing, min_count=10, hash_space=1_000_000, seed=0)
        encoder.fit(iter_criteo(data, spec, seed=0))
        n = int(encoder.n_features_)
        # zeros are allocated lazily; the file size depends only on the shapes
        params = ModelParams("ffm", n, spec.n_fields, 4, linear=np.zeros(n, np.float32),
                             latent=np.zeros((n, spec.n_fields, 4), np.float32))
        path = out_dir / f"criteo_{indexing}.ctm"
        info = save_model(path, params, encoder.to_header(), encoder.arrays(), {"purpose": "benchmark"})
        out[indexing] = {"n_features": n, "file_bytes": info.nbytes, "table_capacity": len(encoder.table_keys_)}
        path.unlink()
        del params
    out["vocab_over_hash"] = out["vocab"]["file_bytes"] / out["hash"]["file_bytes"]
    return out


def bench_prune(out_dir: Path, rows: int, with_ffm: bool) -> dict:
    """Validation log loss and bytes after magnitude pruning of trained models (80/20 split by row order;
    the vocabulary is fitted on all rows, the weights only on the first 80%)."""
    from ctrops.artifact.format import ModelParts
    from ctrops.artifact.prune import prune_model
    from ctrops.data.dataset import load_dataset
    from ctrops.data.features import FeatureEncoder
    from ctrops.data.spec import FieldSpec
    from ctrops.models.estimators import FFM, LogisticRegression

    encoder = FeatureEncoder(FieldSpec.criteo(), indexing="vocab", min_count=10, seed=0)
    X, _ = load_dataset(str(criteo_rows(out_dir, rows)), "criteo", encoder=encoder, rejects=False)
    cut = int(X.n_rows * 0.8)
    train, valid = X.take(slice(0, cut)), X.take(slice(cut, X.n_rows))
    models = [("lr (FTRL, l1=1e-4)", LogisticRegression(l1=1e-4), (1e-3, 1e-2, 3e-2))]
    if with_ffm:
        models.append(("ffm (k=4)", FFM(k=4, epochs=10, n_threads=2), (1e-2, 1e-1)))
    out = {}
    for name, estimator, thresholds in models:
        estimator.fit(train, valid)
        parts = ModelParts(estimator.params_, encoder.to_header(), encoder.arrays(), {})
        sweep = []
        for threshold in thresholds:
            _, rep = prune_model(parts, threshold=threshold, valid=valid)
            sweep.append({"threshold": threshold, **{k: v for k, v in rep.to_dict().items()
                                                     if k != "values_not_in_vocab"}})
        out[name] = sweep
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench-out/model_file"))
    args = parser.parse_args()
    n_features = 50_000 if args.quick else 1_000_000
    rows = 20_000 if args.quick else 200_000
    repeats = args.repeats or (3 if args.quick else 7)
    args.out.mkdir(parents=True, exist_ok=True)

    load = bench_load(args.out, n_features, repeats)
    mb = load["file_bytes"] / 1e6
    print(f"FFM file: {n_features} features x 39 fields x k=4 float32 = {mb:.1f} MB (written in "
          f"{load['write_s']:.2f} s, atomic rename, fsync)")
    print(f"  load, read fully (np.fromfile) [baseline]: {load['fromfile_s'] * 1e3:9.2f} ms (median of {repeats})")
    print(f"  load_model(mmap, verify=False):            {load['mmap_s'] * 1e3:9.2f} ms  "
          f"= {load['fromfile_s'] / load['mmap_s']:.0f}x faster than baseline")
    print(f"  load_model(mmap, verify=True):             {load['mmap_verified_s'] * 1e3:9.2f} ms  "
          f"= {load['mmap_verified_s'] / load['fromfile_s']:.2f}x baseline time "
          f"(sha256 {mb / load['mmap_verified_s']:.0f} MB/s incl. finite check)")
    print(f"  float16 file: {load['float16_file_bytes'] / 1e6:.1f} MB "
          f"({load['float16_file_bytes'] / load['file_bytes']:.2f} of float32); load_model(verify=False) with the "
          f"widening copy to float32: {load['float16_s'] * 1e3:.2f} ms = {load['float16_s'] / load['fromfile_s']:.2f}x "
          f"baseline time")

    sizes = bench_sizes(args.out, rows)
    v, h = sizes["vocab"], sizes["hash"]
    print(f"Criteo-shaped data, {rows} rows, FFM k=4, min_count=10:")
    print(f"  hash (hash_space=1e6) [baseline]: {h['n_features']:>9} features, {h['file_bytes'] / 1e6:9.1f} MB")
    print(f"  vocab:                            {v['n_features']:>9} features, {v['file_bytes'] / 1e6:9.1f} MB "
          f"= {sizes['vocab_over_hash']:.3f} of hash (target < 0.25)")
    prune = bench_prune(args.out, rows, with_ffm=not args.quick)
    print(f"Magnitude pruning (drop rows whose every weight is below the threshold), {rows} rows, "
          f"valid = last 20%:")
    for name, sweep in prune.items():
        for r in sweep:
            print(f"  {name:20s} threshold {r['threshold']:<6g}: features {r['features_before']} -> "
                  f"{r['features_after']}, file {r['bytes_before'] / 1e6:.2f} -> {r['bytes_after'] / 1e6:.2f} MB, "
                  f"valid log loss {r['valid_log_loss_before']:.5f} [baseline] -> {r['valid_log_loss_after']:.5f} "
                  f"({r['valid_log_loss_after'] / r['valid_log_loss_before']:.4f}x)")
    json.dump({"load": load, "sizes": sizes, "prune": prune}, sys.stderr)
    sys.stderr.write("\n")


if __name__ == "__main__":
    main()
