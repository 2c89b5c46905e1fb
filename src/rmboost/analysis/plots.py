"""The report's figures, drawn from analysis.json alone (matplotlib, Agg, PNG bytes)."""

from __future__ import annotations

import io
import itertools
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt

REAL_COLOR = "#8a8f98"
PALETTE = ["#2f6fdf", "#e0762b", "#2a9d6f", "#c2417a", "#7a5bd1", "#b8962e", "#2aa3b8", "#d14b3d"]
plt.rcParams.update({
    "font.size": 9, "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.25, "axes.axisbelow": True,
})


def colors(names: list[str]) -> dict[str, str]:
    """One colour per group, the real pairs always grey, the same in every figure."""
    out, i = {}, 0
    for name in names:
        if name == "real":
            out[name] = REAL_COLOR
        else:
            out[name] = PALETTE[i % len(PALETTE)]
            i += 1
    return out


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _grid(n: int, ncols: int = 4, height: float = 2.3) -> tuple[Any, list[Any]]:
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.75 * ncols, height * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _fractions(counts: list[int]) -> list[float]:
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts]


def lengths_figure(analysis: dict[str, Any]) -> bytes | None:
    """Figure 3(b): histogram of log2(words chosen / words rejected), each variant over the real pairs."""
    lengths = analysis.get("lengths") or {}
    variants = [g for g in analysis.get("groups", []) if g != "real" and (lengths.get(g) or {}).get("n")]
    real = lengths.get("real") if (lengths.get("real") or {}).get("n") else None
    shown = variants or (["real"] if real else [])
    if not shown:
        return None
    col = colors(analysis.get("groups", []))
    fig, axes = _grid(len(shown))
    for ax, name in zip(axes, shown, strict=True):
        s = lengths[name]
        edges = s["histogram"]["log2_edges"]
        widths = [b - a for a, b in itertools.pairwise(edges)]
        ax.bar(edges[:-1], _fractions(s["histogram"]["counts"]), width=widths, align="edge",
               color=col[name], alpha=0.75, label=name)
        if real and name != "real":
            ax.stairs(_fractions(real["histogram"]["counts"]), edges, color="#333", lw=1.2, label="real (human)")
        ax.axvline(0, color="#333", lw=0.6, ls=":")
        ax.set_xticks([-3, -2, -1, 0, 1, 2, 3], ["⅛", "¼", "½", "1", "2", "4", "8"])
        ax.set_title(f"{name}\nmedian {s['median']:.2f}, chosen longer {s['share_chosen_longer']:.0%}", fontsize=9)
        ax.set_xlabel("words chosen / rejected")
    axes[0].set_ylabel("share of pairs")
    axes[0].legend(fontsize=7, frameon=False, loc="upper left")
    fig.tight_layout()
    return _png(fig)


def beta_figure(analysis: dict[str, Any]) -> bytes | None:
    """Figure 3(a): distribution of log β per variant that has it; β = 1 at the dotted line."""
    betas = {k: v for k, v in (analysis.get("beta") or {}).items() if v.get("available") and v.get("histogram")}
    if not betas:
        return None
    col = colors(analysis.get("groups", []))
    fig, axes = _grid(len(betas), ncols=3, height=2.4)
    for ax, (name, s) in zip(axes, betas.items(), strict=True):
        edges = s["histogram"]["edges"]
        ax.stairs(_fractions(s["histogram"]["counts"]), edges, fill=True, color=col.get(name, PALETTE[0]), alpha=0.75)
        ax.axvline(0, color="#333", lw=0.8, ls=":")
        ax.axvline(s["median_log_beta"], color="#c0392b", lw=1.2)
        ax.set_title(f"{name}\nmedian β {s['median_beta']:.3g}, IQR(log β) {s['iqr_log_beta']:.2f}", fontsize=9)
        ax.set_xlabel("log β  (nats; 0 means β = 1)")
    axes[0].set_ylabel("share of pairs")
    fig.tight_layout()
    return _png(fig)


