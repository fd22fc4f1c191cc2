"""NAS-Bench-201 look-ups."""

import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import SPACES, refusal, run_script, script_env

DRNAS = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
RESNET = "|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"
NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
SEEDS = (777, 888)
# Per seed, the two trials differ by +-0.5 so the mean (is_random=False) is the value.
SPREAD = (-0.5, 0.5)


def _trial(ResultsCount, arch, dataset, seed, epochs, eval_accs):
    """A real ResultsCount whose last-epoch accuracy on each eval set is `eval_accs[set]`."""
    train, losses = {e: 50.0 + e * 0.1 for e in range(epochs)}, {e: 1.0 for e in range(epochs)}
    config = dict(arch_str=arch, channel=16, num_cells=5, class_num=10)
    result = ResultsCount(dataset, None, train, losses, 0.1, 10.0, config, seed, epochs, [0.01])
    # Earlier epochs read 20 points lower: a look-up of the wrong epoch shows.
    last = epochs - 1
    accs = {f"{name}@{e}": acc if e == last else acc - 20.0 for name, acc in eval_accs.items() for e in range(epochs)}
    result.update_eval(accs, dict.fromkeys(accs, 1.0), dict.fromkeys(accs, 0.1))
    return result


def _arch_results(api, index, arch, accs, epochs, shift):
    """ArchResults of one architecture: `accs` maps dataset -> value, 2 trials each."""
    results = api.ArchResults(index, arch)
    for seed, delta in zip(SEEDS, SPREAD):
        v = {name: value + delta + shift for name, value in accs.items()}
        # Each eval set gets a distinct number so a wrong set name shows in the answer.
        sets = {"cifar10-valid": {"x-valid": v["cifar10-valid"], "ori-test": v["cifar10-valid"] - 3}}
        sets["cifar10"] = {"ori-test": v["cifar10"]}
        for name in ("cifar100", "ImageNet16-120"):
            sets[name] = {"x-valid": v[name] - 1, "x-test": v[name], "ori-test": v[name] - 2}
        for dataset, eval_accs in sets.items():
            results.update(dataset, seed, _trial(api.ResultsCount, arch, dataset, seed, epochs, eval_accs))
    return results


def build_official(path, table):
    """A tiny official-format file: `table` maps arch -> {dataset: accuracy} (200 epochs)."""
    api = pytest.importorskip("nas_201_api")
    archs, arch2infos = list(table), {}
    for index, arch in enumerate(archs):
        full = _arch_results(api, index, arch, table[arch], 200, 0.0)
        less = _arch_results(api, index, arch, table[arch], 12, -30.0)  # hp='12' reads 30 points lower
        arch2infos[index] = {"less": less.state_dict(), "full": full.state_dict()}
    torch.save({"meta_archs": archs, "arch2infos": arch2infos, "evaluated_indexes": list(range(len(archs)))}, path)
    return path


TINY = {
    DRNAS: {"cifar10-valid": 91.55, "cifar10": 94.3633, "cifar100": 73.5133, "ImageNet16-120": 46.3444},
    RESNET: {"cifar10-valid": 90.83, "cifar10": 93.97, "cifar100": 70.86, "ImageNet16-120": 43.63},
    NONE: {"cifar10-valid": 10.0, "cifar10": 10.0, "cifar100": 1.0, "ImageNet16-120": 0.8333},
}


def close(a, b, tol=1e-6):
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], abs_tol=tol) for k in a)


