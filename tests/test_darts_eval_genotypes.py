"""DARTS-space genotypes: JSON round trip, loading by name or path, one-line errors."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import assert_one_line_error, run_script


def test_json_round_trip_of_every_named_genotype_and_a_nested_genotype_key(load_space, tmp_path):
    genotypes = load_space("DARTS-space", "genotypes")
    for name, genotype in genotypes.NAMED.items():
        path = tmp_path / f"{name}.json"
        genotypes.save_genotype(genotype, path)
        loaded = genotypes.load_genotype(str(path))
        assert genotypes.genotype_to_dict(loaded) == genotypes.genotype_to_dict(genotype)
        assert genotypes.load_genotype(name) is genotype
        for ops in (genotype.normal, genotype.reduce):
            assert len(ops) == 8 and all(op in genotypes.PRIMITIVES for op, _ in ops)
    path = tmp_path / "summary.json"  # a nested "genotype" key is accepted
    path.write_text(json.dumps({"genotype": genotypes.genotype_to_dict(genotypes.DARTS_V2), "valid_acc": 80.0}))
    assert genotypes.load_genotype(str(path)).normal == genotypes.DARTS_V2.normal


def test_load_errors_in_process_and_a_wrong_arch_ends_train_py_with_one_clear_line(load_space, tmp_path):
    genotypes = load_space("DARTS-space", "genotypes")
    with pytest.raises(genotypes.UserError, match="accepted names: DrNAS_cifar10"):
        genotypes.load_genotype("DrNAS_cifar100")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(genotypes.UserError, match="not valid JSON"):
        genotypes.load_genotype(str(tmp_path / "broken.json"))
    expected = {
        "unknown_op": "accepted ops: max_pool_3x3, avg_pool_3x3", "bad_index": "integer in 0..1",
        "wrong_shape": "'normal' has 8 entries but 'reduce' 6",
    }  # fmt: skip
    good = json.dumps(genotypes.genotype_to_dict(genotypes.DrNAS_cifar10))
    unknown_op, wrong_shape, bad_index = json.loads(good), json.loads(good), json.loads(good)
    unknown_op["normal"][0][0] = "conv_7x1_1x7"
    wrong_shape["reduce"] = wrong_shape["reduce"][:6]  # 3 nodes, where 'normal' has 4
    bad_index["normal"][0][1] = 5  # node 0 can only read the two cell inputs
    for key, data in {"unknown_op": unknown_op, "wrong_shape": wrong_shape, "bad_index": bad_index}.items():
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(genotypes.UserError, match=expected[key]):
            genotypes.load_genotype(str(path))
    # The same faults as train.py's --arch, as a user runs it.
    cases = {"unknown name": ("DrNAS_cifar100", "accepted names: DrNAS_cifar10, DrNAS_imagenet")}
    cases["malformed JSON"] = (tmp_path / "broken.json", "not valid JSON")
    cases["unknown op"] = (tmp_path / "unknown_op.json", "accepted ops: max_pool_3x3")

    def attempt(what):
        argv = ["--dataset", "synthetic", "--arch", cases[what][0], "--device", "cpu"]
        return run_script("DARTS-space", "train.py", *argv, "--save", tmp_path / what.replace(" ", "_"), timeout=180)

    # The three runs spend their time importing torch: side by side they take the time of one.
    with ThreadPoolExecutor(len(cases)) as pool:
        results = dict(zip(cases, pool.map(attempt, cases)))
    for what, (_, expected) in cases.items():
        run_dir, result = tmp_path / what.replace(" ", "_"), results[what]
        assert result.returncode == 2 and "Traceback" not in result.stdout, (what, result.stderr)
        assert_one_line_error(result.returncode, result.stderr, expected)
        assert not run_dir.exists()  # refused before anything was written