def diversity_figure(analysis: dict[str, Any]) -> bytes | None:
    """distinct-1/2/3 and embedding spread per group, side by side."""
    groups = (analysis.get("diversity") or {}).get("groups") or {}
    names = [g for g in analysis.get("groups", []) if g in groups]
    if not names:
        return None
    col = colors(analysis.get("groups", []))
    has_emb = any(groups[n].get("pairwise_cosine_distance") is not None for n in names)
    fig, axes = plt.subplots(1, 2 if has_emb else 1, figsize=(11 if has_emb else 6.5, 0.9 + 0.42 * len(names) * 1.6),
                             squeeze=False)
    ax = axes[0][0]
    h = 0.26
    ys = range(len(names))
    for j, n in enumerate(("1", "2", "3")):
        vals = [groups[g]["distinct"][n]["distinct"] or 0 for g in names]
        bars = ax.barh([y + (j - 1) * h for y in ys], vals, height=h, color=[col[g] for g in names],
                       alpha=0.45 + 0.25 * j)
        ax.bar_label(bars, labels=[f"d{n} {v:.2f}" for v in vals], fontsize=7, padding=2)
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.15)
    ax.set_title("distinct-n (unique / total n-grams; light → dark: n = 1, 2, 3)")
    if has_emb:
        ax2 = axes[0][1]
        pw = [groups[g].get("pairwise_cosine_distance") or 0 for g in names]
        cr = [groups[g].get("chosen_rejected_cosine_distance") or 0 for g in names]
        b1 = ax2.barh([y - 0.2 for y in ys], pw, height=0.38, color=[col[g] for g in names], alpha=0.85,
                      label="between all responses")
        b2 = ax2.barh([y + 0.2 for y in ys], cr, height=0.38, color=[col[g] for g in names], alpha=0.4,
                      hatch="//", label="chosen vs its rejected")
        ax2.bar_label(b1, fmt="%.3f", fontsize=7, padding=2)
        ax2.bar_label(b2, fmt="%.3f", fontsize=7, padding=2)
        ax2.set_yticks(list(ys), names)
        ax2.invert_yaxis()
        ax2.set_xlim(0, max([*pw, *cr, 0.1]) * 1.25)
        ax2.set_title("mean cosine distance of MiniLM embeddings")
        ax2.legend(fontsize=7, frameon=False, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def tokens_figure(analysis: dict[str, Any]) -> bytes | None:
    """Generator and judge tokens per variant (stacked), and tokens per kept pair."""
    gen = {k: v for k, v in (analysis.get("generation") or {}).items() if v.get("available")}
    if not gen:
        return None
    names = list(gen)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 1.4 + 0.42 * len(names)), layout="constrained")
    parts = [("generator", "tokens_in", "generator in", "#2f6fdf"), ("generator", "tokens_out", "generator out", "#9bbcf2"),
             ("judge", "tokens_in", "judge in", "#e0762b"), ("judge", "tokens_out", "judge out", "#f3c39c")]
    left = [0.0] * len(names)
    for who, key, label, color in parts:
        vals = [float(gen[n][who].get(key) or 0) for n in names]
        ax.barh(names, vals, left=left, color=color, label=label)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.invert_yaxis()
    ax.set_title("tokens to make the data (paid + cached)")
    fig.legend(fontsize=7, frameon=False, ncols=4, loc="outside lower center")
    ax.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter())
    per = [gen[n].get("tokens_per_pair") or 0 for n in names]
    bars = ax2.barh(names, per, color="#555")
    ax2.bar_label(bars, labels=[f"{v:,.0f}" if v else "n/a" for v in per], fontsize=7, padding=2)
    ax2.invert_yaxis()
    ax2.set_xlim(0, max([*per, 1]) * 1.2)
    ax2.set_title("tokens per kept pair")
    return _png(fig)


def filter_figure(analysis: dict[str, Any]) -> bytes | None:
    """Kept, judge-filtered and failed prompts per variant."""
    gen = {k: v for k, v in (analysis.get("generation") or {}).items() if v.get("available")}
    if not gen:
        return None
    names = list(gen)
    fig, ax = plt.subplots(figsize=(11, 1.4 + 0.42 * len(names)), layout="constrained")
    kept = [gen[n]["pairs"] for n in names]
    filt = [gen[n]["filtered"] for n in names]
    fail = [gen[n]["failures"] for n in names]
    ax.barh(names, kept, color="#2a9d6f", label="kept pairs")
    ax.barh(names, filt, left=kept, color="#e0b12b", label="removed by the judge filter")
    ax.barh(names, fail, left=[a + b for a, b in zip(kept, filt, strict=True)], color="#d14b3d", label="failed prompts")
    for i, n in enumerate(names):
        rate = gen[n].get("filter_rate")
        text = f"filter rate {rate:.0%}" if rate is not None else "no filter"
        ax.text(kept[i] + filt[i] + fail[i], i, f"  {text}", va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, max([k + f + x for k, f, x in zip(kept, filt, fail, strict=True)] + [1]) * 1.25)
    ax.set_title("what happened to each prompt")
    fig.legend(fontsize=7, frameon=False, ncols=3, loc="outside lower center")
    return _png(fig)


FIGURES = {
    "lengths": lengths_figure,
    "beta": beta_figure,
    "diversity": diversity_figure,
    "tokens": tokens_figure,
    "filter": filter_figure,
}


def make_figures(analysis: dict[str, Any]) -> dict[str, bytes]:
    """Every figure the analysis has data for, as PNG bytes."""
    out = {}
    for name, draw in FIGURES.items():
        png = draw(analysis)
        if png is not None:
            out[name] = png
    return out


def save_figures(analysis: dict[str, Any], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, png in make_figures(analysis).items():
        path = folder / f"{name}.png"
        path.write_bytes(png)
        paths.append(path)
    return paths
