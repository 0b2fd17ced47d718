"""Where the app's models come from, and loading them once.

Sources, in order of precedence:
1. `--models-dir DIR [DIR2 ...]`: what `train_dpo.py` wrote (DIR/<family>/adapter|merged|base); a second and later
   folder are DPO rounds 2, 3, ... of the same families (their `base` is the first folder's);
2. else a YAML config: `--config FILE`, else `$DPO_STUDIO_CONFIG`, else `./app_config.yaml` (what a Space ships),
   else `examples/app_config.yaml` next to the package;
then per-family environment overrides `DPO_STUDIO_<FAMILY>_BASE|_ADAPTER|_MERGED` (an empty value unsets one, e.g.
`DPO_STUDIO_GPT2_ADAPTER=` to serve two merged models).

Config format::

    families:
      gpt2: {label: GPT-2, base: openai-community/gpt2, adapter: dpo-studio/gpt2-dpo-lora, merged: dpo-studio/gpt2-dpo}

Optional per family: `revision` (adapter and merged repos), `base_revision`, and `rounds`, later DPO rounds served
in the arena next to base and the first round (`dpo`)::

      gpt2: {base: ..., adapter: ..., rounds: {round2: {adapter: you/gpt2-dpo-round2, merged: you/gpt2-dpo-round2-merged}}}

Each round needs `adapter` or `merged` (optional `revision`). A value starting with `./`, `../`, `~`
or `/` is a local path (relative ones are resolved against the config file's folder); anything else is a Hub repo
id, exactly as `from_pretrained` reads it.

`ModelRegistry` loads each family lazily (first request), once, thread-safely, through the shared engine
(`dpo_studio.inference.generation.load_pair`). A failed load is not cached, so a later request retries (e.g. after the Hub
came back).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from dpo_studio.inference.generation import LoadedPair, load_pair
from dpo_studio.names import DEFAULT_MODEL_IDS, DPO_CONFIG_FILE, FAMILY_LABELS, PUBLISHED_REPOS, family_label
from dpo_studio.public_refs import is_local_path, local_path
from dpo_studio.run_layout import FamilyPaths

logger = logging.getLogger(__name__)

CONFIG_ENV = "DPO_STUDIO_CONFIG"
SPACE_CONFIG_NAME = "app_config.yaml"  # in the working directory: what the published Space carries
EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "app_config.yaml"  # package data (dpo_studio/examples)
ENV_PREFIX = "DPO_STUDIO_"
ROLES = ("base", "adapter", "merged")
FAMILY_KEYS = {"label", *ROLES, "revision", "base_revision", "rounds"}
ROUND_KEYS = {"adapter", "merged", "revision"}
BASE, FIRST_ROUND = "base", "dpo"  # the arena's names of a family's base model and its first DPO round
# Used only when no config file exists at all (e.g. a Space that ships no app_config.yaml); mirrors the example file.
BUILTIN_FAMILIES = {
    family: {"label": FAMILY_LABELS[family], "base": DEFAULT_MODEL_IDS[family], "adapter": f"{merged}-lora",
             "merged": merged}
    for family, merged in PUBLISHED_REPOS.items()
}


class AppConfigError(ValueError):
    """A bad app config (file, key or value named in the message)."""


@dataclass(frozen=True)
class RoundSource:
    """A later DPO round of a family: an adapter on the family's base, or a merged model (or both)."""

    name: str
    adapter: str | None = None
    merged: str | None = None
    revision: str | None = None


