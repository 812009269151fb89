"""Command-line options, environment variables and config-file sections, generated from the stage
settings models in clipcrawl.tasks.core.config: a field's default and description are written once,
in its pydantic Field, and show up in all three places.

Spellings, for the field `shard_size` of the download stage (`DownloadSettings`):

    flag          --shard-size N          in the stage's own command (`clipcrawl download`)
                  --download.shard-size N in `clipcrawl run` (the stages after ingest and extract are namespaced)
    environment   CLIPCRAWL_DOWNLOAD__SHARD_SIZE=N
    config file   download:
                    shard_size: N

A nested model adds its field name with a dot (flag) or a double underscore (environment):
`--gates.min-clip-pass-rate.threshold 0.1`, `CLIPCRAWL_REPORT__GATES__MIN_CLIP_PASS_RATE__THRESHOLD=0.1`.
A switch has a `--no-` form (`--no-detect-language`), `none` sets an optional setting empty, list
settings take several values after one flag, and dict settings take KEY=VALUE items. Environment
values of list and dict settings are JSON (`'["a", "b"]'`).

Precedence: flag > environment > config file > the field's default (pydantic-settings merges them).
The stage models stay plain pydantic models (Prefect flow parameters): only this module reads the
environment, on the machine where the command runs.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass

from pydantic import BaseModel, Field, ValidationError, create_model

from clipcrawl.tasks.core.config import (
    ConsentSettings,
    DownloadSettings,
    EmbedSettings,
    ExtractSettings,
    IndexSettings,
    IngestSettings,
    ReportSettings,
    load_config,
)

ENV_PREFIX = "CLIPCRAWL_"
ENV_NESTED = "__"
NONE = "none"

# One config-file section and environment prefix per stage. ExtractSettings is a field of
# IngestSettings in the flow parameters, but a stage of its own here (as in the config file); so is
# ConsentSettings, a field of both ExtractSettings and DownloadSettings, given once here for both.
STAGES: dict[str, type[BaseModel]] = {
    "ingest": IngestSettings,
    "extract": ExtractSettings,
    "consent": ConsentSettings,
    "download": DownloadSettings,
    "embed": EmbedSettings,
    "index": IndexSettings,
    "report": ReportSettings,
}

EPILOG = f"""\
settings: every field of the stage settings (clipcrawl.tasks.core.config) is a flag, an environment
variable and a key of the config file (--config FILE, YAML or TOML, a section per stage: ingest,
extract, consent (shared by extract and download), download, embed, index, report). For download's shard_size:
  flag         --shard-size N (clipcrawl download), --download.shard-size N (clipcrawl run, where
               the stages after ingest and extract are namespaced)
  environment  {ENV_PREFIX}DOWNLOAD{ENV_NESTED}SHARD_SIZE=N
  config file  download: {{shard_size: N}}