def test_official_file_through_nas_201_api_and_its_export_round_trip(load_space, tmp_path):
    benchmark, utils = load_space("201-space", "benchmark", "runkit.utils")
    tiny = build_official(tmp_path / "tiny.pth", TINY)
    bench = benchmark.load_benchmark(tiny)
    assert bench.kind == "official" and len(bench) == 3 and bench.archs() == list(TINY)
    for arch, expected in TINY.items():
        assert close(bench.query(arch), expected)
    assert all(close(bench.query(arch), TINY[arch]) for arch in [NONE, DRNAS] * 50)  # the cache answers alike
    assert bench.path == tiny
    missing = DRNAS.replace("skip_connect~0", "avg_pool_3x3~0")
    with pytest.raises(utils.UserError, match="not in the benchmark"):
        bench.query(missing)
    with pytest.raises(utils.UserError, match="not a NAS-Bench-201 architecture"):
        bench.query("|conv~0|")
    out = tmp_path / "tiny.csv"
    result = run_script("201-space", "benchmark.py", "export", "--benchmark", tiny, "--out", out)
    assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "index,arch,cifar10,cifar100,ImageNet16-120" and len(lines) == 4
    assert lines[1] == f"0,{DRNAS},94.3633,73.5133,46.3444"
    table = benchmark.load_benchmark(out)
    for arch in TINY:
        assert close(table.query(arch), {d: bench.query(arch)[d] for d in benchmark.DATASETS}, tol=5e-5)
    # With the valid column the table answers everything the official file does.
    benchmark.export_table(bench, tmp_path / "valid.csv", with_valid=True)
    full = benchmark.load_benchmark(tmp_path / "valid.csv")
    assert all(close(full.query(arch), bench.query(arch), tol=5e-5) for arch in TINY)


def test_compact_table_its_summary_and_its_agreement_with_the_official_file(load_space, tmp_path, nb201_table):
    benchmark = load_space("201-space", "benchmark")
    bench = benchmark.load_benchmark(nb201_table)
    assert bench.kind == "table" and len(bench) == 15625 and bench.path == nb201_table
    drnas = bench.query(DRNAS)
    assert [round(drnas[d], 2) for d in benchmark.DATASETS] == [94.36, 73.51, 46.34]
    archs = bench.archs()
    best = [round(max(r[d] for r in map(bench.query, archs)), 2) for d in benchmark.DATASETS]
    assert best == [94.37, 73.51, 47.31]
    assert benchmark.summarize([3.0, 1.0, 2.0, 10.0]) == {"min": 1.0, "median": 2.5, "max": 10.0}
    archs = archs[:5] + [DRNAS, RESNET]
    rows = {arch: dict(bench.query(arch), **{"cifar10-valid": 90.0}) for arch in archs}
    official = benchmark.load_benchmark(build_official(tmp_path / "part.pth", rows))
    for arch in archs:
        answer = official.query(arch)
        assert answer.pop("cifar10-valid") == pytest.approx(90.0) and close(answer, bench.query(arch))


def _query(benchmark, capsys, *argv):
    """benchmark.py query in this process: (rounded answer or None, stderr)."""
    try:
        benchmark.main(["query", *map(str, argv)])
    except SystemExit as exit_info:
        assert exit_info.code != 0
        return None, capsys.readouterr().err
    answer = json.loads(capsys.readouterr().out)
    return [round(answer[d], 2) for d in benchmark.DATASETS], ""


def test_query_takes_named_cells_strings_and_genotype_files(load_space, tmp_path, monkeypatch, capsys, nb201_table):
    benchmark, genotypes = load_space("201-space", "benchmark", "genotypes")
    genotypes.save_genotype(genotypes.DrNAS, tmp_path / "genotype.json")
    # The same cell with node 2's edges listed the other way round.
    reordered = DRNAS.replace("|nor_conv_3x3~0|nor_conv_3x3~1|", "|nor_conv_3x3~1|nor_conv_3x3~0|")
    for cwd in (SPACES["201-space"], tmp_path):
        monkeypatch.chdir(cwd)
        for arch in (DRNAS, "DrNAS", tmp_path / "genotype.json", reordered):
            assert _query(benchmark, capsys, "--arch", arch) == ([94.36, 73.51, 46.34], ""), (cwd, arch)
    assert _query(benchmark, capsys, "--arch", "DrNAS", "--benchmark", nb201_table)[0] == [94.36, 73.51, 46.34]
    resnet = benchmark.load_benchmark(nb201_table).query(str(genotypes.ResNet)).values()
    assert _query(benchmark, capsys, "--arch", "ResNet")[0] == [round(v, 2) for v in resnet]
    for argv, message in [
        (["--arch", "Foo"], "neither a named cell"), (["--arch", DRNAS.replace("skip_connect", "conv")], "unknown op"),
        (["--arch", "DrNAS", "--benchmark", "none"], "query needs a benchmark"),
        (["--arch", "DrNAS", "--benchmark", tmp_path / "missing.csv"], "no such file"),
    ]:  # fmt: skip
        answer, err = _query(benchmark, capsys, *argv)
        assert answer is None and len(err.strip().splitlines()) == 1 and message in err, (argv, err)


