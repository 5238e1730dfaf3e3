"""bench report / compare note different stage-2 leaf sizes (`stage2_leaf` metadata: THP RAM
at 2 MiB vs a 4 KiB PFNMAP), on copies of the committed real example results."""
import json

from conftest import REPO, run_cli

EX = REPO / "results" / "examples"
GUEST = sorted((EX / "qemu-arm64-tcg").glob("*.json"))[0]
SERIES = sorted((EX / "series").glob("*.json"))


def with_leaf(src, dst, leaf_by_attr: dict[str, int]):
    """A copy of a real result whose benchmarks carry stage2_leaf (by their attr)."""
    data = json.loads(src.read_text())
    for b in data["benchmarks"]:
        attr = b["metadata"]["name"].rsplit("@", 1)[-1]
        if attr in leaf_by_attr:
            b["metadata"]["stage2_leaf"] = leaf_by_attr[attr]
    dst.write_text(json.dumps(data))
    return dst


def _attrs(path) -> list[str]:
    return list(dict.fromkeys(b["metadata"]["name"].rsplit("@", 1)[-1]
                              for b in json.loads(path.read_text())["benchmarks"]))


def test_report_notes_different_leaf_sizes_within_72_columns(tmp_path):
    first, *rest = _attrs(GUEST)
    path = with_leaf(GUEST, tmp_path / "leaf.json", {first: 4096, **{a: 2 << 20 for a in rest}})
    out = run_cli("report", str(path)).stdout
    note = next(line for line in out.splitlines() if "stage-2 leaf sizes differ" in line)
    assert f"{first} 4 KiB" in note and "2 MiB" in note and "page walks" in out
    assert all(len(line) <= 72 for line in out.splitlines())
    same = with_leaf(GUEST, tmp_path / "same.json", {a: 4096 for a in _attrs(GUEST)})
    assert "leaf" not in run_cli("report", str(same)).stdout
    assert "leaf" not in run_cli("report", str(GUEST)).stdout  # not recorded: no note, no guess


def test_compare_notes_a_side_mapped_at_another_leaf_size(tmp_path):
    attrs = _attrs(SERIES[0])
    base = with_leaf(SERIES[0], tmp_path / "base.json", {a: 2 << 20 for a in attrs})
    new = with_leaf(SERIES[1], tmp_path / "new.json", {a: 4096 for a in attrs})
    proc = run_cli("compare", str(base), str(new))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if "stage-2 leaf" in line)
    n = len(json.loads(base.read_text())["benchmarks"])
    assert lines[at].endswith("base 2 MiB, new 4 KiB") and lines[at + 1].startswith(f"  in {n} benchmark(s), e.g. ")
    assert "page walks" in proc.stdout and all(len(line) <= 72 for line in proc.stdout.splitlines())
    same = with_leaf(SERIES[1], tmp_path / "same.json", {a: 2 << 20 for a in attrs})
    assert "stage-2 leaf" not in run_cli("compare", str(base), str(same)).stdout
