"""From a hydra config to a trained agent: compose, open or generate the data, build the agent, train.

``diffctl train`` (and ``diffctl quickstart``) are thin wrappers around ``compose_config`` and ``run``.
Policies, datasets and simulators are imported lazily so ``diffctl.train`` itself stays light.

An agent class steers its own training through optional hooks, so the pipeline has no per-class cases:
``make_dataset(store, task)`` (classmethod) builds its training data instead of the task's
``SequenceDataset``; ``data_dims(dataset)`` (classmethod) reads its dimensions off that data (e.g. an
image model's channels, size and classes); ``fit(dataset, mode)`` replaces ``fit_normalizers`` on the store;
``after_training(run_dir, dataset)``, called on the saved checkpoint, writes extra outputs of a finished run
(e.g. a grid of samples); and a ``Builder``
registered with ``register_builder`` (for classes whose construction needs more than the config, e.g. a
consistency student distilled from a teacher checkpoint) builds the agent and may consume extra config keys.
"""

from __future__ import annotations

import datetime
import inspect
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffctl.atomic import write_text
from diffctl.core.config import coerce
from diffctl.core.sampler import SamplerConfig
from diffctl.train.checkpoint import write_json
from diffctl.train.config import TrainConfig
from diffctl.train.distributed import DistInfo, barrier, collective_device, init_distributed

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
GROUPS = ("task", "policy", "sampler", "planner", "image_model", "world_model", "finetune", "experiment")
# Sections that select the agent instead of ``policy`` when set, in this order.
AGENT_SECTIONS = ("planner", "image_model", "world_model")
# Agent settings the pipeline reads off the task and the data instead of the policy / planner section.
DATA_KEYS = (
    "obs_dim", "action_dim", "goal_dim", "horizon", "n_obs_steps", "n_action_steps", "state_dim",
    "channels", "image_size", "num_classes", "image_shapes",
)  # fmt: skip
# Keys of a policy/planner section that are not constructor arguments; ``teacher`` is read by the builders
# that declare it (e.g. ConsistencyPolicy's) and refused by the others.
BUILDER_KEYS = ("teacher",)
RESERVED_POLICY_KEYS = ("name", "class", "normalizer", "obs_normalizer", *BUILDER_KEYS)
# Fitting keys every agent section has: normalizer modes (obs_normalizer null: the same as normalizer).
FIT_DEFAULTS = {"normalizer": "limits", "obs_normalizer": None}


def group_options(group: str) -> list[str]:
    """Names of the configs available in a hydra group (``task``, ``policy``, ``sampler``, ``planner``)."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def compose_config(overrides: Sequence[str] = (), config_name: str = "train") -> Any:
    """Compose the packaged hydra tree with ``key=value`` overrides; bad keys or options raise ValueError."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    malformed = [o for o in overrides if "=" not in o]
    if malformed:
        raise ValueError(f"expected hydra overrides of the form key=value, got {malformed}")
    for override in overrides:
        group, _, value = override.partition("=")
        if group in GROUPS and value not in group_options(group):
            raise ValueError(f"unknown {group} {value!r}; available: {', '.join(group_options(group))}")
    try:
        return _compose(config_name, overrides)
    except (HydraException, OmegaConfBaseException) as err:
        cause = err.__cause__ or err
        message = " ".join(str(cause).split())
        raise ValueError(
            f"invalid config override: {message}{_valid_keys_hint(overrides, config_name)}"
        ) from err


