"""Figures of one run, drawn by the driver from a trial's probe file: attention heatmaps, per-layer
density, density by epoch. `log_run_figures` puts them (and the probe, so they can be redrawn) in MLflow."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; the driver may run where there is no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

FIGURE_DIR = "figures"
HEATMAP_FILE = "attention_heatmaps.png"
LAYER_DENSITY_FILE = "layer_density.png"
DENSITY_CURVE_FILE = "density_by_epoch.png"
PROBE_ARTIFACT = "probe.pt"


def load_probe(path: Path) -> dict:
    probe = torch.load(path, map_location="cpu", weights_only=True)
    if "density" in probe and "target_density" not in probe:  # probes written before it had its own name
        probe["target_density"] = probe.pop("density")
    return probe


def _overlay(ax, image: torch.Tensor, att: torch.Tensor | None, fg_size: int,
             fg_mask: torch.Tensor | None = None) -> None:
    """The image with a heat overlay of `att` (scaled to its own maximum) and the run's foreground
    outlined: the central square, or (`fg_mask`, a teacher-chosen foreground) its cells of weight >= 0.5."""
    img = image.permute(1, 2, 0).float().numpy() / 255.0
    ax.imshow(img, interpolation="nearest")
    if att is not None:
        size = image.shape[-1]
        heat = F.interpolate(att[None, None].float(), size=(size, size), mode="bilinear", align_corners=False)[0, 0]
        heat = heat / heat.max().clamp_min(1e-12)
        ax.imshow(heat.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
        h = att.shape[-1]
        scale = size / h
        if fg_mask is not None:  # the cells, blown up to pixels; the contour runs along their edges
            cells = F.interpolate(fg_mask[None, None].float(), size=(size, size), mode="nearest")[0, 0]
            ax.contour(cells.numpy(), levels=[0.5], colors="white", linewidths=1.6)
        else:
            top = (h - fg_size) // 2 * scale
            ax.add_patch(Rectangle((top - 0.5, top - 0.5), fg_size * scale, fg_size * scale, fill=False,
                                   edgecolor="white", linewidth=1.6))
    ax.set_xticks([])
    ax.set_yticks([])


def _enrichment(probe: dict, who: str) -> str:
    """' (1.80x area)': the share over the square's area fraction, when the probe recorded it (docs/method.md)."""
    value = probe.get(f"{who}_fg_enrichment")
    return "" if value is None else f" ({value:.2f}x area)"


def heatmap_figure(probes: list[tuple[str, dict]], path: Path) -> Path:
    """One row for the inputs, one for the dense teacher (of the first probe that has one), one per
    labelled student; a column per image. Row labels carry the foreground attention share."""
    first = probes[0][1]
    teacher = next((p for _, p in probes if "teacher" in p), None)
    rows = [("input", first, None, None)]
    if teacher is not None:
        rows.append((f"dense teacher\n{teacher['teacher_arch']}\nfg share {teacher['teacher_fg_share']:.2f}"
                     f"{_enrichment(teacher, 'teacher')}", teacher, "teacher", teacher["teacher_fg_size"]))
    for label, p in probes:
        own = f"\nown fg ({p['fg_source']}) {p['student_own_fg_share']:.2f}" if "fg_mask" in p else ""
        rows.append((f"{label}\nfg share {p['student_fg_share']:.2f}{_enrichment(p, 'student')}{own}", p, "student",
                     p["fg_size"]))
    n = first["images"].shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.45 * n + 1.6, 1.45 * len(rows) + 0.7), squeeze=False,
                             layout="constrained")
    for r, (label, p, key, fg) in enumerate(rows):
        for c in range(n):
            mask = p["fg_mask"][c] if key == "student" and "fg_mask" in p else None
            _overlay(axes[r, c], p["images"][c], p[key][c] if key else None, fg or 0, mask)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    h = first["student"].shape[-1]
    tap = first["stage"]
    stage = ("the last stage" if tap == -1 else f"stage {tap}" if isinstance(tap, int) else f"module {tap}")
    fig.suptitle(f"Attention mean_c(F^2) of {stage} on {n} fixed {first.get('split', 'val')} images "
                 f"(each map scaled to its own max)\nwhite outline = the run's foreground (the central {first['fg_size']}x"
                 f"{first['fg_size']} of {h}x{h}, or the teacher's cells); fg share = attention mass inside the square, "
                 f"{first['area_share']:.2f} from area alone",
                 fontsize=10)
    return save_figure(fig, path)


def layer_density_figure(probe: dict, path: Path, title: str = "") -> Path:
    """Horizontal bars: the kept fraction of each masked layer, with the configured overall density."""
    dens = probe["layer_density"]
    names = [k.removesuffix(".weight") for k in dens]
    values = list(dens.values())
    fig, ax = plt.subplots(figsize=(7.5, 0.2 * len(names) + 1.6))
    ax.barh(range(len(names)), values, color="tab:blue")
    ax.axvline(probe["target_density"], color="tab:red", linestyle="--", label=f"overall density {probe['target_density']:g}")
    ax.set_yticks(range(len(names)), names, fontsize=7 if len(names) > 30 else 8)
    ax.invert_yaxis()  # input layers at the top
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("kept fraction of weights (density)")
    ax.set_title(title or f"Per-layer density of {probe['student_arch']} at epoch {probe['epoch']}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def density_curve_figure(probe: dict, path: Path) -> Path:
    hist = probe["density_history"]
    epochs, dens = [0.0] + hist[:, 0].tolist(), [1.0] + hist[:, 1].tolist()  # pruning starts from the dense model
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(epochs, dens, marker="o", drawstyle="steps-post", label="measured after each epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.axhline(probe["target_density"], color="tab:red", linestyle="--", label=f"target {probe['target_density']:g}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("density (kept fraction)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Density by epoch, {probe['prune_schedule']} pruning of {probe['student_arch']}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_label(probe: dict) -> str:
    return f"student {probe['student_arch']}\n{probe['method']}, density {probe['target_density']:g}"


def draw_run_figures(probe_file: Path, out_dir: Path) -> list[Path]:
    """Every figure of one run from its probe file, into out_dir (the probe is copied beside them)."""
    probe = load_probe(probe_file)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [heatmap_figure([(run_label(probe), probe)], out_dir / HEATMAP_FILE),
             layer_density_figure(probe, out_dir / LAYER_DENSITY_FILE)]
    if probe["prune_schedule"] != "one-shot" and len(probe["density_history"]) > 0:
        files.append(density_curve_figure(probe, out_dir / DENSITY_CURVE_FILE))
    copy = out_dir / PROBE_ARTIFACT
    if Path(probe_file).resolve() != copy.resolve():
        torch.save(probe, copy)
    return files + [copy]


def log_run_figures(tracker, run_id: str, probe_file: Path, out_dir: Path) -> list[Path]:
    files = draw_run_figures(Path(probe_file), Path(out_dir))
    for f in files:
        tracker.log_artifact(run_id, str(f), FIGURE_DIR)
    return files