A nested setting adds a part: --gates.min-clip-pass-rate.threshold X,
{ENV_PREFIX}REPORT{ENV_NESTED}GATES{ENV_NESTED}MIN_CLIP_PASS_RATE{ENV_NESTED}THRESHOLD=X, report: {{gates: {{min_clip_pass_rate: {{threshold: X}}}}}}.
A flag beats the environment, which beats the config file, which beats the default. `{NONE}` (flag
or environment) sets an optional setting empty; a list setting takes several values after its flag
(JSON in the environment), a dict setting KEY=VALUE items, merged key by key across the sources (a flag's
KEY beats the same KEY from the environment or file); a switch has a --no- form."""


class SettingsError(ValueError):
    """The flags, environment and config file do not make valid settings; one line naming each setting."""


@dataclass(frozen=True)
class Leaf:
    """One setting that takes a value: `path` from the stage model down to the field."""

    stage: str
    path: tuple[str, ...]
    field: typing.Any  # pydantic FieldInfo
    default: typing.Any
    help: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + ENV_NESTED.join((self.stage, *self.path)).upper()

    def flag(self, namespaced: bool, negative: bool = False) -> str:
        """`--shard-size`, or `--download.shard-size` where the stage is namespaced; a switch's negative
        form has `no-` before its last part (`--embed.no-drop-nsfw`)."""
        *parents, name = ((self.stage,) if namespaced else ()) + self.path
        return "--" + ".".join([*parents, ("no-" if negative else "") + name]).replace("_", "-")

    @property
    def dest(self) -> str:
        return "settings:" + ".".join((self.stage, *self.path))


def _model_of(annotation) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def leaves(stage: str) -> Iterator[Leaf]:
    """Every setting of a stage, nested models flattened; a nested stage model (ingest's extract) is
    left to its own stage."""

    def walk(model: type[BaseModel], default: BaseModel, path: tuple[str, ...], context: str) -> Iterator[Leaf]:
        for name, field in model.model_fields.items():
            sub = _model_of(field.annotation)
            if sub in STAGES.values():
                continue
            description = field.description or ""
            if sub is not None:
                yield from walk(sub, getattr(default, name), (*path, name), description.rstrip(".") + ": ")
            else:
                value = getattr(default, name)
                if context:  # the parent's description leads: "Images decoded / pairs downloaded: the gate's ..."
                    description = description[:1].lower() + description[1:]
                yield Leaf(stage, (*path, name), field, value, f"{context}{description} Default: {_show(value)}.")

    model = STAGES[stage]
    yield from walk(model, model(), (), "")


def _show(value) -> str:
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, dict):
        value = [f"{k}={v}" for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        if not value:
            return "empty"
        shown = " ".join(repr(v) if isinstance(v, str) else str(v) for v in value)
        return shown if len(shown) <= 80 else f"{' '.join(map(repr, value[:3]))} ... ({len(value)} in all)"
    return str(value)


def _split_optional(annotation) -> tuple[typing.Any, bool]:
    """(the annotation without None, whether None is allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(annotation))
    return annotation, False


_METAVARS = {int: "N", float: "X", str: "TEXT"}


def _scalar(annotation, optional: bool):
    """An argparse `type` for one value: `none` -> None where allowed; pydantic checks the rest."""
    convert = annotation if annotation in (int, float) else str

    def parse(text: str):
        if optional and text == NONE:
            return None
        return convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names it in "invalid int value"
    return parse


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"want KEY=VALUE, got {text!r}")
    return key, value


class _Switch(argparse.Action):
    """`--name` sets True, `--no-name` sets False."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, option_string == self.option_strings[0])


class _Pairs(argparse.Action):
    """KEY=VALUE items into a dict."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, dict(values))


def add_options(
    parser: argparse.ArgumentParser, stage: str, namespaced: bool = False, exclude: tuple[str, ...] = ()
) -> None:
    """One option per setting of `stage` (except the top-level fields in `exclude`), in a group of its own."""
    model = STAGES[stage]
    env = f"{ENV_PREFIX}{stage.upper()}{ENV_NESTED}<FIELD>"
    group = parser.add_argument_group(
        f"{stage} settings ({model.__name__}; environment {env}; config section {stage}:)",
        (model.__doc__ or "").strip().split("\n")[0],
    )
    for leaf in leaves(stage):
        if leaf.path[0] in exclude:
            continue
        annotation, optional = _split_optional(leaf.field.annotation)
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        names = [leaf.flag(namespaced)]
        kwargs: dict = {"dest": leaf.dest, "default": argparse.SUPPRESS, "help": leaf.help.replace("%", "%%")}
        if annotation is bool:
            names.append(leaf.flag(namespaced, negative=True))
            kwargs["action"] = _Switch
        elif origin is typing.Literal:
            kwargs.update(choices=[*args, *([None] if optional else [])], type=_scalar(str, optional))
            kwargs["metavar"] = "{" + ",".join(map(str, args)) + (f",{NONE}" if optional else "") + "}"
        elif origin in (list, tuple):
            item = args[0]
            kwargs.update(nargs="+", type=_scalar(item, False), metavar=_METAVARS.get(item, "VALUE"))
        elif origin is dict:
            kwargs.update(nargs="+", type=_key_value, action=_Pairs, metavar="KEY=VALUE")
        elif annotation in _METAVARS:
            kwargs.update(
                type=_scalar(annotation, optional), metavar=_METAVARS[annotation] + (f"|{NONE}" if optional else "")
            )
        else:
            raise TypeError(f"{stage}.{'.'.join(leaf.path)}: no command-line form for {leaf.field.annotation}")
        group.add_argument(*names, **kwargs)