def register_defaults() -> None:
    """Put the typed configs' defaults in hydra's ConfigStore, group ``defaults``: one entry per registered
    agent class (its settings other than the ``DATA_KEYS`` the task and data fill in), ``training``
    (``TrainConfig``) and ``sampler`` (``SamplerConfig``). The YAML files pull them in through their
    defaults lists and list only what they change, so every key is still settable from the command line.
    Agents' ``seed`` follows the run's top-level ``seed``."""
    from hydra.core.config_store import ConfigStore

    from diffctl.core.config import Config
    from diffctl.core.registry import AGENT_CLASSES

    def node(config_class: type[Config], skip: Sequence[str] = ()) -> dict[str, Any]:
        values = {k: v for k, v in config_class.defaults().items() if k not in skip}
        return json.loads(json.dumps(values))  # tuples -> lists

    store = ConfigStore.instance()
    store.store(group="defaults", name="training", node=node(TrainConfig))
    store.store(group="defaults", name="sampler", node=node(SamplerConfig))
    for name in AGENT_CLASSES:
        values = node(agent_class(name).config_class, DATA_KEYS)
        only = BUILDERS.get(name, DEFAULT_BUILDER).settings
        if only is not None:
            values = {k: v for k, v in values.items() if k in only}
        values = {**FIT_DEFAULTS, **values}
        if "seed" in values:
            values["seed"] = "${seed}"  # the run's seed initializes the networks unless policy.seed is set
        store.store(group="defaults", name=name, node=values)
    from diffctl.improve.d3po import D3POConfig
    from diffctl.improve.dppo import DPPOConfig
    from diffctl.improve.residual import ResidualPPOConfig

    for config_class in (
        ResidualPPOConfig,
        DPPOConfig,
        D3POConfig,
    ):  # fine-tuning methods (group ``finetune``)
        values = {**node(config_class), "seed": "${seed}"}
        store.store(group="defaults", name=config_class.__name__, node=values)


def _compose(config_name: str, overrides: Sequence[str]) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_defaults()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None, job_name="diffctl"):
        return compose(config_name=config_name, overrides=list(overrides))


def _valid_keys_hint(overrides: Sequence[str], config_name: str) -> str:
    """'; valid keys of training: [...]' for the first override whose key the composed tree lacks."""
    from omegaconf import DictConfig, OmegaConf

    groups = [o for o in overrides if o.partition("=")[0] in GROUPS]
    base = _compose(config_name, groups)
    for override in overrides:
        key = override.partition("=")[0].lstrip("+~")
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(base, parent) if parent else base
        if isinstance(node, DictConfig) and leaf not in node:
            return f"; valid keys of {parent or 'the top level'}: {sorted(node.keys())}"
    return ""


