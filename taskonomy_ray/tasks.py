"""The task dictionary: the 26 Taskonomy tasks declared once, as frozen specs.

Adding a task means adding one `TaskSpec` to `TASKS`; every other layer reads this registry.
Names are the dataset's domain names (DESIGN.md); `legacy_name` is the name in the paper's code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .errors import ConfigError, unknown_name

# What a task network predicts; decides the decoder and the loss family.
OUTPUT_KINDS = (
    "pixel_regression",  # dense real values, e.g. depth, normals
    "pixel_classes",  # dense class logits, e.g. semantic segmentation
    "pixel_embedding",  # dense embedding trained with a metric loss over pixel pairs
    "vector_regression",  # one real vector per image, e.g. room layout
    "class_distribution",  # one distribution per image, e.g. scene class
    "class_label",  # one class per image (jigsaw permutation)
    "multi_view",  # one vector or class per group of 2-3 views of the same scene
    "none",  # the `random` source: an untrained encoder, no output
)
LOSSES = ("l1", "l2", "cross_entropy", "kl", "metric", "none")
# How a label is made from the RGB image itself instead of read from a domain.
DERIVATIONS = ("identity", "denoise", "colorize", "inpaint", "jigsaw", "random")
# What the task network's encoder sees (the transfer readouts always see plain rgb features).
INPUTS = ("rgb", "noisy_rgb", "grey", "masked_rgb", "tiles")
GROUPS = ("2d", "3d", "low_dim_geometric", "semantic", "random")
# The training target a dense regression label becomes, as Taskonomy's target preprocessing
# made it (derived.py): the value as decoded, depth's log scale, curvature standardised.
TARGETS = ("as_decoded", "log_depth", "standardised_curvature")

# The version of what units compute from a config: labels and training targets, losses, what
# source encoders are shown. It is part of every unit key and recorded in run.json, so a change
# that makes stored results incomparable bumps it, and a run started under another version is
# not silently resumed with mixed results. 1: runs whose run.json has no `method`; 2: source views
# (denoising, inpainting, colorization encoders see their own inputs), depth on Taskonomy's log
# scale, curvature standardised with an L2 loss.
METHOD_VERSION = 2
# The version of how transfers are trained, part of every transfer group's key (and so of the
# beams' and the analysis' inputs), so a change retrains transfers and keeps the networks and
# representations. 2: each transfer's output starts at its training labels' mean, as the task
# networks' do (1 started at zero, out of reach of depth's log-scale labels). 3: each readout
# divides its clipped inputs by their training sigma before batch norm (2 let batch norm's eps
# damp the random encoder's tiny outputs into a near-constant input).
TRANSFER_VERSION = 3

# The release marks invalid depth as the largest 16-bit values (see layout.py).
DEPTH_MASK_DOMAIN = "depth_zbuffer"


@dataclass(frozen=True)
class TaskSpec:
    """One task: where its label comes from, what the network predicts and how it is scored."""

    name: str
    description: str
    output: str
    channels: int  # output channels, classes or vector length at the paper's scale
    loss: str
    domains: tuple[str, ...] = ()  # dataset domains the label (or the views' poses) is read from
    derived: str | None = None  # how the label is made from RGB, for self-supervised tasks
    input: str = "rgb"
    views: int = 1  # views of the same point one sample needs
    source_only: bool = False  # never a transfer target (colorization, jigsaw, inpainting, random)
    masked: bool = False  # loss only on pixels with valid depth
    group: str = "2d"
    legacy_name: str = ""  # name in the paper's code and published results
    target: str = "as_decoded"  # what a dense regression label becomes to train on (TARGETS)

    def __post_init__(self) -> None:
        def check(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(f"task spec {self.name!r}: {what}")

        check(self.name.isidentifier(), "name must be a lower-case identifier")
        check(self.output in OUTPUT_KINDS, f"output must be one of {OUTPUT_KINDS}")
        check(self.loss in LOSSES, f"loss must be one of {LOSSES}")
        check(self.derived is None or self.derived in DERIVATIONS, f"derived in {DERIVATIONS}")
        check(self.input in INPUTS, f"input must be one of {INPUTS}")
        check(self.group in GROUPS, f"group must be one of {GROUPS}")
        check(self.views in (1, 2, 3), "views must be 1, 2 or 3")
        check((self.views > 1) == (self.output == "multi_view"), "multi_view iff views > 1")
        check(bool(self.domains) != (self.derived is not None), "exactly one of domains/derived")
        check(self.channels >= 0 and (self.channels > 0) == (self.output != "none"), "channels")
        check(self.target in TARGETS and (self.target == "as_decoded"
                                          or self.output == "pixel_regression"),
              f"target must be one of {TARGETS}, and only a pixel regression transforms its own")

    @property
    def dense(self) -> bool:
        """Whether the output is a per-pixel map (decoded with upsampling stages)."""
        return self.output.startswith("pixel_")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        d = asdict(self)
        d["domains"] = list(self.domains)
        return d


def _t(name: str, description: str, output: str, channels: int, loss: str, **kw: Any) -> TaskSpec:
    return TaskSpec(name, description, output, channels, loss, **kw)


# Facts on outputs follow the paper's supplementary material and the dataset release: e.g.
# curvature keeps two principal curvatures, egomotion regresses 3 pairwise 6-DoF poses, colorization
# predicts one of 313 quantised ab bins (Zhang et al. 2016), jigsaw one of 1000 permutations
# (Noroozi and Favaro 2016), semantic segmentation 18 ids (uncertain, background, 16 COCO classes).
TASKS: tuple[TaskSpec, ...] = (
    _t("autoencoding", "Reconstruct the input image through the 16x16x8 bottleneck.",
       "pixel_regression", 3, "l1", derived="identity", legacy_name="autoencoder"),
    _t("denoising", "Remove Gaussian noise added to the input image.",
       "pixel_regression", 3, "l1", derived="denoise", input="noisy_rgb", legacy_name="denoise"),
    _t("colorization", "Predict colour (quantised ab bins) from a greyscale image.",
       "pixel_classes", 313, "cross_entropy", derived="colorize", input="grey",
       source_only=True, legacy_name="colorization"),
    _t("inpainting", "Fill in the masked centre of the image.",
       "pixel_regression", 3, "l1", derived="inpaint", input="masked_rgb",
       source_only=True, legacy_name="impainting_whole"),
    _t("edge_texture", "2D texture edges (Canny-style) of the image.",
       "pixel_regression", 1, "l1", domains=("edge_texture",), legacy_name="edge2d"),
    _t("edge_occlusion", "3D occlusion edges: depth discontinuities.",
       "pixel_regression", 1, "l1", domains=("edge_occlusion",), masked=True, group="3d",
       legacy_name="edge3d"),
    _t("keypoints2d", "2D interest-point response on the image.",
       "pixel_regression", 1, "l1", domains=("keypoints2d",), legacy_name="keypoint2d"),
    _t("keypoints3d", "3D interest-point response on the geometry.",
       "pixel_regression", 1, "l1", domains=("keypoints3d",), masked=True, group="3d",
       legacy_name="keypoint3d"),
    _t("reshading", "Shading of the scene lit by a light at the camera.",
       "pixel_regression", 1, "l1", domains=("reshading",), masked=True, group="3d",
       legacy_name="reshade"),
    _t("normal", "Surface normals in camera coordinates.",
       "pixel_regression", 3, "l1", domains=("normal",), masked=True, group="3d",
       legacy_name="rgb2sfnorm"),
    _t("depth_zbuffer", "Depth along the optical axis (z-buffer).",
       "pixel_regression", 1, "l1", domains=("depth_zbuffer",), masked=True, group="3d",
       legacy_name="rgb2depth", target="log_depth"),
    _t("depth_euclidean", "Euclidean distance from the camera centre.",
       "pixel_regression", 1, "l1", domains=("depth_euclidean",), masked=True, group="3d",
       legacy_name="rgb2mist", target="log_depth"),
    _t("principal_curvature", "The two principal curvatures of the surface.",
       "pixel_regression", 2, "l2", domains=("principal_curvature",), masked=True, group="3d",
       legacy_name="curvature", target="standardised_curvature"),
    _t("room_layout", "Room box: centre, size and orientation, relative to the camera.",
       "vector_regression", 9, "l2", domains=("point_info",), group="low_dim_geometric",
       legacy_name="room_layout"),
    _t("vanishing_point", "The three Manhattan vanishing directions in the image.",
       "vector_regression", 9, "l2", domains=("point_info",), group="low_dim_geometric",
       legacy_name="vanishing_point_well_defined"),
    _t("segment_unsup2d", "Unsupervised segmentation of the image (pixel embedding).",
       "pixel_embedding", 64, "metric", domains=("segment_unsup2d",), legacy_name="segment2d"),
    _t("segment_unsup25d", "Unsupervised segmentation of image, depth and normals.",
       "pixel_embedding", 64, "metric", domains=("segment_unsup25d",), group="3d",
       legacy_name="segment25d"),
    _t("segment_semantic", "Semantic segmentation: object category per pixel.",
       "pixel_classes", 18, "cross_entropy", domains=("segment_semantic",), group="semantic",
       legacy_name="segmentsemantic_rb"),
    _t("class_object", "Distribution over the object categories in view.",
       "class_distribution", 1000, "kl", domains=("class_object",), group="semantic",
       legacy_name="class_1000"),
    _t("class_scene", "Distribution over scene (room) categories.",
       "class_distribution", 365, "kl", domains=("class_scene",), group="semantic",
       legacy_name="class_places"),
    _t("jigsaw", "Which permutation shuffled the image's 3x3 tiles.",
       "class_label", 1000, "cross_entropy", derived="jigsaw", input="tiles",
       source_only=True, legacy_name="jigsaw"),
    _t("egomotion", "Relative camera motion within a triple of views (3 x 6-DoF).",
       "multi_view", 18, "l2", domains=("point_info",), views=3, group="low_dim_geometric",
       legacy_name="ego_motion"),
    _t("fixated_pose", "Relative pose of two views fixated on the same point (6-DoF).",
       "multi_view", 6, "l2", domains=("point_info",), views=2, group="low_dim_geometric",
       legacy_name="fix_pose"),
    _t("nonfixated_pose", "Relative pose of two overlapping, non-fixated views (6-DoF).",
       "multi_view", 6, "l2", domains=("point_info",), views=2, group="low_dim_geometric",
       legacy_name="non_fixated_pose"),
    _t("point_matching", "Whether the centres of two views show the same 3D point.",
       "multi_view", 2, "cross_entropy", domains=("point_info",), views=2,
       group="low_dim_geometric", legacy_name="point_match"),
    _t("random", "A random-initialised encoder, never trained: the transfer baseline.",
       "none", 0, "none", derived="random", source_only=True, group="random",
       legacy_name="random"),
)

BY_NAME: dict[str, TaskSpec] = {t.name: t for t in TASKS}
BY_LEGACY_NAME: dict[str, TaskSpec] = {t.legacy_name: t for t in TASKS}
SOURCE_ONLY: frozenset[str] = frozenset(t.name for t in TASKS if t.source_only)
# Pseudo-sources of the tables (DESIGN.md): the gold standard and the from-scratch network.
PSEUDO_SOURCES = ("self", "pixels", "random")


def _check_registry() -> None:
    names = [t.name for t in TASKS]
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate task names in the registry: {sorted(names)}")
    legacy = [t.legacy_name for t in TASKS]
    if len(set(legacy)) != len(legacy) or "" in legacy:
        raise ConfigError("every task needs a distinct legacy_name")
    expected = {"colorization", "jigsaw", "inpainting", "random"}
    if SOURCE_ONLY != expected:  # DESIGN.md fixes the source-only tasks
        raise ConfigError(f"source-only tasks must be {sorted(expected)}, "
                          f"got {sorted(SOURCE_ONLY)}")


_check_registry()


def task_names() -> list[str]:
    """All task names in registry order."""
    return [t.name for t in TASKS]


def target_names() -> list[str]:
    """Tasks that can be transfer targets (all but the source-only ones)."""
    return [t.name for t in TASKS if not t.source_only]


def get_task(name: str) -> TaskSpec:
    """The spec of `name`; an unknown name gets an error with close matches."""
    try:
        return BY_NAME[name]
    except KeyError:
        hint = "Run `taskonomy-ray tasks` to list them."
        raise unknown_name("task", name, BY_NAME, hint) from None


def resolve(names: list[str] | tuple[str, ...] | None, *, targets_only: bool = False) -> list[str]:
    """Validate task names (all tasks when `names` is None), keeping registry order."""
    if names is None:
        return target_names() if targets_only else task_names()
    for n in names:
        spec = get_task(n)
        if targets_only and spec.source_only:
            raise ConfigError(
                f"{n!r} is source-only and cannot be a target; "
                f"targets are: {', '.join(target_names())}"
            )
    wanted = set(names)
    return [t for t in task_names() if t in wanted]


def from_legacy_name(name: str) -> str:
    """The dataset name of a task named as in the paper's code (e.g. `rgb2sfnorm` -> normal)."""
    if name in BY_NAME:
        return name
    try:
        return BY_LEGACY_NAME[name].name
    except KeyError:
        raise unknown_name("task name", name, [*BY_NAME, *BY_LEGACY_NAME],
                           "Legacy names are those of the paper's code.") from None


def table(rows: list[TaskSpec] | None = None) -> str:
    """A readable fixed-width table of the registry, for `taskonomy-ray tasks`."""
    rows = list(TASKS) if rows is None else rows
    head = ("name", "output", "ch", "loss", "views", "label from", "role", "description")
    body = [
        (
            t.name, t.output, str(t.channels), t.loss, str(t.views),
            ",".join(t.domains) if t.domains else f"rgb:{t.derived}",
            "source" if t.source_only else "target", t.description,
        )
        for t in rows
    ]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head) - 1)]
    lines = []
    for r in [head, *body]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1])
    return "\n".join(lines)
