"""Settings: what config.yaml and the per-folder ``.promptd.yaml`` rule files say.

Owns the frozen settings models (``settings``), reading YAML with line numbers and phrasing
problems against them (``yamlfile``), loading and completing config.yaml (``load``), and the
rule cascade with its fingerprints (``rules``). Built once, frozen, passed in: no other part
of promptd reads a config file.

May import: ``daemon.errors``, ``daemon.records`` (rules only) and ``daemon.fs``.
"""

from daemon.config.apisettings import ApiSettings
from daemon.config.load import cache_dir, default_config_path, load_config
from daemon.config.settings import (
    MODES,
    ClipSettings,
    Config,
    GpuSettings,
    ImageLimits,
    LabelSettings,
    LogSettings,
    Mode,
    OllamaModels,
    OllamaSettings,
    OllamaTimeouts,
    RuleSettings,
    WatchSettings,
)

__all__ = [
    "MODES",
    "ApiSettings",
    "ClipSettings",
    "Config",
    "GpuSettings",
    "ImageLimits",
    "LabelSettings",
    "LogSettings",
    "Mode",
    "OllamaModels",
    "OllamaSettings",
    "OllamaTimeouts",
    "RuleSettings",
    "WatchSettings",
    "cache_dir",
    "default_config_path",
    "load_config",
]