def to_dict(cfg: Any) -> dict[str, Any]:
    """Resolve interpolations into a plain dict (ValueError naming the broken key)."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(cfg, DictConfig):
        return json.loads(json.dumps(dict(cfg)))
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise ValueError(f"config does not resolve: {err}") from err


def agent_section(conf: Mapping[str, Any]) -> dict[str, Any]:
    """The section that describes the agent: the first of ``AGENT_SECTIONS`` that is set, else ``policy``."""
    return dict(conf[agent_section_name(conf)])


def agent_section_name(conf: Mapping[str, Any]) -> str:
    """``planner``, ``image_model`` or ``world_model`` (the first one set), else ``policy``."""
    for name in AGENT_SECTIONS:
        section = conf.get(name)
        if section is not None and not isinstance(section, Mapping):
            raise ValueError(f"config section {name!r} must be a mapping or null, got {section!r}")
        if section:
            return name
    return "policy"


@dataclass
class PreparedRun:
    """Everything a composed config describes, ready for a ``Trainer``: the resolved config, the run
    directory (its ``config.yaml`` written), the opened store, the agent's training data and the fitted agent
    (its task and dataset identity recorded)."""

    conf: dict[str, Any]
    train_config: TrainConfig
    run_dir: Path
    store: Any
    dataset: Any
    agent: Any
    info: DistInfo


def prepare(cfg: Any) -> PreparedRun:
    """Resolve and check a composed config, open (or generate) its data and build and fit its agent. ``run``
    trains the result; benchmarks that evaluate in their own way call this and drive the ``Trainer``."""
    conf = to_dict(cfg)
    for key in ("task", "policy", "sampler", "training", "eval"):
        if not isinstance(conf.get(key), Mapping):
            raise ValueError(f"config is missing section {key!r}")
    agent_section(conf)
    SamplerConfig.from_dict(conf["sampler"])  # checked before anything is written, whatever the agent
    eval_episodes(conf)
    if "horizon" in conf["task"]:  # sequence tasks; image tasks have no windows
        task_windows(conf["task"])
    info = init_distributed()
    train_cfg = TrainConfig.from_dict(conf["training"])
    run_dir = resolve_run_dir(conf, info)
    if info.is_main and not train_cfg.resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_yaml(run_dir / "config.yaml", conf)
    store = open_dataset(conf["task"], info)
    dataset = make_dataset(agent_class(_class_name(conf)), store, conf["task"])
    agent = build_agent(conf, dataset, store)
    stamp_origin(agent, conf["task"], store)
    return PreparedRun(conf, train_cfg, run_dir, store, dataset, agent, info)


def run(cfg: Any) -> dict[str, Any]:
    """Train the agent a composed config describes; returns the Trainer summary plus ``run_dir``. A config
    with a ``finetune`` section fine-tunes a saved policy in simulation instead (``run_finetune``)."""
    if to_dict(cfg).get("finetune"):
        return run_finetune(to_dict(cfg))
    prep = prepare(cfg)
    info, run_dir = prep.info, prep.run_dir

    from diffctl.train.trainer import Trainer

    acts = callable(getattr(prep.agent, "act", None))  # world models have no closed-loop evaluation
    eval_fn = make_eval_fn(prep.conf) if acts else None
    trainer = Trainer(prep.agent, prep.dataset, prep.train_config, run_dir, eval_fn=eval_fn)
    summary = trainer.fit()
    summary["run_dir"] = str(run_dir)
    if info.is_main:
        write_json(run_dir / "summary.json", summary)
        plot_curves_or_warn(run_dir)
        if callable(getattr(prep.agent, "after_training", None)):
            from diffctl.core.registry import load

            load(summary["checkpoint"]).after_training(run_dir, prep.dataset)  # the saved (EMA) weights
    return summary


def run_finetune(conf: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune the saved policy ``finetune.base`` in the task's simulator (``diffctl.improve``): residual
    PPO (``finetune=residual_ppo``), DPPO (``finetune=dppo``) or D3PO (``finetune=d3po``); the chain methods'
    behaviour-cloning anchor reads the task's dataset. ``training.resume`` and ``training.progress`` apply;
    the budget is the section's."""
    from diffctl.improve.d3po import D3POConfig, finetune_d3po
    from diffctl.improve.dppo import DPPOConfig, finetune_dppo
    from diffctl.improve.residual import ResidualPPOConfig, finetune_residual

    section = {k: v for k, v in conf["finetune"].items() if k != "name"}
    name = conf["finetune"].get("name")
    options: dict[str, Any] = {}
    if name == "residual_ppo":
        config: Any = ResidualPPOConfig.from_dict(section)
        method: Callable[..., dict[str, Any]] = finetune_residual
    elif name in ("dppo", "d3po"):
        config_class, method = (DPPOConfig, finetune_dppo) if name == "dppo" else (D3POConfig, finetune_d3po)
        config = config_class.from_dict(section)
        if config.bc_coef > 0:
            options["bc_data"] = build_dataset(open_dataset(conf["task"]), conf["task"])
    else:
        choices = ", ".join(group_options("finetune"))
        raise ValueError(f"unknown finetune method {name!r}; available: {choices}")
    train_cfg = TrainConfig.from_dict(conf["training"])
    task = conf["task"]["name"]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(conf.get("run_dir") or f"runs/{task}-{conf['finetune'].get('name', 'finetune')}-{stamp}")
    if not train_cfg.resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_yaml(run_dir / "config.yaml", conf)
    summary = method(config, task, run_dir, resume=train_cfg.resume, progress=train_cfg.progress, **options)
    summary["run_dir"] = str(run_dir)
    plot_curves_or_warn(run_dir)
    return summary


def plot_curves_or_warn(run_dir: Path) -> Path | None:
    """``learning_curves.png`` of the run, or one warning when plotting fails (an optional output never
    costs the run its results)."""
    from diffctl.train.metrics import plot_learning_curves

    try:
        return plot_learning_curves(run_dir)
    except Exception as err:  # any plotting failure only skips the plot
        message = " ".join(f"{type(err).__name__}: {err}".split())
        note = f"learning curves of {run_dir} skipped ({message}); the run's results are kept"
        warnings.warn(note, stacklevel=3)
        return None


