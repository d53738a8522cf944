"""The one config schema. Its field names are the keys of search spaces and exported YAML."""
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field

from trainables.data.splits import DATASETS
from trainables.losses.foreground_split import FG_SOURCES
from trainables.methods import METHODS, get_method
from trainables.models.sources import ModelSourceError, check_spec
from trainables.precision import MEMORY_FORMATS, PRECISIONS
from trainables.sparsity.allocation import INIT_METHODS
from trainables.sparsity.dynamic import MASK_UPDATES
from trainables.sparsity.layers import SparsityError
from trainables.sparsity.patterns import CHANNEL, parse_pattern
from trainables.sparsity.schedule import SCHEDULES

SFKD_NORMS = ("map", "region")
# Keys that shape generated data only: a run of real data ignores them (its classes come from the files),
# so an export of such a run leaves them out rather than state a count that is not the data's.
SYNTHETIC_ONLY_KEYS = ("synthetic_size", "synthetic_classes")
LR_SCHEDULES = ("multistep", "cosine")
COMPILE_BACKENDS = ("inductor", "aot_eager")


class ConfigError(ValueError):
    """A config key that is unknown, of the wrong type or out of range."""


def did_you_mean(word, options) -> str:
    """'; did you mean 'alpha'?' for a near miss among `options`, else ''."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass
class DistillConfig:
    # Data
    dataset: str = "cifar100"
    data_dir: str | None = None
    download: bool = False
    val_fraction: float = 0.1
    split_seed: int = 0  # the validation split (and train/val subsets) depend on this alone, never on seed
    train_subset: int | None = None
    val_subset: int | None = None
    synthetic_size: int = 2000
    synthetic_classes: int = 10
    # The side every image is fitted to (shorter side resized, centre square kept); None: the images' own
    # size (32 for synthetic data). Augmentation follows it (docs/method.md, "Image sizes").
    image_size: int | None = None
    # Off-centre objects: each image pasted at a position fixed by split_seed on a canvas of this side, over
    # another image of its split in shuffled, faded tiles; shift_object is the object's side (default a third of the canvas).
    # docs/datasets.md, "Off-centre objects"
    shift: int | None = None
    shift_object: int | None = None
    # Recompute the student's BatchNorm statistics on training images before each evaluation. None (auto):
    # for students whose BatchNorm momentum is below 0.1 (torchvision's MobileNetV3 and EfficientNet use 0.01)
    bn_recalibrate: bool | None = None
    # Per-channel input normalisation; None: the training images' own mean/std. A teacher trained with
    # another (ImageNet's: [0.485, 0.456, 0.406] / [0.229, 0.224, 0.225]) needs its own here.
    mean: list | None = None
    std: list | None = None
    # Teacher and student
    teacher: str = "auto"
    teacher_arch: str = "resnet110"
    teacher_epochs: int = 240
    teacher_lr_schedule: str | None = None  # an auto teacher's lr schedule; None: the recipe's multistep
    # A zoo name, torchvision:NAME, timm:NAME or module:FILE_OR_MODULE:FACTORY (docs/models.md)
    student: str = "resnet20"
    # A file to initialise the student from before its masks are drawn (docs/models.md, Weights)
    student_weights: str | None = None
    # Loss: alpha*CE + beta*KD + gamma*(L_fg + bg_weight*L_bg) + at_weight*AT + sp_weight*SP; the method
    # decides which terms exist (FT: CE at weight 1 only). alpha/beta left out take the method's `weights`.
    method: str = "sfkd"
    arm: str | None = None  # a label for one arm of a comparison (set by a space's `arms:`); changes nothing
    alpha: float | None = None
    beta: float | None = None
    gamma: float = 0.5
    bg_weight: float = 0.4
    fg_size: int | None = None  # the foreground square's side in map cells (4 unless fg_fraction is given)
    fg_fraction: float | None = None  # or its side as a fraction of the distilled map's side (any image size)
    # Where SF-KD's foreground is: center (the paper's square), teacher (per image, the square's area of the
    # teacher's most attended cells) or teacher_soft (the teacher's attention over its maximum as weights).
    # docs/method.md, "A foreground the teacher chooses"
    fg_source: str = "center"
    # map: MSE over the full masked maps (He et al. 2025, Eqs. 5-6; docs/method.md, Losses); region: over each region's area
    sfkd_norm: str = "map"
    temperature: float = 4.0
    at_weight: float = 1000.0
    sp_weight: float = 3000.0
    # Taps: module names (layer3, features.8), zoo stage indices, -1 for the last map before pooling, or
    # "groups" for every stage group's output; None: the method's own (AT: groups, the others: -1)
    feature_stages: list | None = None
    teacher_feature_stages: list | None = None  # the teacher's taps when its modules are named otherwise
    # Sparsity
    density: float | None = None
    sparsity: float | None = None
    # None: ERK for unstructured masks; for N:M and channel, uniform (ranked by the student's own initial
    # weights), or magnitude (by the teacher's copy)
    sparse_init: str | None = None
    # unstructured; channel (whole channels removed: a smaller dense student); or N:M (at most N of every M
    # consecutive input-channel weights). docs/sparsity.md, Patterns
    sparsity_pattern: str = "unstructured"
    # channel: every pruned layer keeps a multiple of this many channels (Torch-Pruning's round_to), so
    # vectorised kernels run at full width (8 fp32 lanes in AVX2, 16 in AVX-512). docs/sparsity.md, Patterns
    channel_multiple: int = 1
    scored_positions: bool = True
    score_per_class: int = 10  # SNIP/GraSP score on this many training images per class (stratified, seeded)
    prune_schedule: str = "one-shot"
    # Dynamic sparsity: none (static masks), set (drop by magnitude, grow at random) or rigl (grow where the
    # dense gradient is largest), every mask_update_interval steps until mask_update_end of training, replacing
    # drop_fraction of each layer's active weights at first, annealed by a cosine (docs/sparsity.md)
    mask_update: str = "none"
    mask_update_interval: int = 100
    drop_fraction: float = 0.3
    mask_update_end: float = 0.75
    prune_steps: int = 5
    prune_interval: int = 1
    # Optimisation
    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "multistep"
    lr_milestones: list = field(default_factory=lambda: [0.625, 0.75, 0.875])
    lr_decay: float = 0.1
    seed: int = 0
    # Read the test split once, after the last epoch (a study's finished runs; a search never does).
    test_at_end: bool = False
    # On CUDA, cuDNN's deterministic kernels (and no autotuning), so a seed reproduces a run to the last
    # digit on the same GPU and software; a study sets it. CPU runs are deterministic either way.
    deterministic: bool = False
    device: str = "auto"
    # bf16 autocast on CUDA and on CPUs with native bf16 (auto), or fp32 / bf16 everywhere. The precision
    # a run really used is recorded with its results and checkpoint.
    precision: str = "auto"
    memory_format: str = "auto"  # channels_last on CUDA and with CPU bf16; contiguous for CPU fp32
    # Speed levers that must not change the numbers (tests compare them with the plain path)
    compile: bool = False  # torch.compile the training forward of student and teacher
    compile_backend: str = "inductor"
    teacher_cache: bool = True  # teacher outputs of each epoch's augmented images, shared by all trials
    # None: epoch e trains on a fresh augmentation drawn from (seed, e). An int V reuses V fixed views
    # (epoch e sees view e mod V): an opt-in that CHANGES THE TRAINING DISTRIBUTION (fewer distinct crops).
    cache_views: int | None = None
    cache_max_gb: float = 4.0
    cache_dir: str | None = None  # default: node-local, teacher_cache.default_cache_root()

    def __post_init__(self):
        self.validate()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict) -> "DistillConfig":
        unknown = sorted(set(values) - set(cls.keys()))
        if unknown:
            raise ConfigError(f"unknown config key {unknown[0]!r}{did_you_mean(unknown[0], cls.keys())}")
        hints = typing.get_type_hints(cls)
        coerced = {k: _coerce(k, v, hints[k]) for k, v in values.items()}
        return cls(**coerced)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("sparsity")  # resolved into density
        return d

    def replace(self, **changes) -> "DistillConfig":
        d = self.to_dict()
        if "sparsity" in changes:
            d.pop("density")
        for given, other in (("fg_fraction", "fg_size"), ("fg_size", "fg_fraction")):  # one replaces the other
            if given in changes and other not in changes:
                d[other] = None
        d.update(changes)
        return DistillConfig.from_dict(d)

    # -- checks -------------------------------------------------------------------------------
    def validate(self) -> None:
        for f in dataclasses.fields(self):  # NaN is no value, and no key means anything at infinity
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name}: {value!r} is not a finite number")
        if self.density is not None and self.sparsity is not None:
            raise ConfigError("give either density or sparsity, not both")
        if self.sparsity is not None:
            _in_range("sparsity", self.sparsity, 0.0, 1.0, lo_open=False, hi_open=True)
            self.density, self.sparsity = 1.0 - float(self.sparsity), None
        try:
            nm = parse_pattern(self.sparsity_pattern)
        except SparsityError as e:
            raise ConfigError(str(e)) from None
        if nm is not None:
            self._check_nm(*nm)
        elif self.sparsity_pattern == CHANNEL:
            self._check_ranked_start("ranks channels by the L2 norm of the start weights")
        if self.sparse_init is None:
            self.sparse_init = "ERK"
        if self.density is None:
            self.density = 0.9
        _in_range("density", self.density, 0.0, 1.0, lo_open=True)
        _one_of("method", self.method, METHODS)
        # alpha and beta left out take the method's literature recipe (docs/method.md, Methods); the
        # method then fixes the weights of terms it does not have (FT: CE at weight 1, nothing else).
        method = get_method(self.method)
        default_alpha, default_beta = method.weights
        self.alpha = default_alpha if self.alpha is None else self.alpha
        self.beta = default_beta if self.beta is None else self.beta
        method.resolve(self)
        if self.feature_stages is None:
            self.feature_stages = list(method.default_stages)
        _one_of("sfkd_norm", self.sfkd_norm, SFKD_NORMS)
        _one_of("mask_update", self.mask_update, MASK_UPDATES)
        if self.mask_update != "none":
            if self.prune_schedule != "one-shot":
                raise ConfigError(f"mask_update: {self.mask_update} moves masks of a fixed density; with prune_schedule "
                                  f"{self.prune_schedule} the density changes too, which is not defined; use one or the other")
            if self.sparsity_pattern != "unstructured":
                raise ConfigError(f"mask_update: {self.mask_update} moves single weights; sparsity_pattern "
                                  f"{self.sparsity_pattern} keeps a structure it would break; use unstructured")
        if self.teacher_lr_schedule is not None:
            _one_of("teacher_lr_schedule", self.teacher_lr_schedule, LR_SCHEDULES)
        _one_of("fg_source", self.fg_source, FG_SOURCES)
        _one_of("dataset", self.dataset, DATASETS)
        for key in ("student", "teacher_arch"):
            try:
                check_spec(getattr(self, key))
            except ModelSourceError as e:
                raise ConfigError(f"{key}: {e}") from None
        _one_of("sparse_init", self.sparse_init, INIT_METHODS)
        _one_of("prune_schedule", self.prune_schedule, SCHEDULES)
        _one_of("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _one_of("compile_backend", self.compile_backend, COMPILE_BACKENDS)
        _one_of("precision", self.precision, PRECISIONS)
        _one_of("memory_format", self.memory_format, MEMORY_FORMATS)
        for k in ("alpha", "beta", "gamma", "at_weight", "sp_weight", "weight_decay", "momentum"):
            _in_range(k, getattr(self, k), 0.0, float("inf"))
        _in_range("bg_weight", self.bg_weight, 0.0, float("inf"))
        _in_range("val_fraction", self.val_fraction, 0.0, 1.0, hi_open=True)
        _in_range("temperature", self.temperature, 0.0, float("inf"), lo_open=True)
        _in_range("lr", self.lr, 0.0, float("inf"), lo_open=True)
        _in_range("lr_decay", self.lr_decay, 0.0, 1.0, lo_open=True)
        _in_range("drop_fraction", self.drop_fraction, 0.0, 1.0)
        _in_range("mask_update_end", self.mask_update_end, 0.0, 1.0)
        for k in ("epochs", "batch_size", "teacher_epochs", "prune_steps", "prune_interval", "score_per_class",
                  "mask_update_interval", "channel_multiple",
                  "synthetic_size"):
            _in_range(k, getattr(self, k), 1, float("inf"))
        if self.image_size is not None:
            _in_range("image_size", self.image_size, 8, float("inf"))
        if self.shift is not None:
            _in_range("shift", self.shift, 8, float("inf"))
        if self.shift_object is not None:
            if self.shift is None:
                raise ConfigError("shift_object is the object's side on a shift canvas; give shift (the canvas side) too")
            _in_range("shift_object", self.shift_object, 4, self.shift)
        _in_range("synthetic_classes", self.synthetic_classes, 2, float("inf"))
        if self.fg_size is not None and self.fg_fraction is not None:
            raise ConfigError("give either fg_size (map cells) or fg_fraction (of the map's side), not both")
        if self.fg_fraction is None:
            self.fg_size = 4 if self.fg_size is None else self.fg_size
            _in_range("fg_size", self.fg_size, 0, float("inf"))
        else:
            _in_range("fg_fraction", self.fg_fraction, 0.0, 1.0, lo_open=True)
        _in_range("cache_max_gb", self.cache_max_gb, 0.0, float("inf"))
        for k in ("train_subset", "val_subset", "cache_views"):
            if getattr(self, k) is not None:
                _in_range(k, getattr(self, k), 1, float("inf"))
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and (len(values) != 3 or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
                raise ConfigError(f"{key} must be three finite numbers (one per RGB channel), got {values!r}")
        if self.std is not None and min(self.std) <= 0:
            raise ConfigError(f"std must be three numbers > 0, got {self.std!r}")
        for key in ("feature_stages", "teacher_feature_stages"):
            taps = getattr(self, key)
            if taps is None and key == "teacher_feature_stages":
                continue
            if not taps or not all(isinstance(s, (int, str)) and not isinstance(s, bool) and s != "" for s in taps):
                raise ConfigError(f"{key} must be a non-empty list of module names or stage indices, got {taps!r}")
        if self.teacher_feature_stages is not None and len(self.teacher_feature_stages) != len(self.feature_stages):
            raise ConfigError(f"teacher_feature_stages has {len(self.teacher_feature_stages)} taps and feature_stages "
                              f"{len(self.feature_stages)}: each student tap is distilled from one teacher tap")
        if sorted(self.lr_milestones) != list(self.lr_milestones) or not all(0 < m < 1 for m in self.lr_milestones):
            raise ConfigError(f"lr_milestones must be increasing fractions of the budget in (0, 1), got {self.lr_milestones!r}")
        if self.sparse_init == "magnitude" or self.prune_schedule in ("iterative", "cubic"):
            if self.student != self.teacher_arch:
                raise ConfigError(f"sparse_init magnitude and iterative pruning start from the teacher's weights, "
                                  f"so student ({self.student}) must equal teacher_arch ({self.teacher_arch})")
            if self.prune_schedule in ("iterative", "cubic") and self.sparse_init != "magnitude":
                raise ConfigError(f"prune_schedule {self.prune_schedule} prunes by magnitude; set sparse_init: magnitude")
        if self.dataset == "synthetic" and self.data_dir:
            raise ConfigError(f"data_dir {self.data_dir} is given but dataset is synthetic, which reads no folder; "
                              f"set the dataset too (--dataset imagefolder, cifar10 or cifar100)")
        if self.teacher == "none" and self.uses_teacher:
            raise ConfigError(f"method {self.method} with sparse_init {self.sparse_init} needs a teacher; teacher is 'none'")

    def _check_nm(self, n: int, m: int) -> None:
        """N:M fixes the density (N/M on every layer that can hold it) and picks each group's positions by
        magnitude, once: density, when given, must say the same, and the init and schedule must fit."""
        nominal = n / m
        if self.density is None:
            self.density = nominal
        elif abs(float(self.density) - nominal) > 1e-9:
            raise ConfigError(f"sparsity_pattern {self.sparsity_pattern} keeps {n} of every {m} weights (density "
                              f"{nominal:g}); density {self.density:g} cannot hold with it: leave density out")
        self._check_ranked_start("keeps each group's largest |w|")

    def _check_ranked_start(self, ranks: str) -> None:
        """N:M and channel patterns rank the weights the student starts from (its own initial weights, or the
        teacher's copy), once, before training."""
        if self.sparse_init is None:
            self.sparse_init = "uniform"
        if self.sparse_init not in ("uniform", "magnitude"):
            raise ConfigError(f"sparsity_pattern {self.sparsity_pattern} {ranks}: sparse_init must be uniform (the "
                              f"student's own initial weights) or magnitude (the teacher's copy), not {self.sparse_init}")
        if self.prune_schedule != "one-shot":
            raise ConfigError(f"sparsity_pattern {self.sparsity_pattern} is drawn once, before training (prune_schedule "
                              f"one-shot); {self.prune_schedule} pruning is built for unstructured masks only")

    @property
    def channel(self) -> bool:
        """Whether whole channels are removed (a smaller dense student) rather than weights masked."""
        return self.sparsity_pattern == CHANNEL

    @property
    def nm(self) -> tuple[int, int] | None:
        """(N, M) of an N:M pattern, None for unstructured masks."""
        return parse_pattern(self.sparsity_pattern)

    def fg_cells(self, height: int, width: int) -> int:
        """The foreground square's side on a height x width map: fg_size, or fg_fraction of the shorter
        side rounded (at least 1 cell), so one space fits 32 px and 224 px (docs/method.md, Losses)."""
        if self.fg_fraction is None:
            return int(self.fg_size)
        return max(1, round(self.fg_fraction * min(height, width)))

    @property
    def teacher_taps(self) -> list:
        """The teacher's taps: its own names when given, else the student's."""
        return list(self.teacher_feature_stages or self.feature_stages)

    @property
    def uses_teacher(self) -> bool:
        return get_method(self.method).needs_teacher or self.sparse_init == "magnitude"


def _one_of(key, value, allowed):
    if value not in allowed:
        raise ConfigError(f"{key}: unknown value {value!r}{did_you_mean(value, allowed)} "
                          f"(expected one of {', '.join(map(str, allowed))})")


def _in_range(key, value, lo, hi, lo_open=False, hi_open=False):
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi):
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        hi_s = "inf" if hi == float("inf") else hi
        raise ConfigError(f"{key}: {value!r} is out of range; expected a value in {lb}{lo}, {hi_s}{rb}")


def _coerce(key, value, hint):
    """Accept YAML's values for the declared type: ints for floats, nothing else implicit."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if isinstance(hint, types.UnionType) or args else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: null is not allowed; expected {getattr(base, '__name__', base)}")
    origin = typing.get_origin(base) or base
    if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if origin is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if origin is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if origin is bool and isinstance(value, bool):
        return value
    if origin is str and isinstance(value, str):
        return value
    if key == "sparsity_pattern" and isinstance(value, int) and not isinstance(value, bool):
        raise ConfigError(f"sparsity_pattern: {value!r} is a number: YAML reads an unquoted N:M such as 2:4 as a "
                          f"base-60 number; quote it ('2:4')")
    if origin is list and isinstance(value, (list, tuple)):
        return list(value)
    expected = getattr(origin, "__name__", str(origin))
    raise ConfigError(f"{key}: {value!r} has the wrong type; expected {expected}")