def given(args: argparse.Namespace) -> dict:
    """The settings flags that were given, as nested dicts per stage."""
    values: dict = {}
    for dest, value in vars(args).items():
        if dest.startswith("settings:"):
            *parents, name = dest.removeprefix("settings:").split(".")
            node = values
            for parent in parents:
                node = node.setdefault(parent, {})
            node[name] = value
    return values


def build(stages: tuple[str, ...], flags: dict, config: str | None = None) -> dict[str, BaseModel]:
    """The settings of `stages` from the flags (nested dicts per stage), the environment and the config
    file, in that order of precedence; ingest's extract comes from the extract stage."""
    from pydantic_settings import BaseSettings, InitSettingsSource, SettingsConfigDict  # slow to import: not for --help

    sections = load_config(config) if config else {}
    unknown = set(sections) - set(STAGES)
    if unknown:
        raise SettingsError(f"{config}: unknown section(s) {', '.join(sorted(unknown))} (known: {', '.join(STAGES)})")
    file_values = {stage: sections[stage] for stage in stages if sections.get(stage) is not None}
    # A nested model's default (a gate's threshold) stays under a source that sets one of its fields only
    # (the gate's action): pydantic would build the nested model anew from that field alone.
    nested_defaults = {
        stage: {
            name: getattr(STAGES[stage](), name).model_dump()
            for name, field in STAGES[stage].model_fields.items()
            if _model_of(field.annotation) and _model_of(field.annotation) not in STAGES.values()
        }
        for stage in stages
    }

    class FromSources(BaseSettings):
        model_config = SettingsConfigDict(
            env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED, env_parse_none_str=NONE, extra="forbid"
        )

        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, **_):
            return (
                init_settings,
                env_settings,
                InitSettingsSource(settings_cls, init_kwargs=file_values),
                InitSettingsSource(settings_cls, init_kwargs=nested_defaults),
            )

    fields = {stage: (STAGES[stage], Field(default_factory=STAGES[stage])) for stage in stages}
    model = create_model("ClipcrawlSettings", __base__=FromSources, **fields)
    try:
        values = model(**{stage: flags[stage] for stage in stages if stage in flags})
    except ValidationError as exc:
        raise SettingsError(
            "; ".join(
                f"{'.'.join(map(str, error['loc']))}: {error['msg']} (got {error['input']!r})"
                for error in exc.errors(include_url=False)
            )
        ) from None
    built = {stage: getattr(values, stage) for stage in stages}
    for stage in ("extract", "download"):
        if stage in built and "consent" in built[stage].model_fields_set:
            raise SettingsError(
                f"{stage}.consent: give consent settings in the consent section (--config), "
                f"as {ENV_PREFIX}CONSENT{ENV_NESTED}<FIELD> or as flags"
            )
    if "consent" in built:
        consent = built.pop("consent")
        for stage in ("extract", "download"):
            if stage in built:
                built[stage] = built[stage].model_copy(update={"consent": consent})
    if "ingest" in built:
        if "extract" in built["ingest"].model_fields_set:
            raise SettingsError(
                "ingest.extract: give extract settings in the extract section (--config), "
                f"as {ENV_PREFIX}EXTRACT{ENV_NESTED}<FIELD> or as flags"
            )
        if "extract" in built:
            built["ingest"] = built["ingest"].model_copy(update={"extract": built.pop("extract")})
    return built