def resolve_run_dir(conf: Mapping[str, Any], info: DistInfo) -> Path:
    """``conf['run_dir']`` or ``runs/<dataset>-<policy or planner>-<time>`` (dataset: ``task.dataset.name``,
    else the task name), chosen by rank 0 and shared with all ranks."""
    name = conf.get("run_dir")
    if not name:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        data = (conf["task"].get("dataset") or {}).get("name") or conf["task"]["name"]
        name = f"runs/{data}-{agent_section(conf)['name']}-{stamp}"
    if info.enabled:
        name = _broadcast_str(str(name))
    return Path(name)


# What a resumed run may change: how long it trains and what it logs, never what it trains.
RESUMABLE_KEYS = (
    "training.steps", "training.eval_every", "training.checkpoint_every", "training.keep_checkpoints",
    "training.log_every", "training.progress", "training.tensorboard", "training.device", "eval.",
    "finetune.env_steps", "finetune.eval_every", "finetune.eval_episodes", "finetune.checkpoint_every",
)  # fmt: skip


def resume_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> Any:
    """The config of the run in ``run_dir`` (its own ``config.yaml``) set to resume there, with the
    ``overrides`` that only change how long it trains or what it logs (``RESUMABLE_KEYS``). An override that
    restates the run's value is accepted; one that would change anything else is a ValueError naming it."""
    import yaml
    from omegaconf import OmegaConf

    root = Path(run_dir)
    path = root / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"--resume {root}: no config.yaml there (not a diffctl train run directory)")
    try:
        saved = OmegaConf.load(path)
    except Exception as err:
        raise ValueError(f"{path} is not a readable run config: {' '.join(str(err).split())}") from err
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or key.startswith(("+", "~")):
            raise ValueError(f"--resume takes key=value overrides of existing keys, got {override!r}")
        value = yaml.safe_load(text) if text.strip() else None
        if key in GROUPS:
            name_key = "sampler.solver" if key == "sampler" else f"{key}.name"
            have = OmegaConf.select(saved, name_key)
            wanted = to_dict(compose_config([override])).get(key) or {}
            if have != wanted.get(name_key.split(".")[1]):
                raise ValueError(f"cannot change {key} when resuming {root}: the run has {have!r}")
            continue
        have = OmegaConf.select(saved, key, default="<missing>")
        if have == "<missing>":
            raise ValueError(f"cannot set {key} when resuming {root}: the run's config.yaml has no such key")
        if have != value and not key.startswith(RESUMABLE_KEYS):
            raise ValueError(
                f"cannot change {key} from {have!r} to {value!r} when resuming {root}; a resumed run may "
                f"change only {', '.join(k.rstrip('.') for k in RESUMABLE_KEYS)}"
            )
        OmegaConf.update(saved, key, value, merge=False)
    OmegaConf.update(saved, "run_dir", str(root))
    OmegaConf.update(saved, "training.resume", True)
    return saved


def _broadcast_str(value: str, capacity: int = 4096) -> str:
    import torch.distributed as dist

    data = value.encode()
    if len(data) > capacity:
        raise ValueError(f"run_dir path longer than {capacity} bytes: {value[:80]}...")
    buf = torch.zeros(capacity, dtype=torch.uint8)
    buf[: len(data)] = torch.tensor(list(data), dtype=torch.uint8)
    buf = buf.to(collective_device(torch.device("cpu")))
    dist.broadcast(buf, src=0)
    raw = bytes(buf.cpu().tolist())
    return raw.rstrip(b"\x00").decode()


def open_dataset(task: Mapping[str, Any], info: DistInfo | None = None) -> Any:
    """Open the task's EpisodeStore, generating it first (rank 0 only) when its path does not exist."""
    from diffctl.datasets import EpisodeStore

    info = info or DistInfo()
    data = task.get("dataset") or {}
    if "path" not in data:
        raise ValueError(f"task {task.get('name')!r} has no dataset.path")
    path = Path(str(data["path"])).expanduser()
    if not path.exists() and info.is_main:
        options = data.get("generate")
        if options is None:
            raise FileNotFoundError(
                f"dataset {path} does not exist and task {task.get('name')!r} has no generator; "
                "import it first (diffctl data import ...) or set task.dataset.path"
            )
        from diffctl.datasets.generators import generate

        generate(str(data.get("name", task["name"])), path, **dict(options))
    barrier(info)
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} does not exist")
    return EpisodeStore.open(path)


