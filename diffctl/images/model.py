"""ImageDiffusion: a class-conditional (or unconditional) EDM image model on the shared kernels.

Config / model split as for the agents: ``ImageDiffusionConfig`` holds every setting, ``ImageDiffusion`` the
network and what it does with it. Training is the EDM loss with label dropout (the null label ``num_classes``
teaches the unconditional model classifier-free guidance needs). Sampling runs any solver of
``kernels.sample`` through ``kernels.guidance`` (plain, classifier-free or adaptive guidance); inversion is
``kernels.inversion`` (DDIM or EDICT); classification is ``images.classifier``. Images are (n, C, H, W) floats
in [-1, 1].
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from diffctl.core.config import Config, Configurable
from diffctl.core.modules import eval_mode, param_device
from diffctl.core.persistence import agent_config, construct, read_agent_config, restore, write_agent_dir
from diffctl.core.sampler import SamplerConfig, refuse_fused
from diffctl.core.seeding import SeededSampler
from diffctl.images.classifier import Classification, classifier_sigmas, diffusion_classify
from diffctl.kernels import inversion, schedules
from diffctl.kernels.denoisers import EDMDenoiser
from diffctl.kernels.guidance import AdaptiveGuidance, ClassifierFreeGuidance
from diffctl.kernels.losses import edm_loss
from diffctl.kernels.samplers import sample as run_sampler
from diffctl.nets import build_image_backbone

VERSION = 1
INVERSION_METHODS = ("ddim", "edict")


@dataclass
class ImageDiffusionConfig(Config):
    """Settings of ``ImageDiffusion``."""

    section: ClassVar[str] = "ImageDiffusion"

    channels: int = 1
    """Image channels (1 or 3); read off the data by the train pipeline."""
    image_size: int = 16
    """Square image side in pixels; read off the data."""
    num_classes: int = 0
    """Labels of a class-conditional model (0: unconditional); read off the data unless ``conditional`` is
    off."""
    conditional: bool = True
    """Train on the data's labels when it has them."""
    backbone: str = "unet2d"
    """``unet2d`` or ``dit2d`` (``diffctl.nets.IMAGE_BACKBONES``)."""
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    """Options of the backbone (e.g. ``base``, ``mults``, ``attn_res`` for unet2d; ``patch``, ``dim``,
    ``depth``, ``heads`` for dit2d)."""
    sigma_data: float = 0.5
    """EDM data standard deviation (images in [-1, 1])."""
    p_mean: float = -1.2
    """Mean of ln(sigma) during training (EDM)."""
    p_std: float = 1.2
    """Standard deviation of ln(sigma) during training (EDM)."""
    label_dropout: float = 0.1
    """Share of training labels replaced by the null label (classifier-free guidance)."""
    edict_p: float = 0.93
    """EDICT's mixing weight."""
    classify_levels: int = 24
    """Noise levels (one noise draw each) the diffusion classifier scores every label on."""
    classify_first_round: int = 6
    """Levels scored for every label before the unlikely ones are eliminated."""
    classify_keep: int = 3
    """Labels kept after the first round."""
    seed: int = 0
    """Seed of the initial weights."""

    def validate(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"ImageDiffusion.channels must be 1 or 3, got {self.channels}")
        if self.image_size < 4:
            raise ValueError(f"ImageDiffusion.image_size must be >= 4, got {self.image_size}")
        if self.num_classes < 0:
            raise ValueError(f"ImageDiffusion.num_classes must be >= 0, got {self.num_classes}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"ImageDiffusion.label_dropout must lie in [0, 1), got {self.label_dropout}")
        if self.sigma_data <= 0:
            raise ValueError(f"ImageDiffusion.sigma_data must be > 0, got {self.sigma_data}")
        if not 0.5 <= self.edict_p < 1:
            raise ValueError(f"ImageDiffusion.edict_p must lie in [0.5, 1), got {self.edict_p}")
        if min(self.classify_levels, self.classify_first_round, self.classify_keep) < 1:
            raise ValueError(
                "ImageDiffusion.classify_levels, classify_first_round and classify_keep must be >= 1"
            )


@dataclass
class Inversion:
    """The latents of inverted images: ``x`` (and EDICT's ``y``) at ``sigmas[0]``, with what produced them."""

    method: str
    x: torch.Tensor
    y: torch.Tensor | None
    labels: torch.Tensor | None
    sigmas: torch.Tensor


class ImageDiffusion(Configurable, SeededSampler):
    """Image generation, inversion and classification; see the module docstring."""

    config_class: ClassVar[type[ImageDiffusionConfig]] = ImageDiffusionConfig

    def __init__(self, *, sampler: SamplerConfig | dict | None = None, **settings: Any) -> None:
        self.config = cfg = ImageDiffusionConfig.from_dict(settings)
        self.sampler = (
            sampler if isinstance(sampler, SamplerConfig) else SamplerConfig.from_dict(sampler or {})
        )
        refuse_fused(self.sampler, "ImageDiffusion")
        self.normalizers: dict[str, Any] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.network: nn.Module = build_image_backbone(
                cfg.backbone, cfg.channels, cfg.image_size, self.num_classes, **cfg.backbone_kwargs
            )
        self.seed(None)

    # ----- construction from data ----------------------------------------------------------------------
    @classmethod
    def make_dataset(cls, store: Any, task: Any) -> Any:
        from diffctl.datasets.images import ImageDataset

        return ImageDataset(store, split=str(task.get("split", "train")))

    @classmethod
    def data_dims(cls, dataset: Any) -> dict[str, int]:
        """``channels``, ``image_size`` and ``num_classes`` of an ``ImageDataset``."""
        c, h, w = dataset.image_shape
        if h != w:
            raise ValueError(f"ImageDiffusion needs square images, the data has {h}x{w}")
        labelled = bool(dataset.num_classes) and bool((dataset.labels >= 0).all())
        return {"channels": c, "image_size": h, "num_classes": dataset.num_classes if labelled else 0}

    @property
    def num_classes(self) -> int:
        return self.config.num_classes if self.config.conditional else 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.config.channels, self.config.image_size, self.config.image_size)

    def denoiser(self) -> EDMDenoiser:
        """``D(x, sigma, labels)`` with EDM preconditioning around the backbone."""
        return EDMDenoiser(self.network, self.config.sigma_data)

    def to(self, device: Any) -> ImageDiffusion:
        self.network.to(device)
        return self

    # ----- training ------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """EDM loss on ``batch["images"]`` with labels dropped to the null label at ``label_dropout``."""
        cfg = self.config
        x0 = batch["images"].float()
        labels = None
        if self.num_classes:
            labels = batch["labels"].long().to(x0.device)
            drop = torch.rand(labels.shape, device=labels.device) < cfg.label_dropout
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        loss = edm_loss(self.denoiser(), x0, labels, P_mean=cfg.p_mean, P_std=cfg.p_std).mean()
        return loss, {"loss": float(loss.detach())}

    # ----- inputs --------------------------------------------------------------------------------------
    def check_images(self, x: Any, what: str = "images") -> torch.Tensor:
        """``x`` as float32 (n, C, H, W) in this model's shape, else a ValueError saying why."""
        if not isinstance(x, torch.Tensor):
            try:
                x = torch.as_tensor(x)
            except Exception as err:
                raise ValueError(
                    f"{what} must be an array of shape (n, {', '.join(map(str, self.image_shape))})"
                ) from err
        if x.is_complex() or not (x.is_floating_point() or x.dtype == torch.uint8):
            raise ValueError(f"{what} must be float in [-1, 1] (or uint8), got dtype {x.dtype}")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{what} must have shape (n, {', '.join(map(str, self.image_shape))}), got {tuple(x.shape)}"
            )
        x = x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()
        if not torch.isfinite(x).all():
            raise ValueError(f"{what} hold NaN or inf")
        return x.to(param_device(self.network))

    def check_labels(self, labels: Any, n: int) -> torch.Tensor | None:
        """Labels as a (n,) long tensor in [0, num_classes) (an int is repeated), None for unconditional."""
        if labels is None:
            return None
        if not self.num_classes:
            raise ValueError("this model is unconditional: pass labels=None")
        t = torch.as_tensor(labels)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"labels must be integers in [0, {self.num_classes}), got dtype {t.dtype}")
        t = t.long().reshape(-1)
        t = t.expand(n).clone() if t.numel() == 1 else t
        if t.shape != (n,):
            raise ValueError(f"labels must be one integer or {n} of them, got {t.numel()}")
        if bool(((t < 0) | (t >= self.num_classes)).any()):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got values {sorted(set(t.tolist()))[:10]}"
            )
        return t.to(param_device(self.network))

    def _sampler(self, solver: str | None, steps: int | None) -> SamplerConfig:
        changes = {k: v for k, v in (("solver", solver), ("steps", steps)) if v is not None}
        return self.sampler.replace(**changes) if changes else self.sampler

    def grid(self, sampler: SamplerConfig | None = None) -> torch.Tensor:
        """The Karras sigma grid of ``sampler`` (default: the model's), ending in 0."""
        s = sampler or self.sampler
        return schedules.karras(s.steps, s.sigma_min, s.sigma_max, s.rho).float()

    def guided(
        self, labels: torch.Tensor | None, guidance: float, adaptive: float | None = None, sigmas: Any = None
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The denoiser sampling runs: conditional, classifier-free guided (``guidance`` != 1), or adaptive
        (``adaptive``: the cosine similarity of cond/uncond predictions at which a sample stops being
        guided)."""
        model = self.denoiser()
        if labels is None:
            return lambda x, s: model(x, s, None)
        null = torch.full_like(labels, self.num_classes)
        if adaptive is not None and guidance != 1.0:
            return AdaptiveGuidance(model, labels, null, guidance, cos_threshold=adaptive, sigmas=sigmas)
        return ClassifierFreeGuidance(model, labels, null, guidance)

    # ----- public API ----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels: Any = None,
        guidance: float = 1.0,
        solver: str | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        *,
        adaptive: float | None = None,
        noise: torch.Tensor | None = None,
        stats: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """``n`` images (n, C, H, W) in [-1, 1]. ``labels``: one label, n labels, or None (random labels for a
        conditional model, drawn from ``generator``). ``guidance``: classifier-free guidance scale;
        ``adaptive``: stop guiding a sample once cond and uncond agree to this cosine similarity. ``stats``,
        when given, receives ``nfe`` (network evaluations per image)."""
        if int(n) < 1:
            raise ValueError(f"n must be a positive number of images, got {n}")
        n = int(n)
        gen = generator if generator is not None else self.generator
        if labels is None and self.num_classes:
            labels = torch.randint(0, self.num_classes, (n,), generator=gen)
        lab = self.check_labels(labels, n)
        sampler = self._sampler(solver, steps)
        sigmas = self.grid(sampler)
        device = param_device(self.network)
        shape = (n, *self.image_shape)
        if noise is not None and tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        x = (torch.randn(shape, generator=gen) if noise is None else noise.float()).to(device)
        with eval_mode(self.network):
            denoise = self.guided(lab, float(guidance), adaptive, sigmas)
            counter = _CountingDenoiser(denoise, n)
            out = run_sampler(counter, x * sigmas[0], sigmas.to(device), solver=sampler.solver, generator=gen,
                              **sampler.options)  # fmt: skip
        if stats is not None:
            per_call = 1 if lab is None or guidance == 1.0 else 2
            saved = getattr(denoise, "nfe_saved", 0.0)
            stats["nfe"] = counter.calls * per_call - saved
        return out.clamp(-1.0, 1.0)

    @torch.no_grad()
    def sample_best_of(
        self,
        n: int,
        candidates: int,
        verifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        labels: Any = None,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> torch.Tensor:
        """Initial-noise selection: for each of ``n`` images sample ``candidates`` seeds and keep the one
        ``verifier(images, labels) -> (m,) scores`` rates highest (``options`` as for ``sample``)."""
        if int(candidates) < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        gen = generator if generator is not None else self.generator
        if labels is None and self.num_classes:
            labels = torch.randint(0, self.num_classes, (int(n),), generator=gen)
        lab = self.check_labels(labels, int(n))
        k = int(candidates)
        rep = None if lab is None else lab.repeat_interleave(k)
        images = self.sample(int(n) * k, labels=rep, generator=gen, **options)
        fake_labels = rep if rep is not None else torch.zeros(len(images), dtype=torch.long)
        scores = torch.as_tensor(verifier(images, fake_labels)).reshape(int(n), k)
        best = scores.argmax(1) + torch.arange(int(n)) * k
        return images[best]

    @torch.no_grad()
    def invert(self, x: Any, labels: Any = None, method: str = "edict", steps: int = 50) -> Inversion:
        """Latents at ``sigma_max`` from which ``reconstruct`` returns ``x`` (EDICT: exactly, up to float
        rounding; DDIM: approximately, better with more steps). ``labels`` condition the denoiser."""
        if method not in INVERSION_METHODS:
            raise ValueError(f"unknown inversion method {method!r}; valid: {INVERSION_METHODS}")
        if int(steps) < 2:
            raise ValueError(f"inversion needs steps >= 2, got {steps}")
        images = self.check_images(x)
        lab = self.check_labels(labels, len(images))
        sigmas = inversion.inversion_grid(self.grid(self.sampler.replace(steps=int(steps))))
        with eval_mode(self.network):
            denoise = self.guided(lab, 1.0)
            if method == "ddim":
                return Inversion(method, inversion.ddim_invert(denoise, images, sigmas), None, lab, sigmas)
            xs, ys = inversion.edict_invert(denoise, images, sigmas, self.config.edict_p)
        return Inversion(method, xs, ys, lab, sigmas)

    @torch.no_grad()
    def reconstruct(self, inv: Inversion, labels: Any = None) -> torch.Tensor:
        """Sample back from inverted latents; ``labels`` (default: the inversion's) edits the result."""
        if not isinstance(inv, Inversion):
            raise ValueError(f"reconstruct takes what invert returned, got {type(inv).__name__}")
        lab = inv.labels if labels is None else self.check_labels(labels, len(inv.x))
        with eval_mode(self.network):
            denoise = self.guided(lab, 1.0)
            if inv.method == "ddim":
                return inversion.ddim_sample(denoise, inv.x, inv.sigmas)
            x, _ = inversion.edict_sample(denoise, inv.x, inv.y, inv.sigmas, self.config.edict_p)
        return x.float()

    @torch.no_grad()
    def classify(
        self,
        x: Any,
        *,
        generator: torch.Generator | None = None,
        details: bool = False,
        progress: bool = False,
    ) -> Any:
        """Labels (n,) by the diffusion classifier (lowest denoising error, ``classify_*`` settings);
        ``details=True`` returns the ``Classification`` (per-label errors, NFE per image)."""
        if not self.num_classes:
            raise ValueError("classify needs a class-conditional model; this one is unconditional")
        images = self.check_images(x)
        cfg = self.config
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        levels = classifier_sigmas(cfg.classify_levels, cfg.p_mean, cfg.p_std)
        rounds = {"first_round": cfg.classify_first_round, "keep": cfg.classify_keep}
        with eval_mode(self.network):
            result: Classification = diffusion_classify(
                self.denoiser(),
                images,
                self.num_classes,
                levels,
                sigma_data=cfg.sigma_data,
                generator=gen,
                **rounds,
            )
        return result if details else result.labels

    def after_training(self, run_dir: str | os.PathLike[str], dataset: Any = None) -> Path | None:
        """Write ``samples.png`` in ``run_dir``: one row per class (8 samples each), or 64 samples; skipped
        with a warning when plotting fails (an optional output)."""
        import warnings

        from diffctl.images.grid import save_grid

        g = torch.Generator().manual_seed(0)
        classes = self.num_classes
        labels = torch.arange(classes).repeat_interleave(8) if classes else None
        images = self.sample(len(labels) if classes else 64, labels=labels, generator=g)
        try:
            return save_grid(images, Path(run_dir) / "samples.png", nrow=8)
        except Exception as err:  # a missing plotting backend never costs the run
            warnings.warn(f"samples.png of {run_dir} skipped: {type(err).__name__}: {err}", stacklevel=2)
            return None

    # ----- persistence ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_agent_dir(path, agent_config(self, VERSION), self.network.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> ImageDiffusion:
        """Load a saved model; ``overrides`` change sampler fields (``solver``, ``steps``, ...)."""
        config, state = read_agent_config(path, cls.__name__, VERSION, keys=("hyperparameters", "sampler"))
        try:
            sampler = SamplerConfig.from_dict({**config["sampler"], **overrides})
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
        model = construct(cls, path, sampler=sampler, **config["hyperparameters"])
        restore(model, config, state, path).network.eval()
        return model

    @classmethod
    def from_config(cls, config: Config, **kwargs: Any) -> ImageDiffusion:
        if not isinstance(config, ImageDiffusionConfig):
            raise TypeError(f"ImageDiffusion is built from an ImageDiffusionConfig, got {config!r}")
        return cls(**kwargs, **config.to_dict())


class _CountingDenoiser:
    """Counts sampler calls (each a batch of ``n``) of a denoiser."""

    def __init__(self, denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], n: int) -> None:
        self.denoise, self.n, self.calls = denoise, n, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.denoise(x, sigma)
