"""The config center: namespaced, versioned entries on the store, with history,
diff, rollback, gray release to labelled instances and long-poll push."""

from crossway.config.bulk import ImportEntry, ImportReport, ImportRequest, KeySummary
from crossway.config.center import Author, ConfigCenter, ContentTooLarge, Limits, Published
from crossway.config.feed import ConfigFeed
from crossway.config.formats import ContentInvalid, check_content
from crossway.config.model import (
    DEFAULT_GROUP,
    DEFAULT_NAMESPACE,
    Beta,
    ConfigRef,
    Entry,
    Format,
    Release,
    ref,
)
from crossway.config.properties import PropertiesError, parse_properties
from crossway.config.selector import (
    Requirement,
    Selector,
    SelectorError,
    parse_labels,
    parse_selector,
)
from crossway.config.view import Snapshot, View, resolve

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_NAMESPACE",
    "Author",
    "Beta",
    "ConfigCenter",
    "ConfigFeed",
    "ConfigRef",
    "ContentInvalid",
    "ContentTooLarge",
    "Entry",
    "Format",
    "ImportEntry",
    "ImportReport",
    "ImportRequest",
    "KeySummary",
    "Limits",
    "PropertiesError",
    "Published",
    "Release",
    "Requirement",
    "Selector",
    "SelectorError",
    "Snapshot",
    "View",
    "check_content",
    "parse_labels",
    "parse_properties",
    "parse_selector",
    "ref",
    "resolve",
]
