"""The report's matplotlib figures, rendered to PNG bytes without pyplot's global state; ALT says what each
shows (the report's alternative text)."""

from __future__ import annotations

import io

import numpy as np

ALT = {
    "rates.png": "Bar chart: each model's exact-match rate in percent of the examples with its 95% interval, and its "
                 "approximate-match rate where the run computed one.",
    "overlap.png": "Heat map: for each pair of models, the memorized examples they share (the numbers) and the "
                   "Jaccard similarity of their memorized sets (the colour).",
    "token_accuracy.png": "Histograms: how many examples each model continues with each share of correct tokens.",
    "students.png": "Stacked bars: each student's memorized examples split into easy ones (memorized by the teacher "
                    "and a baseline), inherited ones (teacher-only) and others.",
    "copies.png": "Line chart: each model's memorization rate against how often the example's suffix occurs in the "
                  "training data.",
    "profile.png": "Line chart: each model's exact-match rate against the prefix length.",
    "training.png": "Line chart: each model's memorization rate at each saved checkpoint of its training, with 95% "
                    "intervals.",
    "training_teacher_only.png": "Line chart: how many of the teacher-only examples (memorized by the teacher, by no "
                                 "baseline) each model memorizes at each checkpoint of its training.",
    "roc.png": "ROC curve of the memorization predictor on held-out examples (mean over trials, one standard "
               "deviation shaded); the diagonal is chance.",
    "pr.png": "Precision against recall of the memorization predictor at the real base rate (mean over trials, one "
              "standard deviation shaded); the dashed line is the base rate.",
    "coefficients.png": "Bar chart: the memorization predictor's standardized coefficient of each feature (mean and "
                        "standard deviation over trials).",
}

def png(draw, size=(6.4, 4.0)) -> bytes:
    """Render `draw(ax)` on a new figure (no pyplot state) and return the PNG bytes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    draw(fig.subplots())
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def draw_rates(result):
    """Exact-match rates with their intervals; approximate-match rates beside them only where computed."""
    def draw(ax):
        runs = result["runs"]
        names = list(runs)
        x = np.arange(len(names))
        kinds = [("exact_match", "exact")]
        if any(runs[n]["approx_match_rate"] is not None for n in names):  # None: not computed (no full decoding)
            kinds.append(("approx_match", "approximate"))
        width = 0.8 / len(kinds)
        for i, (key, label) in enumerate(kinds):
            rates = np.array([np.nan if runs[n][f"{key}_rate"] is None else 100 * runs[n][f"{key}_rate"]
                              for n in names])
            bounds = [runs[n].get(f"{key}_interval") for n in names]
            err = np.array([[r - 100 * b["low"], 100 * b["high"] - r] if b else [0, 0]
                            for r, b in zip(rates, bounds)]).T
            ax.bar(x + (i - (len(kinds) - 1) / 2) * width, rates, width, yerr=err, capsize=3, label=label)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylabel("% of examples memorized (95% interval)")
        ax.set_title("Memorization rate per model")
        if len(kinds) > 1:
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


def series_axis(series: dict) -> str:
    """Epochs where every checkpoint records one (comparable across models), else steps."""
    return "epoch" if all(p["epoch"] is not None for points in series.values() for p in points) else "step"


def draw_series(series: dict):
    """Each series' memorization rate per checkpoint with its interval."""
    axis = series_axis(series)

    def draw(ax):
        for name, points in series.items():
            x = [p[axis] for p in points]
            ax.plot(x, [100 * p["exact_match_rate"] for p in points], marker="o", label=name)
            ax.fill_between(x, [100 * p["exact_match_interval"]["low"] for p in points],
                            [100 * p["exact_match_interval"]["high"] for p in points], alpha=0.2)
        ax.set_xlabel(axis)
        ax.set_ylabel("% of examples memorized (95% interval)")
        ax.set_title("Memorization over training")
        ax.legend()
    return draw


def draw_series_teacher_only(series: dict):
    """How many teacher-only examples each series memorizes per checkpoint."""
    axis = series_axis(series)

    def draw(ax):
        for name, points in series.items():
            ax.plot([p[axis] for p in points], [p["teacher_only"] for p in points], marker="o", label=name)
        ax.set_xlabel(axis)
        ax.set_ylabel("teacher-only examples memorized")
        ax.set_title("When each model picks up the teacher-only examples")
        ax.legend()
    return draw


def draw_roc(pred):
    """The predictor's held-out ROC curve, mean ± std over trials."""
    def draw(ax):
        roc, auc = pred["roc"], pred["resampled"]["roc_auc"]
        fpr, tpr, std = (np.array(roc[k]) for k in ("fpr", "tpr", "tpr_std"))
        ax.fill_between(fpr, np.clip(tpr - std, 0, 1), np.clip(tpr + std, 0, 1), alpha=0.25, label="± std")
        ax.plot(fpr, tpr, linewidth=2, label=f"mean, AUC {auc['mean']:.3f} ± {auc['std']:.3f}")
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="chance")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
        ax.set_title(f"Predictor ROC curve (held-out, negatives 1:{pred['neg_ratio']:g}, {pred['trials']} trials)")
        ax.legend(loc="lower right")
    return draw


def draw_pr(pred):
    """Precision against recall at the real base rate (no resampling), mean ± std over trials."""
    def draw(ax):
        pr, base = pred["pr_base_rate"], pred["base_rate_eval"]
        recall, precision, std = (np.array(pr[k]) for k in ("recall", "precision", "precision_std"))
        ax.fill_between(recall, np.clip(precision - std, 0, 1), np.clip(precision + std, 0, 1), alpha=0.25,
                        label="± std")
        ax.plot(recall, precision, linewidth=2,
                label=f"mean, average precision {base['average_precision']['mean']:.3f}")
        ax.axhline(base["base_rate"]["mean"], color="grey", linestyle="--", linewidth=0.8,
                   label=f"base rate {100 * base['base_rate']['mean']:.2g}%")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision")
        ax.set_title("Predictor precision-recall at the real base rate")
        ax.legend(loc="upper right")
    return draw