def build_dataset(store: Any, task: Mapping[str, Any]) -> Any:
    """SequenceDataset windows with the task's horizon, observation history and goal mode (and, when the
    task sets them, ``pad_before`` / ``pad_after`` and the ``discount`` of returns-to-go)."""
    from diffctl.datasets.sequence import SequenceDataset

    optional: dict[str, Any] = {
        k: coerce(int, task[k], f"task.{k}") for k in ("pad_before", "pad_after") if task.get(k) is not None
    }
    if task.get("discount") is not None:
        optional["discount"] = coerce(float, task["discount"], "task.discount")
    return SequenceDataset(
        store,
        **task_windows(task),
        obs_keys=tuple(task.get("obs_keys", ("observations",))),
        action_key=str(task.get("action_key", "actions")),
        goal=task.get("goal"),
        image_keys=tuple(task.get("image_keys") or ()),
        **optional,
    )


def task_windows(task: Mapping[str, Any]) -> dict[str, int]:
    """``horizon``, ``n_obs_steps`` and ``n_action_steps`` of a task section as integers (a ValueError naming
    ``task.<key>`` otherwise)."""
    return {k: coerce(int, task.get(k), f"task.{k}") for k in ("horizon", "n_obs_steps", "n_action_steps")}


def make_dataset(cls: type, store: Any, task: Mapping[str, Any]) -> Any:
    """The training data of agent class ``cls``: its ``make_dataset(store, task)`` hook when it has one
    (e.g. single-step transitions for offline RL), else the task's ``SequenceDataset`` windows."""
    hook = getattr(cls, "make_dataset", None)
    return hook(store, task) if callable(hook) else build_dataset(store, task)


@dataclass(frozen=True)
class Builder:
    """How the pipeline constructs one agent class: ``build(cls, dims, kwargs, sampler, options) -> agent``
    where ``options`` holds the section's values of ``keys`` (config keys that are not constructor
    arguments). ``settings``, when given, limits the config fields whose defaults the YAML section gets
    (e.g. a student that takes its architecture from a teacher exposes only its own settings)."""

    build: Callable[[type, dict[str, int], dict[str, Any], dict[str, Any], dict[str, Any]], Any]
    keys: tuple[str, ...] = ()
    settings: tuple[str, ...] | None = None


def _construct(
    cls: type, dims: dict[str, int], kwargs: dict[str, Any], sampler: dict[str, Any], options: dict[str, Any]
) -> Any:
    if getattr(cls, "uses_sampler", True):
        kwargs = {**kwargs, "sampler": sampler}
    return cls(**dims, **kwargs)


DEFAULT_BUILDER = Builder(_construct)
BUILDERS: dict[str, Builder] = {}


def register_builder(class_name: str, builder: Builder) -> None:
    """Make the pipeline build agents of ``class_name`` with ``builder`` instead of the constructor."""
    BUILDERS[class_name] = builder


def agent_settings(cls: type) -> set[str]:
    """The settings ``cls`` is built from: the fields of its typed ``config_class``."""
    config_class = getattr(cls, "config_class", None)
    if config_class is None:
        raise ValueError(f"agent class {cls.__name__} has no config_class (a diffctl.core.Config dataclass)")
    return set(config_class.field_names())


def config_keys(cls: type) -> set[str]:
    """Keys a policy/planner section may set for ``cls`` (besides name, class and normalizer): its
    settings plus those its ``Builder`` consumes."""
    return agent_settings(cls) | set(BUILDERS.get(cls.__name__, DEFAULT_BUILDER).keys)


def _class_name(conf: Mapping[str, Any]) -> str:
    return str(agent_section(conf).get("class", "DiffusionPolicy"))


def agent_class(name: str) -> type:
    """The agent class registered under ``name`` (``diffctl.core.registry``)."""
    from diffctl.core.registry import agent_class as registered

    return registered(name)