@dataclass(frozen=True)
class FamilySource:
    """Where one family's base and DPO models live (local directories or Hub repo ids)."""

    name: str
    label: str
    base: str | None = None
    adapter: str | None = None
    merged: str | None = None
    revision: str | None = None
    base_revision: str | None = None
    rounds: tuple[RoundSource, ...] = ()

    @property
    def model_names(self) -> tuple[str, ...]:
        """The arena's models of this family: "base", "dpo" (the first round), then the later rounds."""
        return (BASE, FIRST_ROUND, *(r.name for r in self.rounds))

    def dpo_round(self, name: str) -> RoundSource:
        """The DPO model named `name` ("dpo" is the family's adapter / merged)."""
        if name == FIRST_ROUND:
            return RoundSource(FIRST_ROUND, self.adapter, self.merged, self.revision)
        for round_ in self.rounds:
            if round_.name == name:
                return round_
        raise KeyError(f"unknown model {name!r} in {self.label}; served: {', '.join(self.model_names)}")

    def servable(self, a: str, b: str) -> bool:
        """Whether the two models can be served side by side: base + any round, or two rounds with merged models
        (two adapters on one base are not loaded side by side)."""
        if a == b:
            return False
        if BASE in (a, b):
            return self.base is not None or self.dpo_round(b if a == BASE else a).adapter is not None
        return self.dpo_round(a).merged is not None and self.dpo_round(b).merged is not None

    def arena_pairs(self) -> list[tuple[str, str]]:
        """Every unordered pair of this family's models that can be served (what blind rounds draw from)."""
        names = self.model_names
        return [(a, b) for k, a in enumerate(names) for b in names[k + 1:] if self.servable(a, b)]

    @property
    def shares_weights(self) -> bool:
        """True when an adapter exists, so one set of base weights serves both sides."""
        return self.adapter is not None

    @property
    def serving_mode(self) -> str:
        """One line for the UI on how this family is served."""
        if self.shares_weights:
            return "one base model + LoRA adapter (switched on/off per row of one batch)"
        return "serving two models: no adapter published"

    def describe(self) -> str:
        parts = [f"{role}={value}" for role, value in (("base", self.base), ("adapter", self.adapter),
                                                      ("merged", self.merged)) if value]
        return ", ".join(parts)


# ----------------------------------------------------------------------------------------------------- reading
def _resolve_value(value: str, base_dir: Path | None) -> str:
    """A local path becomes absolute (`./` and `../` relative to `base_dir`); a Hub id is left alone."""
    return str(local_path(value, base_dir)) if is_local_path(value) else value


def families_from_mapping(data: object, where: str, base_dir: Path | None = None) -> dict[str, FamilySource]:
    """Validate a parsed config (`{"families": {name: {...}}}`) into FamilySources; errors name `where`."""
    if not isinstance(data, dict):
        raise AppConfigError(f"{where}: expected a mapping with a 'families' key, got {type(data).__name__}")
    unknown = set(data) - {"families"}
    if unknown:
        raise AppConfigError(f"{where}: unknown top-level key(s) {sorted(unknown)}; only 'families' is allowed")
    families = data.get("families")
    if not isinstance(families, dict) or not families:
        raise AppConfigError(f"{where}: 'families' must be a non-empty mapping of family name -> sources")
    out: dict[str, FamilySource] = {}
    for name, entry in families.items():
        name = str(name)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise AppConfigError(f"{where}: family name {name!r} must be letters, digits, '_', '.', '-'")
        if not isinstance(entry, dict):
            raise AppConfigError(f"{where}: families.{name} must be a mapping, got {type(entry).__name__}")
        bad = set(entry) - FAMILY_KEYS
        if bad:
            raise AppConfigError(f"{where}: families.{name}: unknown key(s) {sorted(bad)}; allowed: "
                                 f"{sorted(FAMILY_KEYS)}")
        values: dict[str, str | None] = {}
        for key in FAMILY_KEYS - {"rounds"}:
            value = entry.get(key)
            if value is not None and not isinstance(value, str):
                raise AppConfigError(f"{where}: families.{name}.{key} must be a string, got {type(value).__name__}")
            values[key] = value or None
        for role in ROLES:
            if values[role] is not None:
                values[role] = _resolve_value(values[role], base_dir)  # type: ignore[arg-type]
        if values["adapter"] is None and values["merged"] is None:
            raise AppConfigError(f"{where}: families.{name} needs 'adapter' or 'merged' (the DPO side)")
        out[name] = FamilySource(name=name, label=values["label"] or family_label(name), base=values["base"],
                                 adapter=values["adapter"], merged=values["merged"], revision=values["revision"],
                                 base_revision=values["base_revision"],
                                 rounds=_rounds_from_mapping(entry.get("rounds"), f"{where}: families.{name}.rounds",
                                                             base_dir))
    return out


