"""L0: `guestkit lab --plot FILE.png`: backings x host kernels, coloured by the stage-2 attribute read.

One cell per (backing, host kernel): its colour is the stage-2 attribute KVM wrote in the
leaf descriptor (guestkit.lab.l0_table's read), its text that attribute in short form, the
raw MemAttr (and whether FWB encodes it), and what the unaligned probes under a Normal stage 1 did (killed / ok / refused), with a
yellow frame and a mark where the probe class or the KVM-policy prediction disagrees.  The legend sits
outside the axes, right of the grid, so it never covers a cell.  matplotlib with the Agg
backend: no display needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from bench.errors import UserError  # noqa: E402
from guestkit.lab import l0_table as table  # noqa: E402

# Device types in reds (darker = stricter), Normal-NC blue, write-back green; no read grey.
COLOURS = {"Dev-nGnRnE": "#7f0000", "Dev-nGnRE": "#c0392b", "Dev-nGRE": "#e67e22", "Dev-GRE": "#f5b041",
           "NC": "#2e86c1", "WT": "#8e44ad", "WB": "#27ae60", "as-s1": "#48c9b0", "refused": "#7b7d7d",
           "n/a": "#e5e7e9", "-": "#ffffff"}
NAMES = {"Dev-nGnRnE": "Device-nGnRnE", "Dev-nGnRE": "Device-nGnRE", "Dev-nGRE": "Device-nGRE",
         "Dev-GRE": "Device-GRE", "NC": "Normal-NC", "WT": "Normal write-through", "WB": "Normal write-back",
         "as-s1": "FWB: as stage 1", "refused": "memslot refused", "n/a": "no stage-2 read", "-": "not run"}
MISMATCH = "#ffd600"
DARK = {"Dev-nGnRnE", "Dev-nGnRE", "NC", "WT", "WB", "refused"}  # white text on these


@dataclass(frozen=True)
class Picture:
    """The figure and the parts a test measures: the cell patches and the legend."""

    fig: object
    cells: tuple[Rectangle, ...]
    legend: object


def figure(reports: list[table.HostReport], title: str = "") -> Picture:
    """The grid for these host reports (rows backings, columns host kernels)."""
    backings = list(dict.fromkeys(b for r in reports for b in table.backings_of(r)))
    if not reports or not backings:
        raise UserError("nothing to plot: no host gave a probe result")
    per = [{v.backing: v for v in table.stage2_verdicts(r)} for r in reports]
    fig, ax = plt.subplots(figsize=(2.2 + 1.9 * len(reports) + 3.2, 1.2 + 0.8 * len(backings)))
    patches, shown = [], []
    for row, backing in enumerate(backings):
        for col, (r, p) in enumerate(zip(reports, per)):
            v = p.get(backing)
            cell = v.cell if v else "-"
            bad = v is not None and table.disagrees(r, backing)
            rect = Rectangle((col, row), 1, 1, facecolor=COLOURS.get(cell, "#ffffff"), edgecolor="white", lw=2)
            ax.add_patch(rect)
            patches.append(rect)
            shown.append(cell)
            probe = table.PROBE_WORD[v.probe_class] if v else ""
            raw = [f"MemAttr {v.memattr:#06b}{' (FWB)' if v.fwb else ''}"] if v and v.memattr is not None else []
            lines = [cell, *raw, *([f"probe: {probe}"] if probe and probe != "-" else []),
                     *(["\u2717 mismatch"] if bad else [])]
            ax.text(col + 0.5, row + 0.5, "\n".join(lines), ha="center", va="center", fontsize=8,
                    color="white" if cell in DARK else "black", fontweight="bold" if bad else "normal")
            if bad:  # a yellow frame inside the cell: visible on every fill colour
                ax.add_patch(Rectangle((col + 0.04, row + 0.06), 0.92, 0.88, fill=False, edgecolor=MISMATCH, lw=3))
    ax.set_xlim(0, len(reports))
    ax.set_ylim(len(backings), 0)
    ax.set_xticks([i + 0.5 for i in range(len(reports))], [table.short(r.kernel) for r in reports], fontsize=8.5)
    ax.set_yticks([i + 0.5 for i in range(len(backings))], backings, fontsize=8.5)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    handles = [Patch(facecolor=COLOURS[c], edgecolor="#999999", label=NAMES[c]) for c in COLOURS if c in shown]
    handles.append(Patch(facecolor="white", edgecolor=MISMATCH, lw=3, label="\u2717 probe or prediction disagrees"))
    legend = ax.legend(handles=handles, title="stage 2 read", loc="upper left", bbox_to_anchor=(1.03, 1.0),
                       borderaxespad=0.0, fontsize=8, title_fontsize=8.5, frameon=True)
    ax.set_title(title or "Stage 2 that each host kernel's KVM wrote (leaf descriptor), with the probe outcome",
                 fontsize=9.5, pad=28)
    fig.tight_layout()
    return Picture(fig, tuple(patches), legend)


def plot(reports: list[table.HostReport], dest: Path) -> Path:
    """Write the picture to dest (PNG); UserError in one line when it cannot be written."""
    emulated = "emulated hosts (QEMU TCG): the attributes are real KVM decisions"
    pic = figure(reports, "Stage 2 each host kernel's KVM wrote (leaf descriptor) and the probe outcome\n" + emulated)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        pic.fig.savefig(dest, dpi=130, bbox_inches="tight")
    except OSError as exc:
        raise UserError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        plt.close(pic.fig)
    return dest