def build_agent(conf: Mapping[str, Any], dataset: Any, store: Any) -> Any:
    """Instantiate ``planner.class`` (when a planner is selected) or ``policy.class`` with dimensions read
    off the data, the sampler section and the seed (through the class's ``Builder``), then fit it: the
    agent's ``fit(dataset, mode)`` when it has one, else ``fit_normalizers`` on the whole store (skipped
    when the builder already gave the agent normalizers, e.g. a teacher's).

    Only the dimensions the class accepts are passed. Planners see the goal as part of the observation
    (``obs_dim = state_dim + goal_dim``, as the environment emits it); agents with ``uses_returns`` get
    discounted returns-to-go at their ``discount`` for their return normalizer."""
    policy = agent_section(conf)
    task = conf["task"]
    cls = agent_class(_class_name(conf))
    builder = BUILDERS.get(cls.__name__, DEFAULT_BUILDER)
    norm_mode = policy.get("normalizer", "limits")
    kwargs = {k: v for k, v in policy.items() if k not in RESERVED_POLICY_KEYS}
    dims = data_dims(cls, dataset, task)
    accepted = agent_settings(cls)
    if "state_dim" in accepted and "obs_dim" in dims:  # planners: the goal is part of the observation
        dims["state_dim"] = dims["obs_dim"]
        dims["obs_dim"] += dims["goal_dim"]
    sees_cameras = "image_shapes" in accepted or getattr(cls, "reads_frames", False)
    if task.get("image_keys") and not sees_cameras:
        raise ValueError(
            f"{cls.__name__} does not take camera observations (task.image_keys="
            f"{list(task.get('image_keys') or ())}); use a diffusion policy, e.g. policy=diffusion_unet"
        )
    dims = {k: v for k, v in dims.items() if k in accepted}
    if "seed" in accepted:
        kwargs.setdefault("seed", int(conf.get("seed", 0)))
    options = {k: policy.get(k) for k in builder.keys}
    stray = [k for k in BUILDER_KEYS if k in policy and k not in builder.keys]
    unknown = sorted(set(kwargs) - accepted) + stray
    if unknown:
        section = agent_section_name(conf)
        valid = sorted((accepted | set(builder.keys)) - set(dims) - {"sampler", "normalizers"})
        raise ValueError(f"unknown {section} keys {unknown} for {cls.__name__}; valid keys: {valid}")
    agent = builder.build(cls, dims, kwargs, dict(conf["sampler"]), options)
    if callable(getattr(agent, "fit", None)):
        if policy.get("obs_normalizer") is not None:
            raise ValueError(f"policy.obs_normalizer is not supported by {cls.__name__}; use normalizer")
        agent.fit(dataset, mode=norm_mode)
    elif callable(getattr(agent, "fit_normalizers", None)) and not getattr(agent, "normalizers", None):
        obs_keys = list(task.get("obs_keys", ("observations",)))
        obs = np.concatenate([_rows(store.array(k)) for k in obs_keys], axis=1)
        actions = _rows(store.array(str(task.get("action_key", "actions"))))
        goal = None
        if task.get("goal") == "task":
            goal = _rows(store.array("infos/goal"))
        elif task.get("goal") == "hindsight":
            goal = obs
        extra = {}
        if getattr(agent, "uses_returns", False):
            discount = float(policy.get("discount", task.get("discount", 0.99)))
            extra["returns"] = _returns_to_go(store, discount)
        if policy.get("obs_normalizer") is not None:
            if "obs_mode" not in inspect.signature(agent.fit_normalizers).parameters:
                raise ValueError(f"policy.obs_normalizer is not supported by {cls.__name__}; use normalizer")
            extra["obs_mode"] = str(policy["obs_normalizer"])
        agent.fit_normalizers(obs, actions, goal, mode=norm_mode, **extra)
    return agent


def data_dims(cls: type, dataset: Any, task: Mapping[str, Any]) -> dict[str, int]:
    """Dimensions read off the training data: the class's ``data_dims(dataset)`` hook when it has one, else
    observation, action and goal widths plus the task's windows."""
    hook = getattr(cls, "data_dims", None)
    if callable(hook):
        return dict(hook(dataset))
    sample = dataset.get_batch(np.array([0]))
    if not isinstance(sample.get("obs"), torch.Tensor):
        raise ValueError("the train pipeline needs flat vector observations (task.obs_keys)")
    dims: dict[str, Any] = {
        "obs_dim": int(sample["obs"].shape[-1]),
        "action_dim": int(sample["actions"].shape[-1]),
        "goal_dim": int(sample["goal"].shape[-1]) if "goal" in sample else 0,
        **task_windows(task),
    }
    if getattr(dataset, "image_shapes", None):
        dims["image_shapes"] = dataset.image_shapes
    return dims


