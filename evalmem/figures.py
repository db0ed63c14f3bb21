"""The report's matplotlib figures, rendered to PNG bytes without pyplot's global state."""

from __future__ import annotations

import io

import numpy as np

def png(draw, size=(6.4, 4.0)) -> bytes:
    """Render `draw(ax)` on a new figure (no pyplot state) and return the PNG bytes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    draw(fig.subplots())
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def draw_rates(result):
    def draw(ax):
        names = list(result["runs"])
        x = np.arange(len(names))
        for offset, key, label in ((-0.2, "exact_match_rate", "exact"), (0.2, "approx_match_rate", "approximate")):
            rates = [result["runs"][n][key] for n in names]  # None: not computed (no full decoding)
            ax.bar(x + offset, [np.nan if r is None else 100 * r for r in rates], 0.4, label=label)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylabel("% of examples memorized")
        ax.set_title("Memorization rate per model")
        ax.legend()
    return draw


def draw_overlap(result):
    """Pairwise overlap of memorized sets: cell counts are intersections, colour is Jaccard."""
    def draw(ax):
        names = list(result["runs"])
        k = len(names)
        count = np.diag([result["runs"][n]["exact_match_count"] for n in names]).astype(float)
        jaccard = np.eye(k)
        for o in result["overlaps"]:
            i, j = names.index(o["a"]), names.index(o["b"])
            count[i, j] = count[j, i] = o["intersection"]
            jaccard[i, j] = jaccard[j, i] = o["jaccard"] or 0.0
        image = ax.imshow(jaccard, vmin=0, vmax=1, cmap="Blues")
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{count[i, j]:.0f}", ha="center", va="center",
                        color="white" if jaccard[i, j] > 0.6 else "black")
        ax.set_xticks(range(k), names, rotation=30, ha="right")
        ax.set_yticks(range(k), names)
        ax.set_title("Memorized-set overlap (counts; colour = Jaccard)")
        ax.figure.colorbar(image, ax=ax, label="Jaccard")
    return draw


def draw_token_accuracy(accuracies: dict[str, np.ndarray]):
    def draw(ax):
        bins = np.linspace(0, 1, 26)
        for name, acc in accuracies.items():
            ax.hist(acc, bins=bins, histtype="step", linewidth=1.5, label=name)
        ax.set_yscale("log")
        ax.set_xlabel("token accuracy of the greedy suffix")
        ax.set_ylabel("examples")
        ax.set_title("Token-accuracy distribution per model")
        ax.legend()
    return draw


def draw_students(result):
    def draw(ax):
        names = list(result["students"])
        left = np.zeros(len(names))
        for part in ("easy", "inherited", "neither"):
            values = np.array([result["students"][n][part] for n in names], dtype=float)
            ax.barh(names, values, left=left, label=part)
            left += values
        ax.set_xlabel("memorized examples")
        ax.set_title("What each student memorized")
        ax.legend()
    return draw


def draw_coefficients(pred):
    def draw(ax):
        names = list(pred["coefficients"])
        ax.barh(names, [pred["coefficients"][n]["mean"] for n in names],
                xerr=[pred["coefficients"][n]["std"] for n in names])
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel("standardized coefficient (mean ± std over trials)")
        ax.set_title("Memorization predictor")
    return draw


def draw_copies(by_copies: dict):
    """Each model's memorization rate by how many times the example's suffix occurs in the training data."""
    def draw(ax):
        for name, cells in by_copies.items():
            ax.plot(list(cells), [100 * (c["rate"] or 0) if c["n"] else np.nan for c in cells.values()],
                    marker="o", label=name)
        ax.set_xlabel("copies of the example's suffix in the training data")
        ax.set_ylabel("% memorized")
        ax.set_title("Memorization by copy count")
        ax.legend()
    return draw


def draw_profile(profiles: dict):
    """Each model's exact-match rate against the prefix length (the context an attacker has)."""
    def draw(ax):
        for name, rows in profiles.items():
            ax.plot([r["prefix_len"] for r in rows], [100 * r["exact_match_rate"] for r in rows], marker="o",
                    label=name)
        ax.set_xlabel("prefix length (tokens)")
        ax.set_ylabel("% of examples extracted exactly")
        ax.set_title("Memorization against prefix length")
        ax.legend()
    return draw