def test_benchmark_flag_default_and_none(load_space, tmp_path, monkeypatch, nb201_table):
    benchmark, search = load_space("201-space", "benchmark", "train_search")
    for progressive in (False, True):
        assert search.get_parser(progressive=progressive).parse_args([]).benchmark == benchmark.DEFAULT_TABLE
    monkeypatch.chdir(tmp_path)  # the default does not depend on the current folder
    assert benchmark.benchmark_path(benchmark.DEFAULT_TABLE) == nb201_table
    assert len(benchmark.open_benchmark(benchmark.DEFAULT_TABLE)) == 15625
    assert benchmark.open_benchmark("none") is None and benchmark.open_benchmark("None") is None
    assert str(benchmark.benchmark_path("mine.csv")) == "mine.csv"  # any other path: the user's, relative to cwd
    assert [benchmark.benchmark_note(d) for d in ("cifar10", "cifar100", "imagenet16-120")] == [None] * 3
    for dataset in ("synthetic", "imagefolder"):
        assert benchmark.benchmark_note(dataset) == f"the benchmark's figures for the cell, not measured on {dataset}"


HEAD = "index,arch,cifar10,cifar100,ImageNet16-120\n"
# Files load_benchmark refuses: name -> (content, or None for no file, the error's text).
BAD_FILES = {
    "header.csv": ("index,arch,cifar10,cifar100\n0,x,1,2\n", "first line must be"),
    "number.csv": (HEAD + "0,|a~0|,94.1,x,46\n", "bad number"),
    "fields.csv": (HEAD + "0,|a~0|,94.1,70\n", "expected 5 fields"),
    "range.csv": (HEAD + "0,|a~0|,194.1,70,40\n", r"\[0, 100\]"), "empty.csv": (HEAD, "no rows"),
    "missing.csv": (None, "no such file"), "notes.txt": ("hello", "unknown format"),
    "junk.pth": ("not a torch file", "not a readable"), "other.pth": (None, "not a NAS-Bench-201 file"),
}  # fmt: skip


def test_malformed_tables_and_other_files_fail_at_load(load_space, tmp_path):
    benchmark, utils = load_space("201-space", "benchmark", "runkit.utils")
    torch.save({"weights": 1}, tmp_path / "other.pth")
    for name, (content, message) in BAD_FILES.items():
        if content is not None:
            (tmp_path / name).write_text(content)
        with pytest.raises(utils.UserError, match=message):
            benchmark.load_benchmark(tmp_path / name)


def test_cli_query_prints_json_from_the_shipped_table_in_any_folder_and_bad_input_in_one_line(
    load_space, tmp_path, capsys
):
    """No --benchmark and another current folder: the table next to benchmark.py answers."""
    argv = [sys.executable, SPACES["201-space"] / "benchmark.py", "query", "--arch", DRNAS]
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=script_env())
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert list(answer) == ["cifar10", "cifar100", "ImageNet16-120"]
    assert [round(answer[d], 2) for d in answer] == [94.36, 73.51, 46.34]
    bad = tmp_path / "bad.csv"
    bad.write_text(HEAD + "0,|a~0|,x,1,2\n")
    result = run_script("201-space", "benchmark.py", "query", "--benchmark", bad, "--arch", DRNAS)
    assert result.returncode != 0 and result.stdout == "" and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
    main = load_space("201-space", "benchmark").main
    assert "no such file" in refusal(capsys, main, "query", "--benchmark", tmp_path / "missing.pth", "--arch", DRNAS)