def _rounds_from_mapping(data: object, where: str, base_dir: Path | None) -> tuple[RoundSource, ...]:
    """`{round2: {adapter: ..., merged: ...}}` -> RoundSources; errors name `where` and the round."""
    if data is None:
        return ()
    if not isinstance(data, dict):
        raise AppConfigError(f"{where} must be a mapping of round name -> {{adapter, merged, revision}}")
    out = []
    for name, entry in data.items():
        name = str(name)
        if name in (BASE, FIRST_ROUND) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise AppConfigError(f"{where}: round name {name!r} must be letters, digits, '_', '.', '-' and not "
                                 f"{BASE!r} or {FIRST_ROUND!r}")
        if not isinstance(entry, dict) or set(entry) - ROUND_KEYS:
            raise AppConfigError(f"{where}.{name} must be a mapping with keys among {sorted(ROUND_KEYS)}")
        values = {key: entry.get(key) or None for key in ROUND_KEYS}
        if any(v is not None and not isinstance(v, str) for v in values.values()):
            raise AppConfigError(f"{where}.{name}: values must be strings")
        if values["adapter"] is None and values["merged"] is None:
            raise AppConfigError(f"{where}.{name} needs 'adapter' or 'merged'")
        out.append(RoundSource(name, *(None if values[k] is None else _resolve_value(values[k], base_dir)
                                       for k in ("adapter", "merged")), revision=values["revision"]))
    return tuple(out)