def stamp_origin(agent: Any, task: Mapping[str, Any], store: Any) -> None:
    """Record the task and the dataset's identity on ``agent``: its checkpoints carry them in
    ``config.json``, so ``diffctl eval CHECKPOINT`` needs no ``--task``."""
    from diffctl.core.persistence import dataset_identity

    agent.task = str(task["name"])
    agent.dataset = dataset_identity(store, (task.get("dataset") or {}).get("path"))


def _consistency_from_teacher(
    cls: type, dims: dict[str, int], kwargs: dict[str, Any], sampler: dict[str, Any], options: dict[str, Any]
) -> Any:
    """A consistency student (``cls.from_teacher``) of the EDM ``DiffusionPolicy`` saved at ``teacher``;
    the student takes the teacher's architecture and normalizers, the config's other keys override."""
    path = options.get("teacher")
    if not path:
        raise ValueError(
            f"{cls.__name__} distills a trained EDM DiffusionPolicy: set policy.teacher=PATH to its agent "
            "directory (e.g. runs/<run>/checkpoint of `diffctl train policy=diffusion_mlp`)"
        )
    from diffctl.agents import load

    teacher = load(str(path))
    if type(teacher).__name__ != "DiffusionPolicy":
        kind = type(teacher).__name__
        raise ValueError(f"policy.teacher {path} holds a {kind}; expected a DiffusionPolicy")
    for key, value in dims.items():
        have = getattr(teacher, key, value)
        if have != value:
            raise ValueError(f"policy.teacher {path} has {key}={have} but the task data gives {key}={value}")
    try:
        return cls.from_teacher(teacher, sampler=sampler, **kwargs)
    except RuntimeError as err:
        raise ValueError(
            f"policy keys {sorted(kwargs)} change the architecture of teacher {path}: {err}"
        ) from err


register_builder(
    "ConsistencyPolicy",
    Builder(_consistency_from_teacher, keys=("teacher",), settings=("distill_steps", "target_ema", "seed")),
)


def _returns_to_go(store: Any, discount: float) -> np.ndarray:
    from diffctl.datasets.sequence import discounted_returns_to_go

    if "rewards" not in store.keys:
        raise ValueError(f"the agent models returns but the dataset has no 'rewards'; keys: {store.keys}")
    return discounted_returns_to_go(store.array("rewards"), store.episode_ends, discount)


def _rows(array: Any) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    return array.reshape(len(array), -1)


def eval_episodes(conf: Mapping[str, Any]) -> int:
    """``eval.episodes`` as an integer >= 0 (0: no closed-loop evaluation), else a ValueError naming it."""
    episodes = coerce(int, (conf.get("eval") or {}).get("episodes") or 0, "eval.episodes")
    if episodes < 0:
        raise ValueError(f"eval.episodes must be >= 0 (0: no closed-loop evaluation), got {episodes}")
    return episodes


def make_eval_fn(conf: Mapping[str, Any]) -> Callable[[Any], dict[str, Any]] | None:
    """Closed-loop evaluation with ``diffctl.envs.evaluate`` (None when ``eval.episodes`` is 0)."""
    section = conf.get("eval") or {}
    episodes = eval_episodes(conf)
    if episodes == 0:
        return None
    try:
        from diffctl.envs.evaluate import evaluate
    except ImportError as err:
        raise ValueError(
            f"closed-loop evaluation needs diffctl.envs.evaluate ({err}); "
            "set eval.episodes=0 to train without it"
        ) from err
    task, seed = str(conf["task"]["name"]), int(section.get("seed", 0))
    options = {k: section[k] for k in ("n_workers", "goal_cell") if k in section}

    def eval_fn(agent: Any) -> dict[str, Any]:
        return dict(evaluate(agent, task, episodes=episodes, seed=seed, **options))

    return eval_fn


def _write_yaml(path: Path, conf: Mapping[str, Any]) -> None:
    from omegaconf import OmegaConf

    write_text(path, OmegaConf.to_yaml(OmegaConf.create(dict(conf))))
