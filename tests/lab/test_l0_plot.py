"""guestkit.lab.l0_plot (L0): the lab's picture is a real PNG, one coloured cell per
(backing, host kernel), and its legend lies outside every cell."""
import matplotlib.image
import pytest

from bench.errors import UserError
from guestkit.lab import l0_plot, l0_table as table
from test_l0_table import ERAS, as_policy_says


def _reports():
    # 6.1 as the policy says; 6.12 with a vfio read the probes contradict (a mismatch mark).
    return [as_policy_says(ERAS[0]), as_policy_says(ERAS[1], reads={"vfio": "device-ngnre"}),
            as_policy_says(ERAS[2])]


def test_png_is_real_and_coloured_by_the_read(tmp_path):
    dest = l0_plot.plot(_reports(), tmp_path / "sub" / "lab.png")
    assert dest.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(dest)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 600
    colours = {tuple(round(float(c), 2) for c in px[:3]) for px in pixels.reshape(-1, pixels.shape[2])[::7]}
    for name in ("NC", "WB", "Dev-nGnRE"):  # each read colour is painted somewhere
        want = tuple(round(int(l0_plot.COLOURS[name][i:i + 2], 16) / 255, 2) for i in (1, 3, 5))
        assert any(all(abs(a - b) <= 0.02 for a, b in zip(c, want)) for c in colours), name


def test_cells_follow_the_reads_and_the_legend_covers_none():
    reports = _reports()
    pic = l0_plot.figure(reports)
    pic.fig.canvas.draw()
    renderer = pic.fig.canvas.get_renderer()
    backings = table.backings_of(reports[0])
    assert len(pic.cells) == len(backings) * len(reports)
    legend = pic.legend.get_window_extent(renderer)
    for rect in pic.cells:
        assert not legend.overlaps(rect.get_window_extent(renderer))
    # The vfio row: Dev-nGnRE, then 6.12's contradicted Dev-nGnRE (marked), then NC.
    vfio = [rect for rect in pic.cells if rect.get_y() == backings.index("vfio")]
    want = [l0_plot.COLOURS[c] for c in ("Dev-nGnRE", "Dev-nGnRE", "NC")]
    assert [matplotlib.colors.to_hex(rect.get_facecolor()) for rect in vfio] == want
    texts = [t.get_text() for t in pic.fig.axes[0].texts]
    assert "Dev-nGnRE\nMemAttr 0b0001 (FWB)\nprobe: ok\n\u2717 mismatch" in texts
    assert "NC\nMemAttr 0b0101 (FWB)\nprobe: ok" in texts
    assert "Dev-nGnRE\nMemAttr 0b0001 (FWB)\nprobe: killed" in texts


def test_nothing_to_plot_is_one_line(tmp_path):
    with pytest.raises(UserError, match="nothing to plot"):
        l0_plot.plot([table.HostReport("6.1.0-57-arm64", "payload", None, (), {}, "timed out")], tmp_path / "x.png")