def load_config_file(path: str | Path) -> dict[str, FamilySource]:
    """Read a YAML app config; one-line errors name the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AppConfigError(f"app config {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise AppConfigError(f"app config {path}: invalid YAML{line}") from None
    return families_from_mapping(data, f"app config {path}", path.resolve().parent)


def discover_models_dir(models_dir: str | Path) -> dict[str, FamilySource]:
    """Families in a `train_dpo.py` output folder: every DIR/<F>/ holding adapter/ or merged/.

    The base is DIR/F/base (offline demo) if present, else the adapter's `base_model_name_or_path`, else
    `base_model` from merged/dpo_config.json.
    """
    root = Path(models_dir).expanduser()
    if not root.is_dir():
        raise AppConfigError(f"--models-dir {root}: not a directory")
    out: dict[str, FamilySource] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if FamilyPaths.is_scratch(folder.name):  # pipeline work/staging folders
            continue
        paths = FamilyPaths(folder)
        adapter, merged = paths.adapter, paths.merged
        has_adapter = (adapter / "adapter_config.json").is_file()
        has_merged = (merged / "config.json").is_file()
        if not (has_adapter or has_merged):
            continue
        base: str | None = None
        if (paths.base / "config.json").is_file():
            base = str(paths.base)
        elif has_adapter:
            base = _json_field(adapter / "adapter_config.json", "base_model_name_or_path")
        if base is None and has_merged:
            base = _json_field(merged / DPO_CONFIG_FILE, "base_model")
        if base is not None:  # a demo's local base is written relative to adapter/ and merged/
            base = _resolve_value(base, adapter)
        out[folder.name] = FamilySource(
            name=folder.name, label=family_label(folder.name), base=base,
            adapter=str(adapter) if has_adapter else None, merged=str(merged) if has_merged else None,
        )
    if not out:
        raise AppConfigError(f"--models-dir {root}: no trained families found (expected {root}/<family>/adapter "
                             "or <family>/merged)")
    return out


def _json_field(path: Path, key: str) -> str | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, str) and value else None


def env_key(family: str) -> str:
    """`gpt2` -> `GPT2`, `my-model` -> `MY_MODEL`: the family part of DPO_STUDIO_<FAMILY>_<ROLE>."""
    return re.sub(r"[^A-Za-z0-9]", "_", family).upper()


def apply_env_overrides(
    families: Mapping[str, FamilySource], environ: Mapping[str, str] | None = None
) -> dict[str, FamilySource]:
    """Apply DPO_STUDIO_<FAMILY>_BASE/_ADAPTER/_MERGED (empty value = unset) to the known families."""
    environ = os.environ if environ is None else environ
    out: dict[str, FamilySource] = {}
    for name, source in families.items():
        changes: dict[str, str | None] = {}
        for role in ROLES:
            var = f"{ENV_PREFIX}{env_key(name)}_{role.upper()}"
            if var in environ:
                changes[role] = _resolve_value(environ[var], Path.cwd()) if environ[var] else None
        source = replace(source, **changes)
        if source.adapter is None and source.merged is None:
            raise AppConfigError(f"environment: family {name!r} has neither an adapter nor a merged model left "
                                 f"(check {ENV_PREFIX}{env_key(name)}_ADAPTER / _MERGED)")
        out[name] = source
    return out


def default_config_path(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path | None:
    """$DPO_STUDIO_CONFIG, else ./app_config.yaml, else examples/app_config.yaml; None if none exists."""
    environ = os.environ if environ is None else environ
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])  # named explicitly: must exist (load_config_file says so if not)
    local = (cwd or Path.cwd()) / SPACE_CONFIG_NAME
    if local.is_file():
        return local
    return EXAMPLE_CONFIG if EXAMPLE_CONFIG.is_file() else None


def discover_rounds(models_dirs: Sequence[str | Path]) -> dict[str, FamilySource]:
    """Families from the first output folder, with each later folder's same-named family as rounds 2, 3, ...
    (named after the round's number; a family missing from a later folder simply has fewer rounds)."""
    families = discover_models_dir(models_dirs[0])
    for number, folder in enumerate(models_dirs[1:], start=2):
        for name, later in discover_models_dir(folder).items():
            if name in families:
                source = families[name]
                round_ = RoundSource(f"round{number}", later.adapter, later.merged)
                families[name] = replace(source, rounds=(*source.rounds, round_))
    return families


def resolve_sources(
    config: str | Path | None = None,
    models_dir: str | Path | Sequence[str | Path] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> dict[str, FamilySource]:
    """The app's families from `--models-dir`, else the config file (see module docstring), plus env overrides."""
    if models_dir is not None:
        dirs = [models_dir] if isinstance(models_dir, (str, Path)) else list(models_dir)
        families = discover_rounds(dirs)
    else:
        path = Path(config) if config is not None else default_config_path(environ, cwd)
        if path is None:
            logger.info("No app config file found; using the built-in Hub repo ids")
            families = families_from_mapping({"families": BUILTIN_FAMILIES}, "built-in defaults")
        else:
            families = load_config_file(path)
    return apply_env_overrides(families, environ)


# ----------------------------------------------------------------------------------------------------- loading
class ModelLoadError(RuntimeError):
    """A family's models could not be loaded; the message is one line, fit for the UI."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """First line of an exception's message, with its type, shortened for a UI message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ModelRegistry:
    """Loads each family's `LoadedPair` on first use, once, and keeps it; safe to call from many threads."""

    def __init__(self, families: Mapping[str, FamilySource], **load_kwargs) -> None:
        if not families:
            raise AppConfigError("no model families configured")
        self.families: dict[str, FamilySource] = dict(families)
        self._load_kwargs = load_kwargs  # passed to load_pair (device, dtype, token ...)
        self._pairs: dict[str, LoadedPair] = {}
        self._arena: dict[str, LoadedPair] = {}  # other pairs of a family's models, by "family\0a\0b"
        self._locks = {name: threading.Lock() for name in self.families}

    def source(self, family: str) -> FamilySource:
        try:
            return self.families[family]
        except KeyError:
            raise KeyError(f"unknown family {family!r}; configured: {', '.join(self.families)}") from None

    def is_loaded(self, family: str) -> bool:
        return family in self._pairs

    def get(self, family: str) -> LoadedPair:
        """The family's loaded pair, loading it now if needed; raises ModelLoadError with a one-line reason."""
        source = self.source(family)
        pair = self._pairs.get(family)
        if pair is not None:
            return pair
        with self._locks[family]:  # one loader per family; other families load in parallel
            pair = self._pairs.get(family)
            if pair is None:
                logger.info("Loading %s (%s)", source.label, source.describe())
                try:
                    pair = load_pair(source.base, source.adapter, source.merged, revision=source.revision,
                                     base_revision=source.base_revision, **self._load_kwargs)
                except Exception as exc:  # any failure (network, missing file, bad weights) becomes a UI message
                    logger.exception("Loading %s failed", source.label)
                    raise ModelLoadError(f"could not load {source.label} ({source.describe()}): "
                                         f"{one_line(exc)}") from exc
                self._pairs[family] = pair
        return pair

    def load_all(self) -> None:
        """Load every family's pair and every pair its arena serves, now. A ZeroGPU Space calls this at start-up in
        the main thread (GPU workers are forked from it and inherit the models); a model that fails to load is logged
        and reported to the visitor on use, as when loading lazily."""
        for family, source in self.families.items():
            try:
                self.get(family)
                for a, b in source.arena_pairs():
                    self.get_models(family, a, b)
            except ModelLoadError as exc:
                logger.warning("%s", exc)

    def _load_models(self, source: FamilySource, a: str, b: str) -> LoadedPair:
        """`a` in the pair's base row, `b` in its DPO row (a canonical pair of `source.arena_pairs()`)."""
        if a == BASE:
            round_ = source.dpo_round(b)
            return load_pair(source.base, round_.adapter, round_.merged, revision=round_.revision,
                             base_revision=source.base_revision, **self._load_kwargs)
        first, second = source.dpo_round(a), source.dpo_round(b)
        # Two merged rounds: two plain models (load_pair's fallback), round `a` in the "base" row.
        return load_pair(first.merged, None, second.merged, revision=second.revision,
                         base_revision=first.revision, **self._load_kwargs)

    def get_models(self, family: str, a: str, b: str) -> tuple[LoadedPair, tuple[str, str]]:
        """Two of the family's models served together: (pair, (name in the base row, name in the DPO row)).

        Loaded on first use and kept; base vs dpo is the family's `get` pair. Raises ModelLoadError (one line)
        when the pair cannot be served or fails to load.
        """
        source = self.source(family)
        pairs = source.arena_pairs()
        key = (a, b) if (a, b) in pairs else (b, a)
        if key not in pairs:
            raise ModelLoadError(f"{source.label}: {a} and {b} cannot be served side by side")
        if key == (BASE, FIRST_ROUND):
            return self.get(family), key
        cache_key = f"{family}\0{key[0]}\0{key[1]}"
        pair = self._arena.get(cache_key)
        if pair is None:
            with self._locks[family]:
                pair = self._arena.get(cache_key)
                if pair is None:
                    logger.info("Loading %s: %s vs %s", source.label, *key)
                    try:
                        pair = self._load_models(source, *key)
                    except ModelLoadError:
                        raise
                    except Exception as exc:  # a failure becomes a UI message; not cached, so a retry reloads
                        logger.exception("Loading %s (%s vs %s) failed", source.label, *key)
                        raise ModelLoadError(f"could not load {source.label} {key[0]} vs {key[1]}: "
                                             f"{one_line(exc)}") from exc
                    self._arena[cache_key] = pair
        return pair, key

    def add_round(self, family: str, round_: RoundSource) -> None:
        """Serve a new DPO round of `family` from now on (a round trained while the app runs)."""
        with self._locks[family]:
            source = self.source(family)
            if round_.name in source.model_names:
                raise AppConfigError(f"{source.label} already serves a model named {round_.name!r}")
            self.families[family] = replace(source, rounds=(*source.rounds, round_))
