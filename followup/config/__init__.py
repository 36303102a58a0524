"""The operator's and the marketers' files: config.toml -> Settings, calendars/ -> Calendar.
Every error names the file, the line where there is one, and the key."""

from followup.config.settings import Settings, default_config_path, load_settings

__all__ = ["Settings", "default_config_path", "load_settings"]
